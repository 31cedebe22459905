//! # msloss-segment
//!
//! Unsupervised multiphase segmentation of images and volumes with the multiphase
//! Mumford–Shah (Chan–Vese) energy of msloss: minimised over per-pixel logits, with no network
//! at all, the energy splits an image into `K` phases of near-constant intensity separated by
//! short boundaries.
//!
//! - [`segment`]: the segmenter, generic over any [`msloss_core::Backend<f32>`] (the CPU backend
//!   [`msloss_cpu::CpuBackend`], or a GPU backend); [`segment_auto`] chooses the number of phases;
//! - [`Volume`]: images (PNG, JPEG, TIFF; grey or colour; 8 or 16 bit) and `.npy` volumes;
//! - [`synth`]: seeded synthetic images and volumes with known ground truth;
//! - [`metrics`]: Hungarian label matching, IoU per class, mean IoU, adapted Rand error;
//! - [`output`]: label maps, overlays, energy plots, written all-or-nothing.
//!
//! ## Example
//! ```
//! use msloss_cpu::CpuBackend;
//! use msloss_segment::{SegmentConfig, metrics, segment, synth};
//!
//! let spec = synth::SynthSpec { phases: 2, colour: false, dims: [1, 32, 32], ..Default::default() };
//! let image = synth::generate(&spec)?;
//! let cfg = SegmentConfig::default().with_phases(2);
//! let seg = segment(&CpuBackend::new(), &image.volume, &cfg, |_| {})?;
//! let q = metrics::evaluate(&seg.labels, &image.truth)?;
//! assert!(q.mean_iou > 0.9);
//! # Ok::<(), msloss_segment::SegmentError>(())
//! ```

pub mod auto;
mod error;
pub mod kmeans;
pub mod metrics;
pub mod output;
pub mod rescue;
mod segmenter;
pub mod start;
pub mod synth;
pub mod volume;

/// `len` zeros, or [`SegmentError::BadImage`] naming `what` when they do not fit in memory.
pub(crate) fn zeros<T: Clone + Default + Send + Sync>(len: usize, what: &str) -> Result<Vec<T>, SegmentError> {
    let mut v = room(len, what)?;
    set_zeros(&mut v, len);
    Ok(v)
}

/// An empty vector with room for `len` values, none written yet, or [`SegmentError::BadImage`]
/// naming `what` when they do not fit in memory.
pub(crate) fn room<T>(len: usize, what: &str) -> Result<Vec<T>, SegmentError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| SegmentError::BadImage(format!("{what} ({len} values) do not fit in memory")))?;
    Ok(v)
}

/// Makes `v` `len` zeros (within its room, if it has enough), written by all threads, which
/// share the cost of the first touch of the pages.
pub(crate) fn set_zeros<T: Clone + Default + Send + Sync>(v: &mut Vec<T>, len: usize) {
    use rayon::prelude::*;
    v.clear();
    v.par_extend(rayon::iter::repeat_n(T::default(), len).with_min_len(1 << 16));
}

pub use auto::{AutoSegmentation, Candidate, segment_auto};
pub use error::SegmentError;
pub use rescue::{Rescue, RescueKind};
pub use segmenter::{Progress, SegmentConfig, Segmentation, segment};
pub use volume::Volume;

/// The JSON summary of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// `K`.
    pub phases: usize,
    /// `[C, D, H, W]` of the input.
    pub shape: [usize; 4],
    /// The backend's name.
    pub backend: String,
    /// The length kind's name.
    pub length: &'static str,
    /// The fidelity's name (`global`, `local`), and the local fidelity's σ.
    pub fidelity: &'static str,
    /// The local fidelity's σ in pixels.
    pub sigma: Option<f64>,
    /// The relative λ asked for.
    pub lambda: f64,
    /// The λ the loss ran with.
    pub lambda_effective: f64,
    /// The contrast-to-noise ratio of the two closest start centroids that raised λ (absent for
    /// a noise-free image).
    pub contrast_to_noise: Option<f64>,
    /// The optimiser steps taken.
    pub iterations: usize,
    /// Whether the tolerance was met.
    pub converged: bool,
    /// The final energy and its parts.
    pub energy: EnergySummary,
    /// The centroids, one row per label.
    pub centroids: Vec<Vec<f64>>,
    /// Pixels per label.
    pub pixels_per_phase: Vec<usize>,
    /// Seconds: initialisation, optimisation, and the whole run including input and output.
    pub seconds: Seconds,
    /// How the start was found: `"otsu"` (grey) or `"kmeans"`.
    pub start: &'static str,
    /// The rescue tries after the first descent, in order.
    pub rescues: Vec<Rescue>,
}

/// The energy's parts, for the summary.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct EnergySummary {
    /// `fidelity + length`.
    pub total: f64,
    /// The fidelity part.
    pub fidelity: f64,
    /// The length part.
    pub length: f64,
}

/// Timings, for the summary.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Seconds {
    /// k-means and logit initialisation.
    pub init: f64,
    /// The optimiser.
    pub optimise: f64,
    /// Everything, from reading the input to the summary.
    pub total: f64,
}

impl Summary {
    /// The summary of `seg`, run on `vol` with `cfg` by `backend`; `total_seconds` is the whole
    /// run's wall time.
    pub fn new(seg: &Segmentation, vol: &Volume, cfg: &SegmentConfig, backend: &str, total_seconds: f64) -> Self {
        let [d, h, w] = vol.dims();
        let c = vol.channels();
        Self {
            phases: seg.phases,
            shape: [c, d, h, w],
            backend: backend.to_owned(),
            length: cfg.length.name(),
            fidelity: cfg.fidelity.name(),
            sigma: match cfg.fidelity {
                msloss_core::Fidelity::Local { sigma } => Some(sigma),
                msloss_core::Fidelity::Global => None,
            },
            lambda: cfg.lambda,
            lambda_effective: seg.lambda,
            contrast_to_noise: seg.contrast_to_noise.is_finite().then_some(seg.contrast_to_noise),
            iterations: seg.iterations,
            converged: seg.converged,
            energy: EnergySummary { total: seg.energy.total, fidelity: seg.energy.fidelity, length: seg.energy.length },
            centroids: seg.centroids.chunks(c).map(<[f64]>::to_vec).collect(),
            pixels_per_phase: seg.pixels_per_phase.clone(),
            seconds: Seconds { init: seg.init_seconds, optimise: seg.optimise_seconds, total: total_seconds },
            start: seg.start,
            rescues: seg.rescues.clone(),
        }
    }
}
