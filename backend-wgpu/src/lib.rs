//! # msloss-wgpu
//!
//! The GPU backend of msloss (work in progress: the WGSL kernels live in `msloss-shaders`).
