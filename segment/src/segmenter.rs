//! The segmenter: minimises the multiphase Mumford–Shah energy over per-pixel logits.

use std::time::Instant;

use msloss_core::{Backend, Energy, Fidelity, Gaussian, Input, LengthKind, Outputs, Params, Reduction, Scores, Shape};
use rayon::prelude::*;

use crate::kmeans::{BLOCK, MAX_SAMPLES, block_sums, box_smooth, dist2, within_variance};
use crate::rescue::{Rescue, propose};
use crate::start::{has_distinct, start, start_pixels};
use crate::{SegmentError, Volume};

/// Initial logits are clamped to `[-INIT_CLAMP, 0]` (after subtracting each pixel's maximum), so
/// that a confidently initialised pixel can still be flipped by the length term in a few steps.
const INIT_CLAMP: f64 = 6.0;
/// The floor of `σ̂²` where it scales logits and gradients (a noise-free image has `σ̂² = 0`).
const MIN_VARIANCE: f64 = 1e-12;
/// The relative-energy change must stay below the tolerance for this many steps in a row.
const PATIENCE: usize = 3;
/// The length weight grows by `1 + CONTRAST_WEIGHT / r²` at a contrast-to-noise ratio `r` of the
/// two closest phases (see [`SegmentConfig::lambda`]).
const CONTRAST_WEIGHT: f64 = 12.0;
/// The contrast-to-noise ratio is taken as at least this: below it the phases overlap so much
/// that a still dearer boundary over-smooths (in 3D most of all), so the factor stops at 4.
const MIN_CONTRAST: f64 = 2.0;
/// Adam's moment decay rates and denominator guard (on the normalised gradient).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// Settings of [`segment`].
///
/// | field | default | meaning |
/// |---|---|---|
/// | `phases` | 2 | the number of phases `K` (2 to 255, at most the pixel count) |
/// | `lambda` | 2 | the length weight, in units of the within-phase variance `σ̂²`, raised where phases are close (see the field) |
/// | `length` | [`LengthKind::Charbonnier`] | how boundaries are measured (isotropic, smooth) |
/// | `max_iters` | 300 | the most optimiser steps of each descent (the first and each rescue try) |
/// | `tol` | `1e-4` | stop when the relative energy change stays below this for 3 steps |
/// | `learning_rate` | 0.5 | Adam's step in logit units |
/// | `seed` | 0 | the k-means++ seed |
/// | `starts` | 4 | k-means++ starts for colour images (the best is kept) |
/// | `rescues` | 2 | the most rescue tries after the first descent (0: none) |
/// | `fidelity` | global | the loss's fidelity: global class means, or local ones (uneven illumination) |
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentConfig {
    /// The number of phases `K`.
    pub phases: usize,
    /// The length weight relative to the image: the loss runs with the mean reduction and
    /// `λ = lambda · σ̂² · (1 + 12 / max(r, 2)²)`. `σ̂²` is the mean squared distance of a pixel to
    /// its nearest start centroid (summed over channels), so the default suits any image size
    /// and intensity range. `r` is the contrast-to-noise ratio of the two closest phases, their
    /// distance over the noise's standard deviation along it (`r² = C·‖m_i − m_j‖² / σ²`),
    /// measured on the start's classes of the original image (see `start_contrast`). The factor
    /// makes boundaries dearer where noise flips pixels between close phases (up to 4× at
    /// `r ≤ 2`) and leaves them cheap where phases stand apart, so that structures one pixel wide
    /// survive: with the default, above `r ≈ 3.8`, where a fixed `6·σ̂²` erased them below
    /// `r ≈ 4.9`. The 2, the 12 and the floor of `r` were chosen on `bench/quality.py` and
    /// `bench/segment.py` (2–8 phases, grey and colour, 2D and 3D, thin lines, `r` from 0.8 to
    /// 20).
    pub lambda: f64,
    /// The length kind.
    pub length: LengthKind,
    /// The most optimiser steps of each descent (the first, and each rescue try).
    pub max_iters: usize,
    /// The relative-energy tolerance.
    pub tol: f64,
    /// Adam's learning rate, in logit units per step.
    pub learning_rate: f64,
    /// The seed of the k-means++ initialisation (colour images) and of the rescue's splits.
    pub seed: u64,
    /// How many k-means++ starts are tried (the one with the lowest within-cluster sum of squares
    /// is kept). Grey images start from multi-level Otsu and do not use them.
    pub starts: usize,
    /// The most rescue tries after the first descent (see [`segment`]); each is a full descent.
    pub rescues: usize,
    /// The fidelity of the loss: [`Fidelity::Global`] (one mean per phase), or
    /// [`Fidelity::Local`] for phases whose intensity drifts across the image (a bias field);
    /// its σ, in pixels, should be a few times the structures' size and well below the drift's.
    pub fidelity: Fidelity,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            phases: 2,
            lambda: 2.0,
            length: LengthKind::Charbonnier,
            max_iters: 300,
            tol: 1e-4,
            learning_rate: 0.5,
            seed: 0,
            starts: 4,
            rescues: 2,
            fidelity: Fidelity::Global,
        }
    }
}

impl SegmentConfig {
    /// The same settings with `phases` phases.
    pub fn with_phases(mut self, phases: usize) -> Self {
        self.phases = phases;
        self
    }

    /// Checks every field's range against an image of `pixels` pixels.
    ///
    /// # Errors
    /// [`SegmentError::BadPhases`] or [`SegmentError::BadSetting`].
    pub fn validate(&self, pixels: usize) -> Result<(), SegmentError> {
        if self.phases < 2 || self.phases > 255 || self.phases > pixels {
            return Err(SegmentError::BadPhases { phases: self.phases, pixels });
        }
        let check = |name, ok: bool, expected, value: f64| {
            if ok { Ok(()) } else { Err(SegmentError::BadSetting { name, expected, value }) }
        };
        check("lambda", self.lambda.is_finite() && self.lambda >= 0.0, "finite and >= 0", self.lambda)?;
        check("tol", self.tol.is_finite() && self.tol >= 0.0, "finite and >= 0", self.tol)?;
        check("iters", self.max_iters >= 1, ">= 1", self.max_iters as f64)?;
        if let Fidelity::Local { sigma } = self.fidelity {
            check("sigma", sigma.is_finite() && sigma > 0.0, "finite and > 0", sigma)?;
        }
        check(
            "learning_rate",
            self.learning_rate.is_finite() && self.learning_rate > 0.0,
            "finite and > 0",
            self.learning_rate,
        )?;
        Ok(())
    }
}

/// One optimiser step, reported to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// The step, from 1, counted on through the rescue tries' descents.
    pub iteration: usize,
    /// The most steps allowed over every descent: `max_iters · (rescues + 1)`.
    pub max_iters: usize,
    /// The energy at this step's logits.
    pub energy: Energy<f64>,
}

/// The result of [`segment`].
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// The label of each pixel, `[D, H, W]`; label `k` is the `k`-th darkest phase.
    pub labels: Vec<u8>,
    /// `[D, H, W]`.
    pub dims: [usize; 3],
    /// `K`.
    pub phases: usize,
    /// The phase centroids `[K, C]` in label order (the soft centroids of the final step).
    pub centroids: Vec<f64>,
    /// Pixels per label.
    pub pixels_per_phase: Vec<usize>,
    /// The optimiser steps taken, over every descent (rescue tries included).
    pub iterations: usize,
    /// Whether the kept descent met the relative-energy tolerance (rather than the step limit).
    pub converged: bool,
    /// The final energy and its parts (mean reduction).
    pub energy: Energy<f64>,
    /// The total energy at every step, the descents one after another.
    pub history: Vec<f64>,
    /// The λ the loss ran with (`lambda · σ̂² · (1 + 12 / max(r, 2)²)`).
    pub lambda: f64,
    /// `σ̂²`, the within-phase variance at the start's centroids (the first estimate of λ's).
    pub within_variance: f64,
    /// The contrast-to-noise ratio `r` of the two closest phases (infinite without noise), which
    /// raised the length weight (see [`SegmentConfig::lambda`]).
    pub contrast_to_noise: f64,
    /// Seconds spent in the initialisation.
    pub init_seconds: f64,
    /// Seconds spent in the optimisation (every descent, rescue tries included).
    pub optimise_seconds: f64,
    /// How the start's centroids were found: `"otsu"` or `"kmeans"`.
    pub start: &'static str,
    /// The rescue tries, in order (see [`segment`]).
    pub rescues: Vec<Rescue>,
}

fn backend_err<B: Backend<f32>>(backend: &B, e: B::Error) -> SegmentError {
    SegmentError::Backend { backend: backend.name(), message: e.to_string() }
}

/// Segments `vol` into `cfg.phases` phases with `backend`, calling `on_progress` after every step.
///
/// # Method
/// The energy `E(softmax(z))` of the multiphase Mumford–Shah model (mean reduction) is minimised
/// over per-pixel logits `z`. The backend returns `∂E/∂z` exactly (the softmax Jacobian is part
/// of [`Backend::energy_and_grad`] for [`Scores::Logits`]), so no finite differences or
/// autograd are involved.
///
/// - *Start*: phase centroids from a denoised copy of the image (a 3-pixel box mean along each
///   axis), leaving out its boundary pixels (where the box mean blends two phases): multi-level
///   Otsu thresholds of its histogram for grey images (exact, by dynamic programming), seeded
///   k-means++ with several starts for colour (see [`crate::start`]). The logits start as the
///   Gaussian-mixture log-posterior of the denoised pixel, `z_n = −‖x̄ − c_n‖² / (2σ̄²)` (`σ̄²` the
///   denoised copy's mean squared distance to its nearest centroid), clamped to 6 below each
///   pixel's maximum. The energy itself is always that of the original image.
/// - *Optimiser*: Adam. The gradient's scale varies over orders of magnitude with the image size,
///   the intensity range and between saturated and undecided pixels; Adam's per-coordinate
///   normalisation makes each logit move at most about `learning_rate` per step whatever that
///   scale, so one learning rate serves every image, and its momentum carries undecided pixels
///   across the flat middle of the softmax. Plain gradient descent would need a step tuned per
///   image; L-BFGS would need line searches (extra energy evaluations) on a nonconvex energy.
/// - *Stopping*: when `|E_t − E_{t−1}| / |E_t| < tol` for 3 steps in a row, or after `max_iters`.
/// - *Rescue*: the descent never revives a phase it has emptied, so after it converges at most
///   `cfg.rescues` other starts are tried (see [`crate::rescue`]): a phase that is empty or tiny
///   is re-seeded by splitting the phase that two centroids would fit best, or else that split is
///   paired with a merge of the two closest phases, when the split gains more than the merge
///   costs. Each try is a full descent (its own `max_iters`) from that start with the same `λ`,
///   and is kept only if its final energy is lower; the first try that is not kept ends the
///   rescue.
/// - *Labels*: the arg-max phase of each pixel, renumbered by the brightness (mean over channels)
///   of the phase centroids, darkest first, so the same image always gets the same numbers.
///
/// # Errors
/// [`SegmentError::BadPhases`], [`SegmentError::TooFewValues`], [`SegmentError::BadSetting`],
/// [`SegmentError::Backend`], [`SegmentError::Diverged`].
pub fn segment<B: Backend<f32>>(
    backend: &B,
    vol: &Volume,
    cfg: &SegmentConfig,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Segmentation, SegmentError> {
    let n = vol.pixels();
    cfg.validate(n)?;
    let k = cfg.phases;
    if !has_distinct(vol, k) {
        return Err(SegmentError::TooFewValues { phases: k });
    }
    let c = vol.channels();
    let [d, h, w] = vol.dims();
    let t0 = Instant::now();

    let smoothed = box_smooth(vol);
    // The local fidelity starts from the image less its local mean (`x − K_σ*x`), where phases
    // that drift across the image keep one level each; the noise is measured there too.
    let (smoothed, raw) = match cfg.fidelity {
        Fidelity::Global => (smoothed, None),
        Fidelity::Local { sigma } => {
            let extent = vol.dims().into_iter().max().unwrap_or(1);
            if sigma > extent as f64 {
                let expected = "at most the largest extent of the image";
                return Err(SegmentError::BadSetting { name: "sigma", expected, value: sigma });
            }
            let gaussian = Gaussian::new(sigma);
            (detrend(&smoothed, &gaussian)?, Some(detrend(vol, &gaussian)?))
        }
    };
    let inside = start_pixels(&smoothed, k);
    let first = start(&smoothed, inside.as_deref(), k, cfg.starts, cfg.seed);
    let original = raw.as_ref().unwrap_or(vol);
    let raw_variance = within_variance(original, &first.centroids);
    let contrast = start_contrast(original, &smoothed, inside.as_deref(), &first.centroids);
    let lambda = cfg.lambda * raw_variance * (1.0 + CONTRAST_WEIGHT / contrast.max(MIN_CONTRAST).powi(2));
    let params =
        Params { lambda, length: cfg.length, reduction: Reduction::Mean, fidelity: cfg.fidelity, ..Params::default() };
    let shape = Shape::new(1, k, c, d, h, w).map_err(|e| SegmentError::BadImage(e.to_string()))?;

    // The optimiser's planes of K·N values (the kept logits, the gradient and Adam's two
    // moments), allocated up front or refused; a rescue try's logits when one is made.
    const PLANES: &str = "the optimiser's logits, gradient and moments";
    // Adam's moments only get room here: each descent zeroes them.
    let (mut best_logits, grad) = (crate::zeros(k * n, PLANES)?, crate::zeros(k * n, PLANES)?);
    let (m, v) = (crate::room(k * n, PLANES)?, crate::room(k * n, PLANES)?);
    let mut logits = Vec::new();
    let mut work = Work { ws: backend.workspace(), grad, m, v };
    let init_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let max_total = cfg.max_iters.saturating_mul(cfg.rescues + 1);
    let mut ctx = Descent { backend, vol, smoothed: &smoothed, shape, params, cfg, max_total, steps: 0 };
    let mut history = Vec::new();
    let mut best = ctx.run(&first.centroids, &mut best_logits, &mut work, &mut history, &mut on_progress)?;
    let mut rescues = Vec::new();
    // The rescue compares phase means with the start's image: the global fidelity's only.
    let tries = if cfg.fidelity == Fidelity::Global { cfg.rescues } else { 0 };
    for _ in 0..tries {
        let current = argmax(&best_logits, n, &(0..=u8::MAX).take(k).collect::<Vec<u8>>());
        let Some((centroids, kind)) = propose(&smoothed, inside.as_deref(), &current, &best.centroids, k, cfg.seed)
        else {
            break;
        };
        if logits.is_empty() {
            logits = crate::zeros(k * n, PLANES)?;
        }
        let trial = ctx.run(&centroids, &mut logits, &mut work, &mut history, &mut on_progress)?;
        let kept = trial.energy.total < best.energy.total;
        rescues.push(Rescue { kind, energy_before: best.energy.total, energy_after: trial.energy.total, kept });
        if !kept {
            break;
        }
        best = trial;
        std::mem::swap(&mut best_logits, &mut logits);
    }
    let optimise_seconds = t1.elapsed().as_secs_f64();
    let iterations = ctx.steps;
    let Outcome { centroids, energy, converged } = best;
    let logits = best_logits;

    // Renumber phases by centroid brightness, darkest first.
    let brightness: Vec<f64> =
        (0..k).map(|j| centroids[j * c..(j + 1) * c].iter().map(|&v| f64::from(v)).sum::<f64>() / c as f64).collect();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| brightness[a].total_cmp(&brightness[b]).then(a.cmp(&b)));
    let mut rank = vec![0u8; k];
    for (r, &j) in order.iter().enumerate() {
        rank[j] = r as u8;
    }
    let labels = argmax(&logits, n, &rank);
    let mut pixels_per_phase = vec![0usize; k];
    for &l in &labels {
        pixels_per_phase[usize::from(l)] += 1;
    }
    let centroids: Vec<f64> =
        order.iter().flat_map(|&j| centroids[j * c..(j + 1) * c].iter().map(|&v| f64::from(v))).collect();
    Ok(Segmentation {
        labels,
        dims: [d, h, w],
        phases: k,
        centroids,
        pixels_per_phase,
        iterations,
        converged,
        energy,
        history,
        lambda,
        within_variance: raw_variance,
        contrast_to_noise: contrast,
        init_seconds,
        optimise_seconds,
        start: first.method,
        rescues,
    })
}

/// `vol − K_σ * vol`, channel by channel: the image less its Gaussian-weighted local mean (the
/// local fidelity's window, its sums cut at the edges and divided by the weight inside).
fn detrend(vol: &Volume, gaussian: &Gaussian) -> Result<Volume, SegmentError> {
    let dims = vol.dims();
    let n = vol.pixels();
    let mut plane: Vec<f64> = crate::zeros(n, "the local start's planes")?;
    let mut line = crate::zeros(n + 2 * dims.into_iter().max().unwrap_or(1), "the local start's planes")?;
    let [d, h, w] = dims;
    // The window's weight inside the image, `Σ_t K(s, t)`: a product of the axes' edge weights.
    let edges = |n: usize| -> Vec<f64> { (0..n).map(|i| gaussian.edge_weight(n, i)).collect() };
    let (ed, eh, ew) = (edges(d), edges(h), edges(w));
    let weight = |s: usize| ed[s / (h * w)] * eh[(s / w) % h] * ew[s % w];
    let mut out = crate::zeros(vol.data().len(), "the local start's image")?;
    for (ch, o) in out.chunks_mut(n).enumerate() {
        for (p, &x) in plane.iter_mut().zip(vol.channel(ch)) {
            *p = f64::from(x);
        }
        gaussian.convolve(&mut plane, dims, &mut line);
        for (s, ((o, &x), p)) in o.iter_mut().zip(vol.channel(ch)).zip(&plane).enumerate() {
            *o = (f64::from(x) - p / weight(s)) as f32;
        }
    }
    Volume::new(vol.channels(), d, h, w, out)
}

/// The contrast-to-noise ratio `r` of the two closest phases as the start sees them: each
/// interior pixel (of `inside`; all when `None`) of an evenly strided sample goes to the start
/// centroid (of `cen`, `[K, C]`) nearest its value in `smoothed`, and `r` is the distance of two classes' means in `vol` over
/// the noise's standard deviation along it, `sqrt(C·‖m_i − m_j‖² / σ²)`, `σ²` the classes' mean
/// squared distance to their own means (summed over channels). The start centroids themselves
/// come from the denoised copy, which blurs structures a pixel or two wide towards their
/// surroundings; the nearest-centroid classes of the image itself would cut the noise's tails
/// off and overstate the contrast; boundary pixels would mix the classes. Infinite for an image
/// without noise, or when the interior holds only one class.
fn start_contrast(vol: &Volume, smoothed: &Volume, inside: Option<&[bool]>, cen: &[f64]) -> f64 {
    let (n, c) = (vol.pixels(), vol.channels());
    let k = cen.len() / c.max(1);
    // Per class: the pixel count, then the channels' sums and sums of squares.
    let stride = 1 + 2 * c;
    // An evenly strided sample of at most about `MAX_SAMPLES` pixels, as k-means uses.
    let step = n.div_ceil(MAX_SAMPLES).max(1);
    let totals = block_sums(n.div_ceil(step), BLOCK, k * stride, |items, acc| {
        for s in items.map(|i| i * step) {
            if inside.is_some_and(|inside| !inside[s]) {
                continue;
            }
            let j = nearest_px(smoothed.data(), n, s, cen, c).0;
            let row = &mut acc[j * stride..(j + 1) * stride];
            row[0] += 1.0;
            for ch in 0..c {
                let x = f64::from(vol.channel(ch)[s]);
                row[1 + ch] += x;
                row[1 + c + ch] += x * x;
            }
        }
    });
    let classes: Vec<&[f64]> = totals.chunks_exact(stride).filter(|row| row[0] > 0.0).collect();
    let means: Vec<Vec<f64>> = classes.iter().map(|row| row[1..=c].iter().map(|&v| v / row[0]).collect()).collect();
    let spread: f64 = classes
        .iter()
        .zip(&means)
        .map(|(row, m)| (0..c).map(|ch| row[1 + c + ch] - row[0] * m[ch] * m[ch]).sum::<f64>())
        .sum::<f64>()
        / classes.iter().map(|row| row[0]).sum::<f64>().max(1.0);
    let closest = means
        .iter()
        .enumerate()
        .flat_map(|(i, a)| means[..i].iter().map(move |b| dist2(a, b)))
        .fold(f64::INFINITY, f64::min);
    if spread <= 0.0 { f64::INFINITY } else { (c as f64 * closest / spread).sqrt() }
}

/// The arg-max phase of each pixel of the logits `[K, N]` (the first on ties), renamed by
/// `rank` (`rank[j]` the label of phase `j`).
fn argmax(logits: &[f32], n: usize, rank: &[u8]) -> Vec<u8> {
    let mut labels = vec![0u8; n];
    const CHUNK: usize = 1 << 14;
    labels.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        for (t, o) in out.iter_mut().enumerate() {
            let s = i * CHUNK + t;
            let mut best = (f32::NEG_INFINITY, 0);
            for (j, &r) in rank.iter().enumerate() {
                let z = logits[j * n + s];
                if z > best.0 {
                    best = (z, r);
                }
            }
            *o = best.1;
        }
    });
    labels
}

/// The buffers every descent reuses.
struct Work<W> {
    ws: W,
    grad: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// What one descent ends with: the soft centroids `[K, C]` of its last step, its energy, and
/// whether it met the tolerance.
struct Outcome {
    centroids: Vec<f32>,
    energy: Energy<f64>,
    converged: bool,
}

/// The fixed parts of every descent of one segmentation, and the steps taken so far.
struct Descent<'a, B> {
    backend: &'a B,
    vol: &'a Volume,
    smoothed: &'a Volume,
    shape: Shape,
    params: Params,
    cfg: &'a SegmentConfig,
    max_total: usize,
    steps: usize,
}

impl<B: Backend<f32>> Descent<'_, B> {
    /// One descent from the phase centroids `cen` (`[K, C]`), in `logits`; appends each step's
    /// energy to `history` and reports it to `on_progress`, numbering steps on from earlier
    /// descents.
    fn run(
        &mut self,
        cen: &[f64],
        logits: &mut [f32],
        work: &mut Work<B::Workspace>,
        history: &mut Vec<f64>,
        on_progress: &mut impl FnMut(&Progress),
    ) -> Result<Outcome, SegmentError> {
        let (k, c, n) = (self.cfg.phases, self.vol.channels(), self.vol.pixels());
        let sigma2 = within_variance(self.smoothed, cen).max(MIN_VARIANCE);
        init_logits(self.smoothed, cen, sigma2, logits);
        crate::set_zeros(&mut work.m, k * n);
        crate::set_zeros(&mut work.v, k * n);
        let mut centroids = vec![0.0f32; k * c];
        // Adam sees ∂E/∂z scaled to a per-pixel, per-variance quantity so that ADAM_EPS is negligible.
        let gscale = (n as f64 / sigma2) as f32;
        // Adam's update is compiled for the widest vectors the CPU has (pulp's dispatch); no
        // operation is fused, so every instruction set gives the same bits.
        let arch = pulp::Arch::new();
        let mut prev: Option<f64> = None;
        let mut calm = 0;
        let mut converged = false;
        let mut energy = Energy::default();
        for t in 1..=self.cfg.max_iters {
            let input = Input::new(self.shape, Scores::Logits(logits), self.vol.data(), None)
                .map_err(|e| SegmentError::BadImage(e.to_string()))?;
            let out = Outputs { grad: Some(&mut work.grad), centroids: Some(&mut centroids) };
            let e = self
                .backend
                .evaluate(&input, &self.params, out, &mut work.ws)
                .map_err(|e| backend_err(self.backend, e))?;
            let e = Energy::new(f64::from(e.fidelity), f64::from(e.length));
            self.steps += 1;
            if !e.total.is_finite() {
                return Err(SegmentError::Diverged { iteration: self.steps, value: e.total });
            }
            on_progress(&Progress { iteration: self.steps, max_iters: self.max_total, energy: e });
            if let Some(prev) = prev {
                let rel = (prev - e.total).abs() / e.total.abs().max(f64::MIN_POSITIVE);
                calm = if rel < self.cfg.tol { calm + 1 } else { 0 };
            }
            prev = Some(e.total);
            history.push(e.total);
            energy = e;
            if calm >= PATIENCE {
                converged = true;
                break;
            }
            if t == self.cfg.max_iters {
                break;
            }
            let lr = self.cfg.learning_rate;
            let bc1 = 1.0 - BETA1.powi(t as i32);
            let bc2 = 1.0 - BETA2.powi(t as i32);
            let step = (lr * bc2.sqrt() / bc1) as f32;
            let (b1, b2, eps) = (BETA1 as f32, BETA2 as f32, (ADAM_EPS * bc2.sqrt()) as f32);
            const CHUNK: usize = 1 << 14;
            logits
                .par_chunks_mut(CHUNK)
                .zip(work.grad.par_chunks(CHUNK))
                .zip(work.m.par_chunks_mut(CHUNK))
                .zip(work.v.par_chunks_mut(CHUNK))
                .for_each(|(((z, g), m), v)| {
                    arch.dispatch(
                        #[inline(always)]
                        || {
                            for i in 0..z.len() {
                                let gi = g[i] * gscale;
                                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                                z[i] -= step * m[i] / (v[i].sqrt() + eps);
                            }
                        },
                    )
                });
        }
        Ok(Outcome { centroids, energy, converged })
    }
}

/// The starting logits `[K, N]` of the centroids `cen`: the Gaussian-mixture log-posterior of
/// each pixel of `smoothed`, `−‖x̄ − c_n‖² / (2σ̄²)`, less its maximum, clamped at `−INIT_CLAMP`.
fn init_logits(smoothed: &Volume, cen: &[f64], sigma2: f64, logits: &mut [f32]) {
    let (n, c) = (smoothed.pixels(), smoothed.channels());
    let k = cen.len() / c.max(1);
    let img = smoothed.data();
    // Pixels in chunks, each with its piece of every phase's column.
    const CHUNK: usize = 1 << 12;
    let mut groups: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(CHUNK)).map(|_| Vec::with_capacity(k)).collect();
    for col in logits.chunks_mut(n) {
        for (group, piece) in groups.iter_mut().zip(col.chunks_mut(CHUNK)) {
            group.push(piece);
        }
    }
    groups.into_par_iter().enumerate().for_each(|(i, mut cols)| {
        let mut dist = vec![0.0f64; k];
        for t in 0..cols.first().map_or(0, |col| col.len()) {
            let s = i * CHUNK + t;
            for (j, d) in dist.iter_mut().enumerate() {
                *d = (0..c).map(|ch| (f64::from(img[ch * n + s]) - cen[j * c + ch]).powi(2)).sum();
            }
            let dmin = dist.iter().copied().fold(f64::INFINITY, f64::min);
            for (col, &d) in cols.iter_mut().zip(&dist) {
                col[t] = (-(d - dmin) / (2.0 * sigma2)).max(-INIT_CLAMP) as f32;
            }
        }
    });
}

/// The centroid of `cen` (`[K, C]`) nearest pixel `s` of the `[C, N]` image `img` (the first on
/// ties), and the squared distance to it.
fn nearest_px(img: &[f32], n: usize, s: usize, cen: &[f64], c: usize) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (j, row) in cen.chunks_exact(c.max(1)).enumerate() {
        let d: f64 = row.iter().enumerate().map(|(ch, &m)| (f64::from(img[ch * n + s]) - m).powi(2)).sum();
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}
