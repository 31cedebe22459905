//! The segmenter's start: phase centroids from a denoised copy of the image.
//!
//! - *Interior pixels*: on the denoised copy, pixels whose local gradient is far above the
//!   image's typical (median) gradient sit on a boundary, where the box mean blends two phases
//!   into an intermediate value. They are left out of the start, so that no centroid is spent
//!   on those blends (the failure of issue 27: a k-means centre between two levels, and a small
//!   phase close to a large one lost). The rest of the image (almost all of it) is kept.
//! - *Grey images* (`C = 1`): multi-level Otsu thresholds of the interior pixels' histogram,
//!   computed exactly by dynamic programming (the `K − 1` thresholds that maximise the
//!   between-class variance, which in one dimension is the globally optimal k-means over the
//!   histogram's bins); the centroids are the classes' exact means, then refined by Lloyd
//!   iterations on all pixels (the k-means subsample) unless that moves a mean by more than a
//!   quarter of the distance to its nearest neighbour. Otsu decides which phases there are; the
//!   refinement only centres them as k-means on the whole image does, which on images that the
//!   k-means start already handled gives the same descent as before.
//! - *Colour and multichannel images*: seeded k-means++ with several starts on the interior
//!   pixels (see [`crate::kmeans`]), refined on all pixels under the same condition.
//!
//! If the interior holds too few pixels or too few distinct histogram bins for `K` classes,
//! all pixels are used; if Otsu still cannot make `K` non-empty classes, k-means is.

use crate::Volume;
use rayon::prelude::*;

use crate::kmeans::{MAX_SAMPLES, block_sums, dist2, kmeans_points, lloyd, sample};

/// Histogram bins of the multi-level Otsu start.
pub const OTSU_BINS: usize = 512;
/// A pixel is a boundary pixel when its squared gradient on the denoised copy exceeds this
/// multiple of the median squared gradient (for Gaussian noise alone, well above the 99th
/// percentile in 2D and 3D, grey or colour).
pub const EDGE_FACTOR: f64 = 8.0;
/// The interior is used only if it holds at least this fraction of the pixels.
const MIN_INTERIOR: f64 = 0.25;

/// The start: centroids `[K, C]` and which method gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// Centroids, `K·C` values.
    pub centroids: Vec<f64>,
    /// `"otsu"` or `"kmeans"`.
    pub method: &'static str,
    /// The fraction of pixels used (the interior, or 1 when all were).
    pub interior_fraction: f64,
}

/// The squared gradient of `vol` along row `r` (the row's index over depth and height) into
/// `out` (`W` values): central differences (one-sided at the edges) along every axis of extent
/// > 1, summed over axes and channels.
fn row_gradient(vol: &Volume, r: usize, out: &mut [f32]) {
    let [d, h, w] = vol.dims();
    let (z, y) = (r / h, r % h);
    let taps = |i: usize, extent: usize| (i.saturating_sub(1), (i + 1).min(extent - 1));
    out.fill(0.0);
    for ch in 0..vol.channels() {
        let v = vol.channel(ch);
        let row = |zz: usize, yy: usize| &v[(zz * h + yy) * w..][..w];
        {
            let mut add = |a: &[f32], b: &[f32]| {
                out.iter_mut().zip(a).zip(b).for_each(|((o, &a), &b)| *o += (b - a) * (b - a));
            };
            if d > 1 {
                let (a, b) = taps(z, d);
                add(row(a, y), row(b, y));
            }
            if h > 1 {
                let (a, b) = taps(y, h);
                add(row(z, a), row(z, b));
            }
        }
        if w > 1 {
            let own = row(z, y);
            for (x, o) in out.iter_mut().enumerate() {
                let (lo, hi) = taps(x, w);
                let diff = own[hi] - own[lo];
                *o += diff * diff;
            }
        }
    }
}

/// Which pixels are interior (not on a boundary) on the denoised copy `smoothed`: the squared
/// gradient at most [`EDGE_FACTOR`] times its median over an evenly strided sample.
pub fn interior(smoothed: &Volume) -> Vec<bool> {
    let w = smoothed.dims()[2];
    let n = smoothed.pixels();
    let mut grad = vec![0.0f32; n];
    grad.par_chunks_mut(w).enumerate().with_min_len(16).for_each(|(r, out)| row_gradient(smoothed, r, out));
    let mut sorted: Vec<f32> = grad.iter().step_by(n.div_ceil(MAX_SAMPLES).max(1)).copied().collect();
    let mid = sorted.len() / 2;
    let median = if sorted.is_empty() { 0.0 } else { *sorted.select_nth_unstable_by(mid, f32::total_cmp).1 };
    let limit = EDGE_FACTOR as f32 * median;
    grad.par_iter().with_min_len(1 << 14).map(|&g| g <= limit).collect()
}

/// Whether the image has at least `k` distinct pixel values (vectors, for several channels).
/// Stops as soon as `k` are found.
pub fn has_distinct(vol: &Volume, k: usize) -> bool {
    let c = vol.channels();
    let n = vol.pixels();
    let mut seen: Vec<Vec<f32>> = Vec::with_capacity(k);
    let mut px = vec![0.0f32; c];
    for s in 0..n {
        for (ch, v) in px.iter_mut().enumerate() {
            *v = vol.channel(ch)[s];
        }
        if !seen.iter().any(|q| q == &px) {
            seen.push(px.clone());
            if seen.len() >= k {
                return true;
            }
        }
    }
    seen.len() >= k
}

/// The `k` classes of multi-level Otsu on the values `xs` (those where `keep` is true, when
/// given): the class means, ascending, or `None` when fewer than `k` histogram bins are
/// occupied.
///
/// The values are binned into `bins` equal bins over their range; the `k − 1` thresholds (bin
/// boundaries) maximising `Σ_class S²/W` (`S` the class's sum, `W` its count: the
/// between-class variance up to a constant) are found exactly by dynamic programming over the
/// bins, `O(k·bins²)`, every class non-empty. The means are those of the values themselves.
pub fn multi_otsu<T: Copy + Into<f64> + Sync>(
    xs: &[T],
    keep: Option<&[bool]>,
    k: usize,
    bins: usize,
) -> Option<Vec<f64>> {
    if k == 0 || bins == 0 {
        return None;
    }
    // Values per block of the histogram's sums (see `block_sums`).
    const BLOCK: usize = 1 << 14;
    let kept = |i: &usize| keep.is_none_or(|keep| keep.get(*i).copied().unwrap_or(false));
    let (lo, hi) = (0..xs.len())
        .into_par_iter()
        .with_min_len(BLOCK)
        .filter(kept)
        .map(|i| xs[i].into())
        .fold(|| (f64::INFINITY, f64::NEG_INFINITY), |(a, b), x: f64| (a.min(x), b.max(x)))
        .reduce(|| (f64::INFINITY, f64::NEG_INFINITY), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    if !(lo.is_finite() && hi.is_finite()) {
        return None;
    }
    let scale = if hi > lo { bins as f64 / (hi - lo) } else { 0.0 };
    // Each bin's count, then each bin's sum.
    let hist = block_sums(xs.len(), BLOCK, 2 * bins, |items, hist| {
        for i in items.filter(kept) {
            let x: f64 = xs[i].into();
            let b = (((x - lo) * scale) as usize).min(bins - 1);
            hist[b] += 1.0;
            hist[bins + b] += x;
        }
    });
    let (count, sum) = hist.split_at(bins);
    if count.iter().filter(|&&w| w > 0.0).count() < k {
        return None;
    }
    // Prefix sums: class [i, j) has count pw[j] − pw[i] and sum ps[j] − ps[i].
    let mut pw = vec![0.0f64; bins + 1];
    let mut ps = vec![0.0f64; bins + 1];
    for b in 0..bins {
        pw[b + 1] = pw[b] + count[b];
        ps[b + 1] = ps[b] + sum[b];
    }
    let score = |i: usize, j: usize| {
        let w = pw[j] - pw[i];
        if w > 0.0 {
            let s = ps[j] - ps[i];
            s * s / w
        } else {
            f64::NEG_INFINITY
        }
    };
    // best[m][j]: the best score of bins [0, j) in m + 1 classes; from[m][j] where the last starts.
    let mut best = vec![vec![f64::NEG_INFINITY; bins + 1]; k];
    let mut from = vec![vec![0usize; bins + 1]; k];
    for (j, b) in best[0].iter_mut().enumerate().skip(1) {
        *b = score(0, j);
    }
    for (m, from_m) in from.iter_mut().enumerate().skip(1) {
        let (done, rest) = best.split_at_mut(m);
        let (Some(prev), Some(row)) = (done.last(), rest.first_mut()) else { return None };
        // The last class count needs only its value over all the bins.
        let first = if m + 1 == k { bins } else { m + 1 };
        for j in first..=bins {
            let mut top = (f64::NEG_INFINITY, 0);
            for (i, &p) in prev.iter().enumerate().take(j).skip(m) {
                if p == f64::NEG_INFINITY {
                    continue;
                }
                let v = p + score(i, j);
                if v > top.0 {
                    top = (v, i);
                }
            }
            row[j] = top.0;
            from_m[j] = top.1;
        }
    }
    if best[k - 1][bins] == f64::NEG_INFINITY {
        return None;
    }
    let mut edges = vec![bins; k + 1];
    edges[0] = 0;
    for m in (1..k).rev() {
        edges[m] = from[m][edges[m + 1]];
    }
    let means = (0..k)
        .map(|m| {
            let (i, j) = (edges[m], edges[m + 1]);
            (ps[j] - ps[i]) / (pw[j] - pw[i])
        })
        .collect();
    Some(means)
}

/// The pixels the start uses: those of [`interior`], or all of them (`None`) when the interior
/// holds less than a quarter of the image or fewer than `k` pixels.
pub fn start_pixels(smoothed: &Volume, k: usize) -> Option<Vec<bool>> {
    let inside = interior(smoothed);
    let kept = inside.iter().filter(|&&b| b).count();
    (kept as f64 >= MIN_INTERIOR * smoothed.pixels() as f64 && kept >= k).then_some(inside)
}

/// A centroid may move by at most this fraction of the distance to its nearest neighbour when
/// the Otsu means are refined on all pixels.
const MAX_REFINE_SHIFT: f64 = 0.25;

/// The centroids `found` (`[K, C]`) refined by Lloyd iterations on all pixels of `smoothed` (the
/// k-means subsample), or `found` unchanged if the refinement moves any centroid by more than
/// [`MAX_REFINE_SHIFT`] of the distance to its nearest neighbour: boundary blends may pull a
/// small phase's centroid away (issue 27), and the refinement must not change which phases are
/// found.
fn refine(smoothed: &Volume, found: Vec<f64>) -> Vec<f64> {
    let c = smoothed.channels().max(1);
    let (refined, _) = lloyd(&sample(smoothed), c, found.clone());
    let dist = |a: &[f64], b: &[f64]| dist2(a, b).sqrt();
    let rows: Vec<&[f64]> = found.chunks_exact(c).collect();
    let close = rows.iter().enumerate().all(|(j, m)| {
        let gap =
            rows.iter().enumerate().filter(|&(i, _)| i != j).map(|(_, o)| dist(o, m)).fold(f64::INFINITY, f64::min);
        refined.get(j * c..(j + 1) * c).is_some_and(|r| dist(r, m) <= MAX_REFINE_SHIFT * gap)
    });
    if close { refined } else { found }
}

/// The start for `k` phases on the denoised copy `smoothed` from the pixels `inside` (all when
/// `None`; see [`start_pixels`]), with `starts` k-means starts and `seed` for images of several
/// channels.
pub fn start(smoothed: &Volume, inside: Option<&[bool]>, k: usize, starts: usize, seed: u64) -> Start {
    let n = smoothed.pixels();
    let c = smoothed.channels();
    let use_interior = inside.is_some();
    let inside = inside.unwrap_or(&[]);
    let kept = if use_interior { inside.iter().filter(|&&b| b).count() } else { n };
    let chosen = |s: usize| !use_interior || inside.get(s).copied().unwrap_or(true);
    let fraction = if use_interior { kept as f64 / n.max(1) as f64 } else { 1.0 };
    if c == 1 {
        let x = smoothed.channel(0);
        if let Some(means) = multi_otsu(x, use_interior.then_some(inside), k, OTSU_BINS) {
            return Start { centroids: refine(smoothed, means), method: "otsu", interior_fraction: fraction };
        }
        if use_interior && let Some(means) = multi_otsu(x, None, k, OTSU_BINS) {
            return Start { centroids: means, method: "otsu", interior_fraction: 1.0 };
        }
    }
    // k-means on an evenly strided subsample of the chosen pixels.
    let total = if use_interior { kept } else { n };
    let stride = total.div_ceil(MAX_SAMPLES).max(1);
    let mut pts = Vec::with_capacity(c * total.div_ceil(stride));
    for s in (0..n).filter(|&s| chosen(s)).step_by(stride) {
        for ch in 0..c {
            pts.push(f64::from(smoothed.channel(ch)[s]));
        }
    }
    let clusters = kmeans_points(&pts, c, k, starts, seed);
    let centroids = if use_interior { refine(smoothed, clusters.centroids) } else { clusters.centroids };
    Start { centroids, method: "kmeans", interior_fraction: fraction }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otsu_finds_a_small_close_class() {
        // 60% at 0, 36% at 0.2, 4% at 0.3: the small class is its own.
        let mut xs = Vec::new();
        for i in 0..1000 {
            let jitter = (i % 7) as f64 * 1e-3;
            xs.push(if i < 600 {
                jitter
            } else if i < 960 {
                0.2 + jitter
            } else {
                0.3 + jitter
            });
        }
        let m = multi_otsu(&xs, None, 3, 256).unwrap();
        assert!((m[0] - 0.003).abs() < 2e-3 && (m[1] - 0.203).abs() < 2e-3 && (m[2] - 0.303).abs() < 2e-3, "{m:?}");
        assert!(multi_otsu(&[0.0, 0.0, 1.0], None, 3, 16).is_none());
        assert_eq!(multi_otsu(&[0.0f32, 5.0, 1.0], Some(&[true, false, true]), 2, 16).unwrap(), vec![0.0, 1.0]);
        assert_eq!(multi_otsu(&[0.0, 1.0], None, 2, 16).unwrap(), vec![0.0, 1.0]);
    }

    #[test]
    fn distinct_values() {
        let vol = Volume::new(1, 1, 2, 2, vec![0.5, 0.5, 0.5, 1.0]).unwrap();
        assert!(has_distinct(&vol, 2));
        assert!(!has_distinct(&vol, 3));
        let rgb = Volume::new(3, 1, 1, 2, vec![0.0, 0.0, 0.5, 0.5, 0.2, 0.2]).unwrap();
        assert!(!has_distinct(&rgb, 2));
    }
}
