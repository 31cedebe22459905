//! The finite-difference gradient checker.
//!
//! Any backend's analytic gradient (in its own float type) is compared with central
//! differences of the [`Reference`] energy evaluated in `f64` on the same inputs:
//! Derivatives use the five-point stencil (truncation error O(h⁴)).
//! - **full** check, for tensors up to [`Options::full_limit`] elements: every coordinate;
//! - **directional** check, for larger ones: `Options::directions` random unit directions `v`,
//!   comparing `⟨∇E, v⟩` with `(E(p + h·v) − E(p − h·v)) / 2h`.
//!
//! Errors are reported absolute and relative to the gradient's scale (its largest magnitude in
//! the full check, its Euclidean norm in the directional one), so a tolerance means the same
//! thing at any size. The backend's energy is also compared with the reference energy.

use alloc::vec;
use alloc::vec::Vec;
use num_traits::Float;

use crate::rng::SplitMix64;
use crate::{Backend, Input, Params, Real, Reference, Scores};

/// What the checker does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Finite-difference step `h` (scaled by `max(1, |p_i|)` in the full check).
    pub step: f64,
    /// Tensors with at most this many score elements get the full check.
    pub full_limit: usize,
    /// Random directions in the directional check.
    pub directions: usize,
    /// Seed of the random directions.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { step: 1e-4, full_limit: 2048, directions: 24, seed: 0x5eed }
    }
}

/// Which check ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every coordinate.
    Full,
    /// Random directional derivatives.
    Directional,
}

/// The checker's findings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Which check ran.
    pub mode: Mode,
    /// How many coordinates or directions were compared.
    pub checks: usize,
    /// Coordinates left out of the full check because the step would cross a kink of the L1
    /// length (a difference `|d|` within the step's reach of 0), where no derivative exists.
    pub skipped_kinks: usize,
    /// The largest absolute difference between analytic and numerical derivatives.
    pub max_abs_error: f64,
    /// `max_abs_error` divided by the gradient's scale (largest |∂E/∂p_i| in the full check,
    /// ‖∇E‖₂ in the directional one), or by the backend type's resolution of the gradient's
    /// terms where that is larger (see [`resolution`]).
    pub max_rel_error: f64,
    /// The scale used for `max_rel_error`.
    pub grad_scale: f64,
    /// `|E_backend − E_reference| / max(|E_reference|, the energy's resolution)` (see
    /// [`resolution`]).
    pub energy_rel_error: f64,
}

impl Report {
    /// Whether both the gradient and the energy agree within `tolerance` (relative).
    pub fn passes(&self, tolerance: f64) -> bool {
        self.max_rel_error <= tolerance && self.energy_rel_error <= tolerance
    }
}

/// Checks `backend`'s gradient wrt the scores of `input` (logits or probabilities).
///
/// # Errors
/// Whatever the backend returns for this input; the reference's own errors converted into it.
pub fn check<T: Real, B: Backend<T>>(
    backend: &B,
    input: &Input<'_, T>,
    params: &Params,
    options: &Options,
) -> Result<Report, B::Error> {
    let shape = input.shape();
    let mut ws = backend.workspace();
    let mut grad_t = vec![T::zero(); shape.scores_len()];
    let e_backend = backend.energy_and_grad(input, params, &mut grad_t, &mut ws)?;
    let grad: Vec<f64> = grad_t.iter().map(|v| v.to_f64_lossless()).collect();

    // The same inputs, exactly, in f64.
    let wide = |v: &[T]| -> Vec<f64> { v.iter().map(|x| x.to_f64_lossless()).collect() };
    let mut p = wide(input.scores().data());
    let image = wide(input.image());
    let mask = input.mask().map(wide);
    let logits = input.scores().is_logits();
    let mut rws = <Reference as Backend<f64>>::workspace(&Reference);
    let mut energy = |p: &[f64]| -> Result<f64, crate::Error> {
        let scores = if logits { Scores::Logits(p) } else { Scores::Probs(p) };
        let inp = Input::new(shape, scores, &image, mask.as_deref())?;
        Ok(Backend::<f64>::energy(&Reference, &inp, params, &mut rws)?.total)
    };
    let e_ref = energy(&p)?;
    let (floor, e_floor) = resolution::<T>(input, params, &image);
    let energy_rel_error =
        Float::abs(e_backend.total.to_f64_lossless() - e_ref) / Float::max(Float::abs(e_ref), e_floor);

    let h = options.step;
    if p.len() <= options.full_limit {
        let near_kink = kink_map(input, params, &p, h);
        let mut max_abs: f64 = 0.0;
        let mut scale: f64 = 0.0;
        let mut skipped = 0;
        for i in 0..p.len() {
            if near_kink[i] {
                skipped += 1;
                continue;
            }
            let p0 = p[i];
            let mut hi = h * Float::max(1.0, Float::abs(p0));
            // Probabilities must stay >= 0: shrink the step, or go one-sided at 0.
            let numeric = if !logits && p0 < 3.0 * hi {
                if p0 > 0.0 {
                    hi = p0 / 3.0;
                    five_point(&mut energy, &mut p, i, p0, hi)?
                } else {
                    p[i] = p0 + hi;
                    let ep = energy(&p)?;
                    p[i] = p0;
                    (ep - e_ref) / hi
                }
            } else {
                five_point(&mut energy, &mut p, i, p0, hi)?
            };
            max_abs = Float::max(max_abs, Float::abs(numeric - grad[i]));
            scale = Float::max(scale, Float::abs(numeric));
        }
        let scale = Float::max(scale, floor);
        return Ok(Report {
            mode: crate::gradcheck::Mode::Full,
            checks: p.len() - skipped,
            skipped_kinks: skipped,
            max_abs_error: max_abs,
            max_rel_error: max_abs / scale,
            grad_scale: scale,
            energy_rel_error,
        });
    }

    let mut rng = SplitMix64::new(options.seed);
    let norm = Float::max(Float::sqrt(grad.iter().map(|g| g * g).sum::<f64>()), floor);
    let p0 = p.clone();
    let mut max_abs: f64 = 0.0;
    for _ in 0..options.directions {
        let mut v: Vec<f64> = (0..p.len()).map(|_| rng.normal()).collect();
        let vn = Float::sqrt(v.iter().map(|x| x * x).sum::<f64>());
        v.iter_mut().for_each(|x| *x /= vn);
        let mut hd = h;
        if !logits {
            for (pi, vi) in p0.iter().zip(&v) {
                if *vi != 0.0 && *pi > 0.0 {
                    hd = Float::min(hd, pi / (3.0 * Float::abs(*vi)));
                }
            }
        }
        let mut shifted = |sign: f64| -> Result<f64, crate::Error> {
            for ((q, a), b) in p.iter_mut().zip(&p0).zip(&v) {
                *q = Float::max(a + sign * hd * b, if logits { f64::NEG_INFINITY } else { 0.0 });
            }
            energy(&p)
        };
        let numeric = (8.0 * (shifted(1.0)? - shifted(-1.0)?) - (shifted(2.0)? - shifted(-2.0)?)) / (12.0 * hd);
        let analytic: f64 = grad.iter().zip(&v).map(|(g, d)| g * d).sum();
        max_abs = Float::max(max_abs, Float::abs(numeric - analytic));
    }
    Ok(Report {
        mode: Mode::Directional,
        checks: options.directions,
        skipped_kinks: 0,
        max_abs_error: max_abs,
        max_rel_error: max_abs / norm,
        grad_scale: norm,
        energy_rel_error,
    })
}

/// The smallest gradient and energy `T` resolves for this input: `1000·ε_T` times the size of
/// the terms they are made of before those cancel. For a gradient entry, `w·max‖x‖²` and `λ`
/// times two fluxes of at most 1 per axis; for the energy, `w·Σ‖x‖²` and `λ` times two per axis
/// and pixel; both divided by the valid pixels for a mean. A gradient or energy below it (a
/// one-pixel image, where every centroid equals the pixel) is compared in absolute terms against
/// it, not against its own rounding noise.
pub fn resolution<T: Real>(input: &Input<'_, T>, params: &Params, image: &[f64]) -> (f64, f64) {
    let shape = input.shape();
    let (c, sp) = (shape.channels(), shape.spatial());
    let (mut x2_max, mut x2_sum): (f64, f64) = (0.0, 0.0);
    for b in 0..shape.batch() {
        for r in 0..sp {
            let v: f64 = (0..c).map(|k| image[(b * c + k) * sp + r] * image[(b * c + k) * sp + r]).sum();
            x2_max = Float::max(x2_max, v);
            x2_sum += v;
        }
    }
    let (w, lambda) = (Float::abs(params.fidelity_weight), Float::abs(params.lambda));
    let axes = if shape.depth() > 1 { 3.0 } else { 2.0 };
    let pixels = (shape.batch() * sp) as f64;
    let per = if params.reduction == crate::Reduction::Mean {
        let valid = match input.mask() {
            Some(m) => m.iter().filter(|&&v| v == T::one()).count() as f64,
            None => pixels,
        };
        1.0 / Float::max(valid, 1.0)
    } else {
        1.0
    };
    let unit = 1e3 * T::epsilon().to_f64_lossless() * per;
    let grad = unit * (w * x2_max + lambda * 2.0 * axes);
    let energy = unit * (w * x2_sum + lambda * 2.0 * axes * pixels);
    (Float::max(grad, 1e-300), Float::max(energy, 1e-300))
}

/// For the L1 length, marks the coordinates whose perturbation by up to `2h` could change the
/// sign of a forward difference they take part in. (A softmax output moves by at most `h/2`
/// per unit step of any logit, a probability by `h`; the margin below is conservative.)
fn kink_map<T: Real>(input: &Input<'_, T>, params: &Params, p: &[f64], h: f64) -> Vec<bool> {
    let shape = input.shape();
    let mut near = vec![false; p.len()];
    if params.length != crate::LengthKind::L1 || params.lambda == 0.0 {
        return near;
    }
    let (n_cls, sp) = (shape.classes(), shape.spatial());
    let mut y = p.to_vec();
    if input.scores().is_logits() {
        for b in 0..shape.batch() {
            crate::reference::softmax_in_place(&mut y[b * n_cls * sp..(b + 1) * n_cls * sp], n_cls, sp);
        }
    }
    let dims = shape.spatial_dims();
    let strides = shape.spatial_strides();
    let margin = 4.0 * h * Float::max(1.0, p.iter().fold(0.0, |m: f64, v| Float::max(m, Float::abs(*v))));
    for b in 0..shape.batch() {
        for s in 0..sp {
            let coord = [s / strides[0], (s / strides[1]) % dims[1], s % dims[2]];
            // Does any class have a difference near 0 in a pair that includes pixel s?
            for n in 0..n_cls {
                let base = (b * n_cls + n) * sp;
                let mut kink = false;
                for a in 0..3 {
                    if coord[a] + 1 < dims[a] {
                        kink |= Float::abs(y[base + s + strides[a]] - y[base + s]) < margin;
                    }
                    if coord[a] > 0 {
                        kink |= Float::abs(y[base + s] - y[base + s - strides[a]]) < margin;
                    }
                }
                if kink {
                    if input.scores().is_logits() {
                        // Every logit at this pixel moves every class's probability.
                        (0..n_cls).for_each(|m| near[(b * n_cls + m) * sp + s] = true);
                    } else {
                        near[base + s] = true;
                    }
                }
            }
        }
    }
    near
}

/// The five-point stencil `(8(E(h) − E(−h)) − (E(2h) − E(−2h))) / 12h`: truncation error
/// O(h⁴), so steps large enough to keep rounding small stay accurate even where the energy
/// curves sharply (Charbonnier with a small δ).
fn five_point(
    energy: &mut impl FnMut(&[f64]) -> Result<f64, crate::Error>,
    p: &mut [f64],
    i: usize,
    p0: f64,
    h: f64,
) -> Result<f64, crate::Error> {
    let mut at = |t: f64| {
        p[i] = p0 + t;
        energy(p)
    };
    let d1 = at(h)? - at(-h)?;
    let d2 = at(2.0 * h)? - at(-2.0 * h)?;
    p[i] = p0;
    Ok((8.0 * d1 - d2) / (12.0 * h))
}
