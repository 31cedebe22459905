//! Seeded synthetic images and volumes with known ground truth.
//!
//! Regions are the cells of a Voronoi diagram of `2·K` seed points (seed `i` belongs to phase
//! `i mod K`, so every phase is present), filled with one constant colour per phase, plus a
//! gentle linear intensity ramp across the width and Gaussian noise of standard deviation
//! `noise`. Phase colours are chosen so that phase `k` is the `k`-th darkest (by the mean over
//! channels), which is the order [`crate::segment`] gives its labels: a good segmentation of a
//! synthetic image has the same label numbers as its truth.

use msloss_core::rng::SplitMix64;

use crate::{SegmentError, Volume};

/// Grey levels are spread evenly over `[GREY_LO, GREY_HI]`.
const GREY_LO: f64 = 0.15;
const GREY_HI: f64 = 0.85;

/// Colour phases, darkest first (means 0.15, 0.35, 0.43, 0.58, 0.78).
const COLOURS: [[f64; 3]; 5] =
    [[0.15, 0.15, 0.15], [0.15, 0.30, 0.60], [0.80, 0.25, 0.25], [0.30, 0.75, 0.70], [0.85, 0.80, 0.70]];

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthSpec {
    /// Phases `K`, 2 to 5.
    pub phases: usize,
    /// Grey (1 channel) or colour (3 channels).
    pub colour: bool,
    /// `[D, H, W]` (`D = 1` for 2D).
    pub dims: [usize; 3],
    /// Standard deviation of the Gaussian noise (0 to 0.5).
    pub noise: f64,
    /// Total intensity change of the ramp across the width.
    pub ramp: f64,
    /// The seed.
    pub seed: u64,
}

impl Default for SynthSpec {
    /// The built-in demo: 3 colour phases, 256×256, noise 0.1, ramp 0.05, seed 1.
    fn default() -> Self {
        Self { phases: 3, colour: true, dims: [1, 256, 256], noise: 0.1, ramp: 0.05, seed: 1 }
    }
}

/// A synthetic image and its ground-truth labels (`[D, H, W]`, phase `k` the `k`-th darkest).
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// The image.
    pub volume: Volume,
    /// The true phase of each pixel.
    pub truth: Vec<u8>,
}

/// The colour of phase `k` of `phases`, one value per channel.
fn phase_colour(k: usize, phases: usize, colour: bool) -> Vec<f64> {
    if colour { COLOURS[k].to_vec() } else { vec![GREY_LO + (GREY_HI - GREY_LO) * k as f64 / (phases - 1) as f64] }
}

/// Generates the image `spec` describes.
///
/// # Errors
/// [`SegmentError::BadSetting`] for phases outside 2..=5 or noise outside `[0, 0.5]`;
/// [`SegmentError::BadImage`] for an empty size or one that does not fit in memory.
pub fn generate(spec: &SynthSpec) -> Result<Synthetic, SegmentError> {
    if !(2..=5).contains(&spec.phases) {
        return Err(SegmentError::BadSetting {
            name: "synthetic phases",
            expected: "between 2 and 5",
            value: spec.phases as f64,
        });
    }
    if !(0.0..=0.5).contains(&spec.noise) {
        return Err(SegmentError::BadSetting { name: "synthetic noise", expected: "in [0, 0.5]", value: spec.noise });
    }
    if !spec.ramp.is_finite() || spec.ramp.abs() > 0.5 {
        return Err(SegmentError::BadSetting { name: "synthetic ramp", expected: "in [-0.5, 0.5]", value: spec.ramp });
    }
    let [d, h, w] = spec.dims;
    if spec.dims.contains(&0) {
        return Err(SegmentError::BadImage(format!("a synthetic image of {d}×{h}×{w} pixels is empty")));
    }
    let channels = if spec.colour { 3 } else { 1 };
    let too_large =
        || SegmentError::BadImage(format!("a synthetic image of {d}×{h}×{w} pixels does not fit in memory"));
    let n = d.checked_mul(h).and_then(|n| n.checked_mul(w)).ok_or_else(too_large)?;
    let mut truth: Vec<u8> = crate::zeros(n, "the synthetic image's labels")?;
    let mut data: Vec<f32> = crate::zeros(n.checked_mul(channels).ok_or_else(too_large)?, "the synthetic image")?;
    let k = spec.phases;
    let mut rng = SplitMix64::new(spec.seed);
    let seeds: Vec<[f64; 3]> =
        (0..2 * k).map(|_| [rng.below(d) as f64, rng.below(h) as f64, rng.below(w) as f64]).collect();
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let p = [z as f64, y as f64, x as f64];
                let mut best = (f64::INFINITY, 0usize);
                for (i, s) in seeds.iter().enumerate() {
                    let dist: f64 = (0..3).map(|a| (p[a] - s[a]) * (p[a] - s[a])).sum();
                    if dist < best.0 {
                        best = (dist, i);
                    }
                }
                truth[(z * h + y) * w + x] = (best.1 % k) as u8;
            }
        }
    }
    let colours: Vec<Vec<f64>> = (0..k).map(|p| phase_colour(p, k, spec.colour)).collect();
    for c in 0..channels {
        for (s, &t) in truth.iter().enumerate() {
            let x = s % w;
            let ramp = if w > 1 { spec.ramp * (x as f64 / (w - 1) as f64 - 0.5) } else { 0.0 };
            data[c * n + s] = (colours[t as usize][c] + ramp + spec.noise * rng.normal()) as f32;
        }
    }
    Ok(Synthetic { volume: Volume::new(channels, d, h, w, data)?, truth })
}

/// Issue 27's image: four grey phases at levels 0, 0.2, 0.3 and 1.0 with Gaussian noise
/// σ = 0.04 on a `size × size` image (`size >= 8`), a layout on which k-means starts lose the
/// small phase. Phase 1 (0.2) fills the left half (46%); phase 2 (0.3, the small phase close to
/// phase 1) is a disk of radius `0.113·size` (4%) centred at (`size/2`, `size/4`) inside it;
/// the right half is phase 0 (0, 35%) with a 6 × 4 grid of phase 3 disks (1.0, 15%) of radius
/// `0.045·size` centred at (`(i + ½)·size/6`, `size/2 + (j + ½)·size/8`), whose many boundary
/// pixels blend 0 and 1. `bench/quality.py` draws the same regions.
///
/// # Errors
/// [`SegmentError::BadImage`] for `size < 8` or a size that does not fit in memory.
pub fn small_close_phases(size: usize, seed: u64) -> Result<Synthetic, SegmentError> {
    grey_phases("issue 27's image", size, 8, &[0.0, 0.2, 0.3, 1.0], 0.04, seed, |truth| {
        let sz = size as f64;
        let inside = |y: f64, x: f64, cy: f64, cx: f64, r: f64| (y - cy).powi(2) + (x - cx).powi(2) <= r * r;
        for (s, t) in truth.iter_mut().enumerate() {
            let (y, x) = ((s / size) as f64, (s % size) as f64);
            let grid = (0..6).any(|i| {
                (0..4).any(|j| {
                    let (cy, cx) = ((f64::from(i) + 0.5) * sz / 6.0, sz / 2.0 + (f64::from(j) + 0.5) * sz / 8.0);
                    inside(y, x, cy, cx, 0.045 * sz)
                })
            });
            *t = if inside(y, x, sz / 2.0, sz / 4.0, 0.113 * sz) {
                2
            } else if grid {
                3
            } else if x < sz / 2.0 {
                1
            } else {
                0
            };
        }
    })
}

/// Thin structures: two grey phases, lines 1, 2, 3 and 4 pixels wide at level 0.7 (phase 1) on a
/// background at 0.3 (phase 0), Gaussian noise σ = 0.1 (contrast 4σ), on a `size × size` image
/// (`size >= 32`). Line `i` (width `i + 1`) runs across the image at row `size/8 + i·size/4` and
/// down it at column `size/8 + i·size/4 + size/16`, 8 pixels short of each edge; `bench/quality.py`
/// draws the same lines.
///
/// # Errors
/// [`SegmentError::BadImage`] for `size < 32` or a size that does not fit in memory.
pub fn thin_lines(size: usize, seed: u64) -> Result<Synthetic, SegmentError> {
    grey_phases("the thin-lines image", size, 32, &[0.3, 0.7], 0.1, seed, |truth| {
        let along = 8..size - 8;
        for (i, width) in (1..=4).enumerate() {
            let at = size / 8 + i * size / 4;
            for y in at..at + width {
                truth[y * size + along.start..y * size + along.end].fill(1);
            }
            for y in along.clone() {
                let x = at + size / 16;
                truth[y * size + x..y * size + x + width].fill(1);
            }
        }
    })
}

/// A `size × size` grey image (`size >= min`, else an error naming `what`) of the phases that
/// `draw` writes into the zeroed truth, each pixel at its phase's level in `levels` plus Gaussian
/// noise σ `sigma`, drawn pixel by pixel from `seed`.
fn grey_phases(
    what: &str,
    size: usize,
    min: usize,
    levels: &[f64],
    sigma: f64,
    seed: u64,
    draw: impl FnOnce(&mut [u8]),
) -> Result<Synthetic, SegmentError> {
    if size < min {
        return Err(SegmentError::BadImage(format!("{what} needs a size of at least {min}, got {size}")));
    }
    let n = size
        .checked_mul(size)
        .ok_or_else(|| SegmentError::BadImage(format!("a {size}×{size} image does not fit in memory")))?;
    let mut truth: Vec<u8> = crate::zeros(n, "the synthetic image's labels")?;
    let mut data: Vec<f32> = crate::zeros(n, "the synthetic image")?;
    draw(&mut truth);
    let mut rng = SplitMix64::new(seed);
    for (v, &t) in data.iter_mut().zip(&truth) {
        *v = (levels[usize::from(t)] + sigma * rng.normal()) as f32;
    }
    Ok(Synthetic { volume: Volume::new(1, 1, size, size, data)?, truth })
}
