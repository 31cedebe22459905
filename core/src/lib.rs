//! # msloss-core
//!
//! The `#![no_std]` heart of msloss: the multiphase Mumford–Shah (level-set) loss of Kim & Ye
//! ("Mumford–Shah Loss Functional for Image Segmentation With Deep Learning", IEEE TIP 2020),
//! its exact analytic gradient, the [`Backend`] trait every implementation follows, a plain
//! [`Reference`] backend that is the oracle for all fast paths, and a finite-difference
//! [gradient checker](gradcheck).
//!
//! ## The definition
//! Shapes are row-major and contiguous; a 2D image is a volume with `D = 1`.
//! - scores: logits `z` or probabilities `y`, `[B, N, D, H, W]` (`B` samples, `N` classes);
//!   probabilities must be finite and `>= 0` (they need not sum to one);
//! - image `x`: `[B, C, D, H, W]` (`C` channels);
//! - optional mask `m`: `[B, D, H, W]`, values `0` or `1`; default all ones.
//!
//! `y = softmax_n(z)` when logits are given (stable: the maximum is subtracted first).
//! For each sample `b` and class `n`:
//!
//! ```text
//! A_bn  = Σ_s m_s·y_bns
//! c_bnk = Σ_s m_s·y_bns·x_bks / (A_bn + ε_c)                       (soft class mean per channel)
//! F     = Σ_b Σ_n Σ_s m_s·y_bns·Σ_k (x_bks − c_bnk)²                (fidelity)
//! Len   = Σ_b Σ_n over forward differences d = y(s + e_a) − y(s) along each spatial axis a
//!         of extent > 1, a pair counting only when both pixels are valid:
//!           L1          Σ |d|                       (anisotropic, as published)
//!           L2          Σ d²
//!           Charbonnier Σ_s ( sqrt(Σ_a d_a(s)² + δ²) − δ ), a missing/invalid pair giving d_a(s) = 0
//! E     = w·F + λ·Len,  divided by V = Σ_b Σ_s m_s under `Reduction::Mean`.
//! ```
//!
//! Each evaluation reports `fidelity = w·F`, `length = λ·Len` (after reduction), their sum
//! `total`, and the centroids `c` (`B×N×C`).
//!
//! The gradient is exact for this definition (with `ε_c > 0` the envelope argument is not):
//!
//! ```text
//! ∂(w·F)/∂y_bns = w·m_s·( ‖x_bs − c_bn‖² − 2·ε_c/(A_bn + ε_c)·⟨c_bn, x_bs − c_bn⟩ )
//! ```
//!
//! plus the length term's (sub)gradient (`|d|` has subgradient 0 at `d = 0`), divided by `V`
//! under the mean reduction; for logits, the softmax Jacobian
//! `∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m)` with `g = ∂E/∂y`.
//!
//! ## Features
//! - `std` (default): use the platform's maths through `num-traits/std`.
//! - `libm`: pure-Rust maths for `no_std` targets. With both on, `std` wins (num-traits' rule).
//!
//! One of the two must be enabled.
//!
//! ## Example
//! ```
//! use msloss_core::{Backend, Input, Params, Reference, Scores, Shape};
//!
//! // One sample, two classes, one grey channel, a 1×2 image: left pixel dark, right bright.
//! let shape = Shape::new_2d(1, 2, 1, 1, 2).unwrap();
//! let probs = [1.0, 0.0, /* class 1: */ 0.0, 1.0];
//! let image = [0.0, 1.0];
//! let input = Input::new(shape, Scores::Probs(&probs), &image, None).unwrap();
//! let params = Params::default();
//! let backend = Reference;
//! let mut ws = backend.workspace();
//! let mut grad = [0.0f64; 4];
//! let e = backend.energy_and_grad(&input, &params, &mut grad, &mut ws).unwrap();
//! assert!(e.fidelity.abs() < 1e-12); // hard labels on a two-region image fit exactly
//! ```
#![no_std]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(not(any(feature = "std", feature = "libm")))]
compile_error!("msloss-core needs one of the features `std` or `libm` for its floating-point maths");

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod backend;
mod error;
pub mod gradcheck;
mod input;
mod params;
mod real;
mod reference;
pub mod rng;
mod shape;

pub use backend::{Backend, Energy, Outputs, check_request};
pub use error::Error;
pub use input::{Input, Scores, image_limit, probability_limit};
pub use params::{Fidelity, Gaussian, LengthKind, Params, Reduction};
pub use real::Real;
pub use reference::{Reference, ReferenceWorkspace, Softmax};
pub use shape::Shape;
