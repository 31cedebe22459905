//! # msloss
//!
//! The multiphase Mumford–Shah (level-set) segmentation loss of Kim & Ye (IEEE TIP 2020), with
//! exact analytic gradients and fast backends. This facade re-exports [`msloss_core`] (the
//! definition, the [`Backend`] trait, the [`Reference`] oracle, the gradient checker) and the
//! backends enabled by features.
//!
//! ## Features
//! - `cpu` (default): the fused multithreaded CPU backend, [`cpu::CpuBackend`].
//! - `wgpu`: the GPU backend (WGSL through wgpu: Vulkan, Metal, DX12, WebGPU),
//!   `wgpu::WgpuBackend`, with a device-resident API for trainers.
//!
//! ## Example
//! ```
//! use msloss::{Backend, Input, Params, Scores, Shape};
//!
//! let shape = Shape::new_2d(1, 2, 1, 2, 2)?;
//! let logits = [2.0f32, 2.0, -2.0, -2.0, /* class 1 */ -2.0, -2.0, 2.0, 2.0];
//! let image = [0.1f32, 0.1, 0.9, 0.9];
//! let input = Input::new(shape, Scores::Logits(&logits), &image, None)?;
//! let backend = msloss::Reference;
//! let mut ws = backend.workspace();
//! let mut grad = [0.0f32; 8];
//! let e = backend.energy_and_grad(&input, &Params::default(), &mut grad, &mut ws)?;
//! assert!(e.total > 0.0);
//! # Ok::<(), msloss::Error>(())
//! ```

pub use msloss_core::*;

/// The CPU backend (feature `cpu`).
#[cfg(feature = "cpu")]
pub use msloss_cpu as cpu;

/// The GPU backend (feature `wgpu`).
#[cfg(feature = "wgpu")]
pub use msloss_wgpu as wgpu;
