//! The local fidelity ([`Fidelity::Local`](msloss_core::Fidelity)) by separable convolutions,
//! in `f64`, one sample per task; the length term stays with the fused kernels.
//!
//! With the image centred on its valid pixels' mean `x̄` (`x' = x − x̄`), the window sums of a
//! class map `a = K*(m·y)` and `b' = K*(m·y·x')`, and the local means `f' = (b' − x̄·ε_c)/(a + ε_c)`
//! (exactly `f − x̄`, ε_c included), the definition expands to convolutions only:
//!
//! ```text
//! F     = Σ_t m·y·‖x'_t‖²·S(t) + Σ_s ( ‖f'‖²·a − 2·⟨f', b'⟩ )
//! ∂F/∂y = m·( S·‖x'‖² − ⟨x', K*U⟩ + K*W ),  U = 2·f' + κ·(f' + x̄),  W = ‖f'‖² + κ·⟨f' + x̄, f'⟩
//! ```
//!
//! with `κ = 2·ε_c/(a + ε_c)` and `S(t) = Σ_s K(s, t)` (less than one near the edges). Scratch
//! per sample: `2·N + C + 1` planes and a line, reused across calls.

use std::sync::Mutex;

use msloss_core::{Gaussian, Input};
use rayon::prelude::*;

use crate::float::CpuFloat;

/// What one evaluation of the local fidelity needs besides the input.
pub(crate) struct Local<'a> {
    pub(crate) gaussian: &'a Gaussian,
    /// ε_c.
    pub(crate) eps: f64,
    /// `w·scale`, the factor of the gradient.
    pub(crate) factor: f64,
}

/// Adds `w·scale·∂F/∂(scores)` of every sample into `grad` (where given) and returns `F`, summed
/// over the samples in order, and whether every gradient value is still finite.
pub(crate) fn add<T: CpuFloat>(
    input: &Input<'_, T>,
    local: &Local<'_>,
    grad: Option<&mut [T]>,
    slots: &[Mutex<Vec<f64>>],
    per_sample: &mut Vec<f64>,
) -> (f64, bool) {
    let shape = input.shape();
    let per = shape.classes() * shape.spatial();
    per_sample.clear();
    per_sample.resize(2 * shape.batch(), 0.0);
    let run = |b: usize, g: Option<&mut [T]>, out: &mut [f64]| {
        let mut buf = crate::take(slots);
        let (f, finite) = sample(input, b, local, g, &mut buf);
        out.copy_from_slice(&[f, if finite { 0.0 } else { 1.0 }]);
    };
    match grad {
        Some(grad) => grad
            .par_chunks_mut(per)
            .zip(per_sample.par_chunks_mut(2))
            .enumerate()
            .for_each(|(b, (g, out))| run(b, Some(g), out)),
        None => per_sample.par_chunks_mut(2).enumerate().for_each(|(b, out)| run(b, None, out)),
    }
    per_sample.chunks(2).fold((0.0, true), |(f, ok), p| (f + p[0], ok && p[1] == 0.0))
}

/// Sample `b`: its `F`, its gradient added into `grad`, and whether that stayed finite.
fn sample<T: CpuFloat>(
    input: &Input<'_, T>,
    b: usize,
    local: &Local<'_>,
    grad: Option<&mut [T]>,
    buf: &mut Vec<f64>,
) -> (f64, bool) {
    let shape = input.shape();
    let (n_cls, c, sp, dims) = (shape.classes(), shape.channels(), shape.spatial(), shape.spatial_dims());
    let lines = dims.iter().sum::<usize>();
    buf.resize((2 * n_cls + c + 1) * sp + lines + 2 * dims.into_iter().max().unwrap_or(1) + c, 0.0);
    let (centre, rest) = buf.split_at_mut(c);
    let (y, rest) = rest.split_at_mut(n_cls * sp);
    let (g, rest) = rest.split_at_mut(n_cls * sp);
    let (planes, rest) = rest.split_at_mut((c + 1) * sp);
    let (cover, line) = rest.split_at_mut(lines);
    let scores = &input.scores().data()[b * n_cls * sp..(b + 1) * n_cls * sp];
    let image = &input.image()[b * c * sp..(b + 1) * c * sp];
    let mask = |s: usize| input.mask().map_or(1.0, |m| m[b * sp + s].to_f64_lossless());
    for (yv, z) in y.iter_mut().zip(scores) {
        *yv = z.to_f64_lossless();
    }
    if input.scores().is_logits() {
        for s in 0..sp {
            let max = (0..n_cls).map(|n| y[n * sp + s]).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..n_cls).map(|n| (y[n * sp + s] - max).exp()).sum();
            for n in 0..n_cls {
                y[n * sp + s] = (y[n * sp + s] - max).exp() / sum;
            }
        }
    }
    // The centre x̄: any constant keeps the result exact; the mean keeps the sums small.
    let valid: f64 = (0..sp).map(mask).sum::<f64>().max(1.0);
    for (k, v) in centre.iter_mut().enumerate() {
        *v = (0..sp).map(|s| mask(s) * image[k * sp + s].to_f64_lossless()).sum::<f64>() / valid;
    }
    let centre = &*centre;
    let xc = |k: usize, s: usize| image[k * sp + s].to_f64_lossless() - centre[k];
    // S(t), axis by axis: the taps that fall inside the image.
    let r = local.gaussian.radius();
    let mut start = 0;
    for &n in &dims {
        for i in 0..n {
            cover[start + i] = if n > 1 {
                (i.saturating_sub(r)..(i + r + 1).min(n)).map(|j| local.gaussian.tap(i.abs_diff(j))).sum()
            } else {
                1.0
            };
        }
        start += n;
    }
    let [d, h, w] = dims;
    let coverage = |s: usize| cover[s / (h * w)] * cover[d + (s / w) % h] * cover[d + h + s % w];
    let (eps, mut total) = (local.eps, 0.0);
    for n in 0..n_cls {
        let yn = &y[n * sp..(n + 1) * sp];
        let (a, bk) = planes.split_at_mut(sp);
        for s in 0..sp {
            a[s] = mask(s) * yn[s];
            for k in 0..c {
                bk[k * sp + s] = a[s] * xc(k, s);
            }
        }
        local.gaussian.convolve(a, dims, line);
        for k in 0..c {
            local.gaussian.convolve(&mut bk[k * sp..(k + 1) * sp], dims, line);
        }
        // f', κ, the energy's window part; U over b', W over a.
        for s in 0..sp {
            let den = a[s] + eps;
            let kappa = 2.0 * eps / den;
            let (mut ff, mut fb, mut wv) = (0.0, 0.0, 0.0);
            for k in 0..c {
                let bv = bk[k * sp + s];
                let f = (bv - centre[k] * eps) / den;
                ff += f * f;
                fb += f * bv;
                wv += (f + centre[k]) * f;
                bk[k * sp + s] = 2.0 * f + kappa * (f + centre[k]);
            }
            total += ff * a[s] - 2.0 * fb;
            a[s] = ff + kappa * wv;
        }
        local.gaussian.convolve(a, dims, line);
        for k in 0..c {
            local.gaussian.convolve(&mut bk[k * sp..(k + 1) * sp], dims, line);
        }
        for s in 0..sp {
            let (mut xx, mut xu) = (0.0, 0.0);
            for k in 0..c {
                let x = xc(k, s);
                xx += x * x;
                xu += x * bk[k * sp + s];
            }
            let cov = coverage(s);
            total += mask(s) * yn[s] * xx * cov;
            g[n * sp + s] = mask(s) * (cov * xx - xu + a[s]);
        }
    }
    let Some(grad) = grad else { return (total, true) };
    let mut finite = true;
    let logits = input.scores().is_logits();
    for s in 0..sp {
        let mean: f64 = if logits { (0..n_cls).map(|n| y[n * sp + s] * g[n * sp + s]).sum() } else { 0.0 };
        for n in 0..n_cls {
            let i = n * sp + s;
            let v = local.factor * if logits { y[i] * (g[i] - mean) } else { g[i] };
            let o = &mut grad[i];
            *o += T::from_f64_lossy(v);
            finite &= o.is_finite();
        }
    }
    (total, finite)
}
