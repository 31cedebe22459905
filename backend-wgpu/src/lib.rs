//! # msloss-wgpu
//!
//! The GPU backend of msloss: the multiphase Mumford–Shah loss and its exact gradient as WGSL
//! compute shaders ([`msloss_shaders`]) run through wgpu 30 — Vulkan, Metal, DX12, and WebGPU
//! in browsers; on a machine without a GPU, Mesa's lavapipe (software Vulkan).
//!
//! Two ways in:
//! - **host slices**: [`WgpuBackend`] implements [`msloss_core::Backend<f32>`] (upload,
//!   dispatch, read back), so everything written against the trait — the gradient checker, the
//!   CLI — runs on the GPU. `Backend<f64>` returns [`msloss_core::Error::Unsupported`].
//! - **device-resident**: [`WgpuBackend::plan`] / [`WgpuBackend::encode`] record the whole
//!   computation into the caller's `wgpu::CommandEncoder`, reading the caller's buffers
//!   (logits or probabilities, image, optional mask) and writing the caller's gradient and
//!   energy buffers. Nothing crosses to the host: a trainer keeps its activations on the GPU.
//!
//! ## Guarantees
//! - Every feature of the core definition: `N` classes, `C` channels, 2D and 3D, masks, the
//!   three length kinds, both reductions, logits and probabilities, centroids.
//! - Deterministic: every sum is a fixed-order tree (eight elements per invocation, a workgroup
//!   tree, then as many levels of tree over workgroup partials as the size needs); no float
//!   atomics. Two runs give the same bits.
//! - Accuracy: `f32` throughout, pairwise sums; energies agree with the `f64` reference to
//!   about `2e-7` relative and gradients to `1e-6` of their largest magnitude at 1024² (the tests
//!   hold both to `1e-5`). The valid-pixel count of the mean reduction is summed in `f32` too:
//!   exact while every partial sum stays below 2²⁴ pixels, within `1e-7` relative beyond.
//! - Any size the device allows: dispatch grids folded into 2D within
//!   `max_compute_workgroups_per_dimension`; on the host path a batch whose buffers exceed
//!   `max_storage_buffer_binding_size` is split by sample (totals added in `f64`, the mean's
//!   `1/V` applied on the host); what cannot be split (one sample beyond the limit, the
//!   device-resident path, indices beyond `u32`) is refused with an error naming the limit. `N` and `C` are at most [`MAX_CLASSES`] and [`MAX_CHANNELS`] (each invocation loops
//!   over them; no loop grows with the image, which keeps lavapipe's 65,535-iteration budget).
//! - Errors, not panics: no adapter, missing limits, wgpu validation and out-of-memory errors
//!   (caught with error scopes), a lost device, a caller's buffer of the wrong size or usage —
//!   all [`WgpuError`]. Inputs given on the device are checked on the device; the findings come
//!   back in the energy record's status word and [`decode_energy`] turns them into errors.
//!
//! ## Device-resident example
//! ```no_run
//! use msloss_core::{Params, Shape};
//! use msloss_wgpu::{DeviceBuffers, ENERGY_BYTES, ScoresKind, WgpuBackend, decode_energy};
//! use wgpu::BufferUsages as U;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = WgpuBackend::new()?; // or WgpuBackend::from_device(device, queue)
//! let (device, queue) = (backend.device(), backend.queue());
//! let shape = Shape::new_2d(2, 3, 1, 64, 64)?; // B, N, C, H, W
//! let buffer = |elems: usize, usage| {
//!     device.create_buffer(&wgpu::BufferDescriptor { label: None, size: 4 * elems as u64, usage, mapped_at_creation: false })
//! };
//! // A trainer's tensors, already on the device.
//! let logits = buffer(shape.scores_len(), U::STORAGE | U::COPY_DST);
//! let image = buffer(shape.image_len(), U::STORAGE | U::COPY_DST);
//! let grad = buffer(shape.scores_len(), U::STORAGE);
//! let energy = buffer(4, U::STORAGE | U::COPY_SRC);
//! let buffers = DeviceBuffers {
//!     scores: logits, kind: ScoresKind::Logits, image, mask: None,
//!     grad: Some(grad), centroids: None, energy: energy.clone(),
//! };
//! let plan = backend.plan(shape, &Params::default(), &buffers)?; // once
//!
//! // Every step: record into your own encoder, next to your other passes.
//! let mut encoder = device.create_command_encoder(&Default::default());
//! plan.encode(&mut encoder);
//! // ... the backward pass reads `buffers.grad` here; read the energy back only if you log it:
//! let staging = buffer(4, U::MAP_READ | U::COPY_DST);
//! encoder.copy_buffer_to_buffer(&energy, 0, &staging, 0, ENERGY_BYTES);
//! queue.submit([encoder.finish()]);
//! staging.map_async(wgpu::MapMode::Read, .., |_| ()); // get_mapped_range errs if mapping failed
//! device.poll(wgpu::PollType::wait_indefinitely())?;
//! let e = decode_energy(&staging.get_mapped_range(..)?)?;
//! println!("energy {} (fidelity {}, length {})", e.total, e.fidelity, e.length);
//! # Ok(())
//! # }
//! ```

mod context;
mod error;
mod host;
mod plan;

pub use context::{MAX_CHANNELS, MAX_CLASSES, WgpuBackend, check_limits};
pub use error::WgpuError;
pub use host::WgpuWorkspace;
pub use msloss_shaders::Kernel;
pub use plan::{DeviceBuffers, ENERGY_BYTES, Plan, ScoresKind, decode_energy};
pub use wgpu;
