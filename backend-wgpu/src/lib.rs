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
//! - **device-resident**: [`WgpuBackend::plan`] builds a [`Plan`] for a shape, the parameters and
//!   an [`Io`] (logits or probabilities, mask, gradient); the plan is a value the caller owns.
//!   [`Plan::encode`] records the whole computation into the caller's `wgpu::CommandEncoder`,
//!   reading the caller's ranges ([`BufferRange`]: buffer, offset, size, so tensors may live
//!   inside a framework's packed pages, inputs and outputs in one buffer) and writing the
//!   caller's gradient and energy ranges. Its bind groups are built per call, so the ranges may
//!   move from step to step. Nothing crosses to the host: a trainer keeps its activations on
//!   the GPU.
//!
//! ## The kernels
//! Two passes over the data and small reductions ([`msloss_shaders`] lists them): `class_sums`
//! checks the inputs and sums each class's mass and moments per tile of pixels, `centroids`
//! turns the reduced sums into centroids, and `loss_grad` owns one pixel and all its classes:
//! its energy terms and its gradient, `∂E/∂z` for logits with the softmax backward fused in,
//! written once. No probability is stored: for logits, each kernel recomputes a pixel's softmax
//! (and its neighbours', for the length term) from the logits. Beyond the caller's tensors and
//! gradient a [`Plan`] holds O(B·N·C) sums and the reductions' partials, a few floats per
//! thousand pixels ([`Plan::scratch_bytes`]); its traffic, `(3N + 2C)·4` bytes a pixel and the
//! reductions', is counted by [`Plan::traffic`]. That is on GPUs; on a device that emulates one
//! on CPU cores (Mesa's lavapipe) the class sums take the barrier-free strided path
//! ([`ClassSumsPath`]), whose partials are `B·(N·(C+1)+1)·G·256` floats (`G` = 8 workgroups a
//! sample for most sizes: 2.7 bytes a pixel at `2,21,3,512,512`).
//!
//! ## Guarantees
//! - Every feature of the core definition: `N` classes, `C` channels, 2D and 3D, masks, the
//!   three length kinds, both reductions, logits and probabilities, centroids, the global and
//!   the local fidelity. The local one runs as separable convolutions (one dispatch per axis,
//!   the taps computed on the host from [`msloss_core::Gaussian`]), one sample after another
//!   over one sample's scratch, `2·N·(C+1)` planes whatever `B` (plus a uniform block and a
//!   float per sample); a window `min(2⌈3σ⌉ + 1, extent)` longer than [`MAX_WINDOW`] along an
//!   axis is refused ([`WgpuError::ExtentTooLarge`]), since one invocation loops over it.
//! - Deterministic: every sum is a fixed-order tree (eight pixels or elements per invocation, or
//!   a pixel's classes in order, a workgroup tree, eight rows at once, then as many levels of tree
//!   over workgroup partials as the size needs); no float atomics. Two runs give the same bits.
//! - Accuracy: `f32` throughout, pairwise sums; energies agree with the `f64` reference to
//!   about `2e-7` relative and gradients to `1e-6` of their largest magnitude at 1024² (the tests
//!   hold both to `1e-5`). The valid-pixel count of the mean reduction is summed in `f32` too:
//!   exact while every partial sum stays below 2²⁴ pixels, within `1e-7` relative beyond.
//! - Any size the device allows: dispatch grids folded into 2D within
//!   `max_compute_workgroups_per_dimension`; on the host path a batch whose buffers exceed
//!   `max_storage_buffer_binding_size` is split by sample (totals added in `f64`, the mean's
//!   `1/V` applied on the host); what cannot be split (one sample beyond the limit, the
//!   device-resident path, indices beyond `u32`) is refused with an error naming the limit. `N` and `C` are at most [`MAX_CLASSES`] and [`MAX_CHANNELS`], and
//!   `N·(C+1)` at most [`MAX_CLASS_ROWS`] (an invocation owns a pixel and loops over its classes
//!   and channels; no loop grows with the image, which keeps lavapipe's 65,535-iteration budget).
//! - Errors, not panics: no adapter, missing limits, wgpu validation and out-of-memory errors
//!   (caught with error scopes), a lost device, a caller's range of the wrong size, usage or
//!   alignment, past its buffer's end, or written over another range, buffers that do not match
//!   the plan, a buffer of another device — all [`WgpuError`], found before wgpu sees the
//!   buffers where wgpu's API allows (another device's buffer is found by wgpu's validation, in
//!   an error scope). Inputs given on the device are checked on the device; the findings come
//!   back in the energy record's status word and [`decode_energy`] turns them into errors.
//!
//! ## Device-resident example
//! ```no_run
//! use msloss_core::{Params, Shape};
//! use msloss_wgpu::{BufferRange, DeviceBuffers, ENERGY_BYTES, Io, WgpuBackend, decode_energy};
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
//! // Whole buffers here; BufferRange::new(buffer, offset, size) addresses a tensor in a page.
//! let buffers = DeviceBuffers {
//!     scores: logits.into(), image: image.into(), mask: None,
//!     grad: Some(grad.into()), centroids: None, energy: BufferRange::from(&energy),
//! };
//! let plan = backend.plan(shape, &Params::default(), Io::TRAIN)?; // once; the plan is yours
//!
//! // Every step: record into your own encoder, next to your other passes.
//! let mut encoder = device.create_command_encoder(&Default::default());
//! plan.encode(&mut encoder, &buffers)?; // binds this step's buffers (cheap)
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

mod buffers;
mod context;
mod error;
mod host;
mod plan;

pub use buffers::{BufferRange, DeviceBuffers, ENERGY_BYTES, Io, ScoresKind};
pub use context::{ClassSumsPath, MAX_CHANNELS, MAX_CLASS_ROWS, MAX_CLASSES, WgpuBackend, check_limits};
pub use error::WgpuError;
pub use host::WgpuWorkspace;
pub use msloss_shaders::{Kernel, MAX_WINDOW};
pub use plan::{Plan, Traffic, decode_energy};
pub use wgpu;
