//! The rescue step: other starts tried after the descent has converged.
//!
//! Gradient descent on the logits never revives a phase it has emptied, and never moves a
//! centroid from one side of the intensity range to the other. So, from the hard labels of a
//! converged descent, a new start is proposed on the denoised copy of the image:
//!
//! - *Refill*: if a phase is empty or tiny (fewer than `TINY_FRACTION` of the pixels), it is
//!   re-seeded with one half of the phase whose split into two gains the most (the largest drop
//!   of its sum of squared distances to its mean when two centroids replace one: multi-level
//!   Otsu with two classes on a grey phase's values, 2-means on a colour phase's), the other
//!   half replacing that phase's centroid.
//! - *Split and merge*: otherwise (and for `K ≥ 3`), that best split is paired with the merge of
//!   the two closest phases (the pair whose merge raises the sum of squares the least,
//!   `n_i·n_j/(n_i + n_j)·‖c_i − c_j‖²`), if the split gains more than the merge costs; if not,
//!   no start is proposed.
//!
//! Every other phase starts at its mean on the denoised copy. The segmenter runs a full descent
//! from the proposal and keeps it only if the energy ends lower (see [`crate::segment`]).

use crate::Volume;
use crate::kmeans::{dist2, kmeans_points};
use crate::start::{OTSU_BINS, multi_otsu};

/// A phase with fewer pixels than this fraction of the image (or none) is refilled.
pub const TINY_FRACTION: f64 = 0.002;
/// At most this many pixels of a phase are used to find its split.
const SPLIT_SAMPLES: usize = 1 << 14;

/// What a rescue try changed in the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RescueKind {
    /// An empty or tiny phase was re-seeded by splitting another.
    Refill,
    /// The best split was paired with a merge of the two closest phases.
    SplitMerge,
}

impl RescueKind {
    /// Its name in the JSON summary (`refill`, `split-merge`).
    pub const fn name(self) -> &'static str {
        match self {
            RescueKind::Refill => "refill",
            RescueKind::SplitMerge => "split-merge",
        }
    }
}

/// One rescue try: what was tried, the energy before and after it, and whether it was kept.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rescue {
    /// The move.
    pub kind: RescueKind,
    /// The energy of the best segmentation so far.
    pub energy_before: f64,
    /// The energy the try's descent ended at.
    pub energy_after: f64,
    /// Whether the try was kept (its energy is lower).
    pub kept: bool,
}

/// The two centroids of `pts` (`[S, C]` rows) split in two, and how much the sum of squared
/// distances drops from one centroid (the mean) to the nearer of the two.
fn split(pts: &[f64], c: usize, seed: u64) -> Option<(Vec<f64>, Vec<f64>, f64)> {
    let s = pts.len() / c;
    if s < 2 {
        return None;
    }
    let halves =
        if c == 1 { multi_otsu(pts, None, 2, OTSU_BINS)? } else { kmeans_points(pts, c, 2, 2, seed).centroids };
    let (a, b) = halves.split_at(c);
    let mut mean = vec![0.0; c];
    for p in pts.chunks_exact(c) {
        for (m, v) in mean.iter_mut().zip(p) {
            *m += v / s as f64;
        }
    }
    let (mut one, mut two) = (0.0, 0.0);
    for p in pts.chunks_exact(c) {
        one += dist2(p, &mean);
        two += dist2(p, a).min(dist2(p, b));
    }
    Some((a.to_vec(), b.to_vec(), one - two))
}

/// A new start `[K, C]` from the hard labels `labels` (`0..k`, one per pixel) of a descent on
/// the image whose denoised copy is `smoothed`, and the move it makes; `soft` (`[K, C]`, the
/// descent's centroids) places phases that have no pixels. Only the pixels `inside` count (all
/// when `None`: see [`crate::start::start_pixels`]), so that the blends of two phases on the
/// denoised copy's boundaries neither move a mean nor make a split look worthwhile. `None` when
/// no move promises a lower energy.
pub fn propose(
    smoothed: &Volume,
    inside: Option<&[bool]>,
    labels: &[u8],
    soft: &[f32],
    k: usize,
    seed: u64,
) -> Option<(Vec<f64>, RescueKind)> {
    let (n, c) = (smoothed.pixels(), smoothed.channels());
    if labels.len() != n || soft.len() != k * c || k < 2 || inside.is_some_and(|m| m.len() != n) {
        return None;
    }
    let used = |s: usize| inside.is_none_or(|m| m[s]);
    let n = (0..n).filter(|&s| used(s)).count();
    let mut counts = vec![0usize; k];
    let mut sums = vec![0.0f64; k * c];
    for (s, &l) in labels.iter().enumerate().filter(|&(s, _)| used(s)) {
        let l = usize::from(l).min(k - 1);
        counts[l] += 1;
        for ch in 0..c {
            sums[l * c + ch] += f64::from(smoothed.channel(ch)[s]);
        }
    }
    let tiny_limit = (TINY_FRACTION * n as f64).max(1.0);
    let is_tiny = |l: usize| (counts[l] as f64) < tiny_limit;
    // With two phases and none tiny, no move is left: a merge needs two phases besides the split one.
    if k < 3 && !(0..k).any(is_tiny) {
        return None;
    }
    let mut start: Vec<f64> = soft.iter().map(|&v| f64::from(v)).collect();
    for l in 0..k {
        if counts[l] > 0 {
            for ch in 0..c {
                start[l * c + ch] = sums[l * c + ch] / counts[l] as f64;
            }
        }
    }
    // Each phase's pixels (an evenly strided subsample) on the denoised copy.
    let strides: Vec<usize> = counts.iter().map(|&m| m.div_ceil(SPLIT_SAMPLES).max(1)).collect();
    let mut seen = vec![0usize; k];
    let mut members: Vec<Vec<f64>> = counts.iter().map(|&m| Vec::with_capacity(c * m.min(SPLIT_SAMPLES))).collect();
    for (s, &l) in labels.iter().enumerate().filter(|&(s, _)| used(s)) {
        let l = usize::from(l).min(k - 1);
        if seen[l].is_multiple_of(strides[l]) {
            for ch in 0..c {
                members[l].push(f64::from(smoothed.channel(ch)[s]));
            }
        }
        seen[l] += 1;
    }
    let mut best: Option<(usize, Vec<f64>, Vec<f64>, f64)> = None;
    for l in (0..k).filter(|&l| !is_tiny(l)) {
        if let Some((a, b, gain)) = split(&members[l], c, seed) {
            let gain = gain * strides[l] as f64;
            if best.as_ref().is_none_or(|x| gain > x.3) {
                best = Some((l, a, b, gain));
            }
        }
    }
    let (l, a, b, gain) = best?;
    if let Some(t) = (0..k).filter(|&t| is_tiny(t)).min_by_key(|&t| counts[t]) {
        start[t * c..(t + 1) * c].copy_from_slice(&a);
        start[l * c..(l + 1) * c].copy_from_slice(&b);
        return Some((start, RescueKind::Refill));
    }
    let mut merge: Option<(usize, usize, f64)> = None;
    for i in (0..k).filter(|&i| i != l) {
        for j in (i + 1..k).filter(|&j| j != l) {
            let (ni, nj) = (counts[i] as f64, counts[j] as f64);
            let d2: f64 = (0..c).map(|ch| (start[i * c + ch] - start[j * c + ch]).powi(2)).sum();
            let cost = ni * nj / (ni + nj) * d2;
            if merge.is_none_or(|m| cost < m.2) {
                merge = Some((i, j, cost));
            }
        }
    }
    let (i, j, cost) = merge?;
    if gain <= cost {
        return None;
    }
    let (ni, nj) = (counts[i] as f64, counts[j] as f64);
    for ch in 0..c {
        start[i * c + ch] = (ni * start[i * c + ch] + nj * start[j * c + ch]) / (ni + nj);
    }
    start[j * c..(j + 1) * c].copy_from_slice(&a);
    start[l * c..(l + 1) * c].copy_from_slice(&b);
    Some((start, RescueKind::SplitMerge))
}
