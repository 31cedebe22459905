//! Choosing the number of phases: [`segment_auto`].
//!
//! # Criterion
//! Each `K` in the range is segmented with [`crate::segment`], and the result scored by its
//! description length in nats (a two-part code in the manner of Leclerc's minimum description
//! length segmentation, IJCV 1989):
//!
//! ```text
//! L(K) = (N·C/2)·ln(RSS/(N·C))     the residuals, Gaussian with one variance
//!      + (K·C/2)·ln(N)             the K phase means (C values each)
//!      + ln(3)·B                   the boundaries: B neighbouring pixel pairs with different
//!                                  labels, ln 3 nats each (a chain code's step)
//! ```
//!
//! where `RSS` is the sum of squared differences between the image and its piecewise-constant
//! fit (each phase's mean over its pixels), `N` the pixels and `C` the channels. A split that
//! only divides noise lowers `RSS` little and adds boundaries; a real phase lowers it by far
//! more than its boundary costs. A `K` is not eligible when its segmentation leaves a phase with
//! fewer than [`crate::rescue::TINY_FRACTION`] of the pixels (after the rescue tried to refill
//! it), or two phases whose means are less than [`MIN_SEPARATION`] noise standard deviations
//! apart (`σ̂ = √(RSS/(N·C))`, distance in all channels): such phases are one phase split by
//! noise, a ramp or a bias field, not two. The eligible `K` with the smallest `L` is chosen. The
//! scan stops early once two `K` in a row are ineligible or score worse than the best so far, or
//! once the image has fewer distinct values than `K`.
//!
//! The model is piecewise constant: an intensity ramp or bias field larger than about the noise
//! can still be split into phases of its own.

use std::ops::RangeInclusive;

use msloss_core::Backend;

use crate::rescue::TINY_FRACTION;
use crate::{Progress, SegmentConfig, SegmentError, Segmentation, Volume, segment};

/// Two phases' means must be at least this many noise standard deviations apart.
pub const MIN_SEPARATION: f64 = 1.0;

/// The default range of `K` tried by `--phases auto`.
pub const AUTO_RANGE: RangeInclusive<usize> = 2..=8;

/// One `K` tried by [`segment_auto`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Candidate {
    /// `K`.
    pub phases: usize,
    /// The description length `L(K)` in nats (lower is better).
    pub description_length: f64,
    /// The residual sum of squares of the piecewise-constant fit.
    pub rss: f64,
    /// Neighbouring pixel pairs with different labels.
    pub boundary_pairs: usize,
    /// The fewest pixels of any phase.
    pub smallest_phase: usize,
    /// The distance between the two closest phase means, in noise standard deviations.
    pub closest_means: f64,
    /// Whether `K` could be chosen (no phase below the tiny limit, none closer than
    /// [`MIN_SEPARATION`]).
    pub eligible: bool,
}

/// The result of [`segment_auto`]: the chosen segmentation and every `K` tried.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoSegmentation {
    /// The segmentation with the chosen `K` (its `phases`).
    pub segmentation: Segmentation,
    /// Every `K` tried, in order.
    pub candidates: Vec<Candidate>,
    /// Why this `K`, in a sentence.
    pub reason: String,
}

/// The description length's parts for labels `labels` (`[D, H, W]`) of `vol` in `k` phases.
pub fn describe(vol: &Volume, labels: &[u8], k: usize) -> Candidate {
    let (n, c) = (vol.pixels(), vol.channels());
    let [d, h, w] = vol.dims();
    let mut counts = vec![0usize; k];
    let mut sums = vec![0.0f64; k * c];
    let mut sq = 0.0f64;
    for (s, &l) in labels.iter().enumerate().take(n) {
        let l = usize::from(l).min(k - 1);
        counts[l] += 1;
        for ch in 0..c {
            let x = f64::from(vol.channel(ch)[s]);
            sums[l * c + ch] += x;
            sq += x * x;
        }
    }
    // RSS = Σ x² − Σ_phases (Σ x)² / count.
    let fit: f64 = (0..k)
        .filter(|&l| counts[l] > 0)
        .map(|l| (0..c).map(|ch| sums[l * c + ch].powi(2)).sum::<f64>() / counts[l] as f64)
        .sum();
    let rss = (sq - fit).max(0.0);
    let mut boundary = 0usize;
    for (extent, stride) in [(d, h * w), (h, w), (w, 1)] {
        if extent < 2 {
            continue;
        }
        boundary += (0..n).filter(|&s| (s / stride) % extent + 1 < extent && labels[s] != labels[s + stride]).count();
    }
    let values = (n * c) as f64;
    let variance = (rss / values).max(1e-12);
    let description_length =
        values / 2.0 * variance.ln() + (k * c) as f64 / 2.0 * (n as f64).ln() + 3f64.ln() * boundary as f64;
    let smallest = counts.iter().copied().min().unwrap_or(0);
    let mean = |l: usize, ch: usize| sums[l * c + ch] / counts[l].max(1) as f64;
    let mut closest = f64::INFINITY;
    for i in 0..k {
        for j in i + 1..k {
            let d2: f64 = (0..c).map(|ch| (mean(i, ch) - mean(j, ch)).powi(2)).sum();
            closest = closest.min(d2.sqrt() / variance.sqrt());
        }
    }
    Candidate {
        phases: k,
        description_length,
        rss,
        boundary_pairs: boundary,
        smallest_phase: smallest,
        closest_means: closest,
        eligible: smallest as f64 >= (TINY_FRACTION * n as f64).max(1.0) && closest >= MIN_SEPARATION,
    }
}

/// Segments `vol` with the number of phases in `range` that [the criterion](self) prefers;
/// `cfg.phases` is ignored. `on_progress` receives each `K` and its segmentation's steps.
///
/// # Errors
/// As [`segment`], for the first `K`; [`SegmentError::BadPhases`] for a range outside `2..=255`
/// or beyond the pixel count.
pub fn segment_auto<B: Backend<f32>>(
    backend: &B,
    vol: &Volume,
    cfg: &SegmentConfig,
    range: RangeInclusive<usize>,
    mut on_progress: impl FnMut(usize, &Progress),
) -> Result<AutoSegmentation, SegmentError> {
    let (lo, hi) = (*range.start(), *range.end());
    if lo < 2 || hi < lo {
        return Err(SegmentError::BadPhases { phases: lo, pixels: vol.pixels() });
    }
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut best: Option<(Candidate, Segmentation)> = None;
    let mut worse = 0;
    let mut stop = String::new();
    for k in lo..=hi {
        let seg = match segment(backend, vol, &cfg.with_phases(k), |p| on_progress(k, p)) {
            Ok(seg) => seg,
            Err(SegmentError::TooFewValues { .. } | SegmentError::BadPhases { .. }) if best.is_some() => {
                stop = format!("; K {k} and above not tried: the image has too few values or pixels");
                break;
            }
            Err(e) => return Err(e),
        };
        let cand = describe(vol, &seg.labels, k);
        candidates.push(cand);
        if cand.eligible && best.as_ref().is_none_or(|(b, _)| cand.description_length < b.description_length) {
            best = Some((cand, seg));
            worse = 0;
        } else if best.is_some() {
            worse += 1;
            if worse >= 2 && k < hi {
                stop = format!("; stopped after K {k}: two K in a row were ineligible or scored worse");
                break;
            }
        }
    }
    let scores: Vec<String> = candidates
        .iter()
        .map(|c| {
            if c.eligible {
                format!("K {}: {:.0}", c.phases, c.description_length)
            } else if c.closest_means < MIN_SEPARATION {
                format!("K {}: two phases {:.2}σ apart", c.phases, c.closest_means)
            } else {
                format!("K {}: a phase of {} pixels", c.phases, c.smallest_phase)
            }
        })
        .collect();
    match best {
        Some((b, seg)) => {
            let reason = format!(
                "K {} has the shortest description length (nats: residuals + means + ln 3 per boundary pair; \
                 lower is better): {}{stop}",
                b.phases,
                scores.join(", ")
            );
            Ok(AutoSegmentation { segmentation: seg, candidates, reason })
        }
        None => {
            // No K was eligible: keep the smallest K tried, and say so.
            let seg = segment(backend, vol, &cfg.with_phases(lo), |p| on_progress(lo, p))?;
            let reason = format!(
                "no K tried was eligible (a phase below {:.1}% of the pixels, or two phases closer than {MIN_SEPARATION}σ: \
                 {}); K {lo} kept",
                100.0 * TINY_FRACTION,
                scores.join(", ")
            );
            Ok(AutoSegmentation { segmentation: seg, candidates, reason })
        }
    }
}
