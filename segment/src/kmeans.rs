//! Seeded k-means++ on pixel intensities, the segmenter's initialisation.
//!
//! Several k-means++ starts (each a seeded stream) are refined by Lloyd iterations on a
//! deterministic subsample of the pixels, and the start with the lowest within-cluster sum of
//! squares is kept: the result depends on the seed, never on luck between runs.

use msloss_core::rng::SplitMix64;
use rayon::prelude::*;

use crate::Volume;

/// At most this many pixels are clustered (an evenly strided subsample of larger images).
pub const MAX_SAMPLES: usize = 1 << 16;
const LLOYD_ITERS: usize = 50;

/// The clustering: centroids `[K, C]` and the mean squared distance of a pixel to its nearest
/// centroid (summed over channels), an estimate of the within-phase noise variance.
#[derive(Debug, Clone, PartialEq)]
pub struct Clusters {
    /// Centroids, `K·C` values, row `k` the centroid of cluster `k`.
    pub centroids: Vec<f64>,
    /// Mean over the sample of the squared distance to the nearest centroid.
    pub within_variance: f64,
}

/// The evenly strided subsample of `vol` that k-means clusters, as `[S, C]` rows.
pub(crate) fn sample(vol: &Volume) -> Vec<f64> {
    let n = vol.pixels();
    let c = vol.channels();
    let stride = n.div_ceil(MAX_SAMPLES).max(1);
    let mut out = Vec::with_capacity(c * n.div_ceil(stride));
    for s in (0..n).step_by(stride) {
        for ch in 0..c {
            out.push(f64::from(vol.channel(ch)[s]));
        }
    }
    out
}

/// The squared Euclidean distance of two points.
pub(crate) fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index and squared distance of the centroid nearest to `p`.
pub(crate) fn nearest(p: &[f64], centroids: &[f64], c: usize) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (k, cen) in centroids.chunks_exact(c).enumerate() {
        let d = dist2(p, cen);
        if d < best.1 {
            best = (k, d);
        }
    }
    best
}

/// k-means++ seeding then Lloyd iterations; returns the centroids and the inertia.
fn one_start(pts: &[f64], c: usize, k: usize, rng: &mut SplitMix64) -> (Vec<f64>, f64) {
    let s = pts.len() / c;
    let mut cen = Vec::with_capacity(k * c);
    let first = rng.below(s);
    cen.extend_from_slice(&pts[first * c..(first + 1) * c]);
    let mut d2: Vec<f64> = pts.chunks_exact(c).map(|p| dist2(p, &cen[0..c])).collect();
    for _ in 1..k {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut r = rng.uniform() * total;
            let mut pick = s - 1;
            for (i, &d) in d2.iter().enumerate() {
                if r < d {
                    pick = i;
                    break;
                }
                r -= d;
            }
            pick
        } else {
            rng.below(s)
        };
        let new = pts[pick * c..(pick + 1) * c].to_vec();
        for (p, d) in pts.chunks_exact(c).zip(d2.iter_mut()) {
            *d = d.min(dist2(p, &new));
        }
        cen.extend_from_slice(&new);
    }
    lloyd(pts, c, cen)
}

/// Points per block of the sums over points (see [`block_sums`]).
pub(crate) const BLOCK: usize = 1 << 12;

/// `width` sums over the items `0..len`: `add(items, acc)` adds a block of at most `block` items
/// into its own zeros, the blocks run in parallel and are added in order, so that the sums do
/// not depend on the threads.
pub(crate) fn block_sums(
    len: usize,
    block: usize,
    width: usize,
    add: impl Fn(std::ops::Range<usize>, &mut [f64]) + Sync,
) -> Vec<f64> {
    let parts: Vec<Vec<f64>> = (0..len.div_ceil(block))
        .into_par_iter()
        .map(|i| {
            let mut acc = vec![0.0; width];
            add(i * block..((i + 1) * block).min(len), &mut acc);
            acc
        })
        .collect();
    let mut totals = vec![0.0; width];
    for part in &parts {
        totals.iter_mut().zip(part).for_each(|(t, v)| *t += v);
    }
    totals
}

/// Lloyd iterations from the centroids `cen` (`[K, C]`) on the points `pts`; returns the
/// centroids and the within-cluster sum of squares.
pub(crate) fn lloyd(pts: &[f64], c: usize, mut cen: Vec<f64>) -> (Vec<f64>, f64) {
    let c = c.max(1);
    let k = cen.len() / c;
    // Per cluster its count and channel sums, then the squared distances' sum.
    let width = k * (1 + c) + 1;
    let mut inertia = f64::INFINITY;
    for _ in 0..LLOYD_ITERS {
        let totals = block_sums(pts.len() / c, BLOCK, width, |items, acc| {
            for p in pts[items.start * c..items.end * c].chunks_exact(c) {
                let (j, d) = nearest(p, &cen, c);
                acc[width - 1] += d;
                let row = &mut acc[j * (1 + c)..(j + 1) * (1 + c)];
                row[0] += 1.0;
                row[1..].iter_mut().zip(p).for_each(|(s, &v)| *s += v);
            }
        });
        for (row, cj) in totals.chunks_exact(1 + c).zip(cen.chunks_exact_mut(c)) {
            if row[0] > 0.0 {
                cj.iter_mut().zip(&row[1..]).for_each(|(m, &s)| *m = s / row[0]);
            }
        }
        let total = totals[width - 1];
        let done = total >= inertia * (1.0 - 1e-9);
        inertia = total;
        if done {
            break;
        }
    }
    (cen, inertia)
}

/// Clusters the pixel intensities of `vol` into `k` groups with `starts` seeded k-means++ starts,
/// keeping the best.
pub fn kmeans(vol: &Volume, k: usize, starts: usize, seed: u64) -> Clusters {
    kmeans_points(&sample(vol), vol.channels(), k, starts, seed)
}

/// Clusters the points `pts` (`[S, C]` rows) into `k` groups with `starts` seeded k-means++
/// starts, keeping the one with the lowest within-cluster sum of squares.
pub fn kmeans_points(pts: &[f64], c: usize, k: usize, starts: usize, seed: u64) -> Clusters {
    let c = c.max(1);
    let s = pts.len() / c;
    if s == 0 {
        return Clusters { centroids: vec![0.0; k * c], within_variance: 0.0 };
    }
    let mut best: Option<(Vec<f64>, f64)> = None;
    for start in 0..starts.max(1) {
        let mut rng = SplitMix64::new(seed ^ (0xA076_1D64_78BD_642F_u64.wrapping_mul(start as u64 + 1)));
        let (cen, inertia) = one_start(pts, c, k, &mut rng);
        if best.as_ref().is_none_or(|b| inertia < b.1) {
            best = Some((cen, inertia));
        }
    }
    let (centroids, inertia) = best.unwrap_or_default();
    Clusters { centroids, within_variance: inertia / s as f64 }
}

/// The mean over the subsample of `vol` of the squared distance of a pixel to its nearest
/// centroid (summed over channels).
pub fn within_variance(vol: &Volume, centroids: &[f64]) -> f64 {
    let c = vol.channels();
    let pts = sample(vol);
    let s = pts.len() / c;
    let total = block_sums(s, BLOCK, 1, |items, acc| {
        acc[0] = pts[items.start * c..items.end * c].chunks_exact(c).map(|p| nearest(p, centroids, c).1).sum::<f64>();
    });
    total[0] / s.max(1) as f64
}

/// `vol` averaged over a 3-pixel box along every axis of extent > 1 (edges clamped): a cheap
/// denoised copy, whose intensity histogram separates phases that noise makes overlap.
///
/// One pass, row by row: the rows of the box (3 or 9, a clamped edge repeating its row) are
/// summed, then the sum is averaged along the row.
pub fn box_smooth(vol: &Volume) -> Volume {
    let [d, h, w] = vol.dims();
    let src = vol.data();
    // The box's offsets and divisor along an axis: the clamped neighbours, or the index alone.
    let taps = |i: usize, extent: usize| -> ([usize; 3], usize) {
        if extent < 2 { ([i; 3], 1) } else { ([i.saturating_sub(1), i, (i + 1).min(extent - 1)], 3) }
    };
    let mut data = vec![0.0f32; src.len()];
    // Rows `(channel, z, y)` in blocks, each block with its own row of sums.
    const ROWS: usize = 16;
    data.par_chunks_mut(w * ROWS).enumerate().for_each(|(blk, out)| {
        let mut sum = vec![0.0f32; w];
        for (i, o) in out.chunks_exact_mut(w).enumerate() {
            let r = blk * ROWS + i;
            let (plane, y) = (r / h, r % h);
            let (ch, z) = (plane / d, plane % d);
            let (zs, dz) = taps(z, d);
            let (ys, dy) = taps(y, h);
            sum.fill(0.0);
            for &zz in &zs[..dz] {
                for &yy in &ys[..dy] {
                    let row = &src[((ch * d + zz) * h + yy) * w..][..w];
                    sum.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                }
            }
            let scale = 1.0 / (dz * dy) as f32;
            if w < 2 {
                o.iter_mut().zip(&sum).for_each(|(o, &a)| *o = a * scale);
                continue;
            }
            let scale = scale / 3.0;
            for (x, o) in o.iter_mut().enumerate() {
                let (lo, hi) = (x.saturating_sub(1), (x + 1).min(w - 1));
                *o = (sum[lo] + sum[x] + sum[hi]) * scale;
            }
        }
    });
    // Same extents and finite values as `vol`, so this cannot fail; fall back to `vol` regardless.
    Volume::new(vol.channels(), d, h, w, data).unwrap_or_else(|_| vol.clone())
}
