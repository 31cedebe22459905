//! The finite-difference gradient checker.
//!
//! Any backend's analytic gradient (in its own float type) is compared with central
//! differences of the [`Reference`] energy evaluated in `f64` on the same inputs:
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
        Self { step: 1e-6, full_limit: 2048, directions: 24, seed: 0x5eed }
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
    /// The largest absolute difference between analytic and numerical derivatives.
    pub max_abs_error: f64,
    /// `max_abs_error` divided by the gradient's scale (largest |∂E/∂p_i| in the full check,
    /// ‖∇E‖₂ in the directional one).
    pub max_rel_error: f64,
    /// The gradient's scale used for `max_rel_error`.
    pub grad_scale: f64,
    /// `|E_backend − E_reference| / max(|E_reference|, tiny)`.
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
    let energy_rel_error =
        Float::abs(e_backend.total.to_f64_lossless() - e_ref) / Float::max(Float::abs(e_ref), 1e-300);

    let h = options.step;
    if p.len() <= options.full_limit {
        let mut max_abs: f64 = 0.0;
        let mut scale: f64 = 0.0;
        for i in 0..p.len() {
            let p0 = p[i];
            let mut hi = h * Float::max(1.0, Float::abs(p0));
            // Probabilities must stay >= 0: shrink the step, or go one-sided at 0.
            let numeric = if !logits && p0 < 2.0 * hi {
                if p0 > 0.0 {
                    hi = p0 / 2.0;
                    central(&mut energy, &mut p, i, p0, hi)?
                } else {
                    p[i] = p0 + hi;
                    let ep = energy(&p)?;
                    p[i] = p0;
                    (ep - e_ref) / hi
                }
            } else {
                central(&mut energy, &mut p, i, p0, hi)?
            };
            max_abs = Float::max(max_abs, Float::abs(numeric - grad[i]));
            scale = Float::max(scale, Float::abs(numeric));
        }
        let scale = Float::max(scale, 1e-300);
        return Ok(Report {
            mode: crate::gradcheck::Mode::Full,
            checks: p.len(),
            max_abs_error: max_abs,
            max_rel_error: max_abs / scale,
            grad_scale: scale,
            energy_rel_error,
        });
    }

    let mut rng = SplitMix64::new(options.seed);
    let norm = Float::max(Float::sqrt(grad.iter().map(|g| g * g).sum::<f64>()), 1e-300);
    let p0 = p.clone();
    let mut max_abs: f64 = 0.0;
    for _ in 0..options.directions {
        let mut v: Vec<f64> = (0..p.len()).map(|_| rng.normal()).collect();
        let vn = Float::sqrt(v.iter().map(|x| x * x).sum::<f64>());
        v.iter_mut().for_each(|x| *x /= vn);
        // A larger step than the full check: the energy sums many terms, so rounding (ε·E/h) dominates.
        let mut hd = 10.0 * h;
        if !logits {
            for (pi, vi) in p0.iter().zip(&v) {
                if *vi != 0.0 && *pi > 0.0 {
                    hd = Float::min(hd, pi / (2.0 * Float::abs(*vi)));
                }
            }
        }
        let mut shifted = |sign: f64| -> Result<f64, crate::Error> {
            for ((q, a), b) in p.iter_mut().zip(&p0).zip(&v) {
                *q = Float::max(a + sign * hd * b, if logits { f64::NEG_INFINITY } else { 0.0 });
            }
            energy(&p)
        };
        let numeric = (shifted(1.0)? - shifted(-1.0)?) / (2.0 * hd);
        let analytic: f64 = grad.iter().zip(&v).map(|(g, d)| g * d).sum();
        max_abs = Float::max(max_abs, Float::abs(numeric - analytic));
    }
    Ok(Report {
        mode: Mode::Directional,
        checks: options.directions,
        max_abs_error: max_abs,
        max_rel_error: max_abs / norm,
        grad_scale: norm,
        energy_rel_error,
    })
}

fn central(
    energy: &mut impl FnMut(&[f64]) -> Result<f64, crate::Error>,
    p: &mut [f64],
    i: usize,
    p0: f64,
    h: f64,
) -> Result<f64, crate::Error> {
    p[i] = p0 + h;
    let ep = energy(p)?;
    p[i] = p0 - h;
    let em = energy(p)?;
    p[i] = p0;
    Ok((ep - em) / (2.0 * h))
}
