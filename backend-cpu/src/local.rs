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
//! with `κ = 2·ε_c/(a + ε_c)` and `S(t) = Σ_s K(s, t)` (less than one near the edges). Scratch:
//! the sample in hand's `2·N + 2` planes, and `C + 2` planes and two lines per thread, reused
//! across calls.

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
    /// The instruction set the convolutions run with.
    pub(crate) arch: pulp::Arch,
}

/// Scratch of the local fidelity: the shared planes of the sample in hand (`y`, `g`, the
/// softmax's maximum and sum, the centre and the edge weights), per-thread planes for one class
/// at a time, and each class's results.
#[derive(Debug, Default)]
pub(crate) struct LocalScratch {
    shared: Vec<f64>,
    slots: Vec<Mutex<Vec<f64>>>,
    classes: Vec<(f64, bool)>,
}

/// Adds `w·scale·∂F/∂(scores)` of every sample into `grad` (where given) and returns `F`, summed
/// over the samples and classes in order, and whether every gradient value is still finite. The
/// samples go one after another; within one, the classes run in parallel (a segmentation has one
/// sample), then the pixels.
pub(crate) fn add<T: CpuFloat>(
    input: &Input<'_, T>,
    local: &Local<'_>,
    mut grad: Option<&mut [T]>,
    scratch: &mut LocalScratch,
) -> (f64, bool) {
    let shape = input.shape();
    let (n_cls, c, sp, dims) = (shape.classes(), shape.channels(), shape.spatial(), shape.spatial_dims());
    // Each thread's planes: exactly this shape's (shrinking keeps the capacity).
    let need = (c + 2) * sp + 2 * dims.into_iter().max().unwrap_or(1);
    crate::fit_slots(&mut scratch.slots, |buf| buf.resize(need, 0.0));
    let lines: usize = dims.iter().sum();
    scratch.shared.resize((2 * n_cls + 2) * sp + c + lines, 0.0);
    scratch.classes.resize(n_cls, (0.0, true));
    let LocalScratch { shared, slots, classes } = scratch;
    let (y, rest) = shared.split_at_mut(n_cls * sp);
    let (g, rest) = rest.split_at_mut(n_cls * sp);
    let (stats, rest) = rest.split_at_mut(2 * sp);
    let (centre, cover) = rest.split_at_mut(c);
    // S(t)'s factors, axis by axis (the same for every sample).
    let mut at = 0;
    for n in dims {
        for (i, v) in cover[at..at + n].iter_mut().enumerate() {
            *v = local.gaussian.edge_weight(n, i);
        }
        at += n;
    }
    let cover = &*cover;
    let logits = input.scores().is_logits();
    let (mut total, mut finite) = (0.0, true);
    for b in 0..shape.batch() {
        let scores = &input.scores().data()[b * n_cls * sp..(b + 1) * n_cls * sp];
        let image = &input.image()[b * c * sp..(b + 1) * c * sp];
        let mask = input.mask().map(|m| &m[b * sp..(b + 1) * sp]);
        let m = |s: usize| mask.map_or(1.0, |m| m[s].to_f64_lossless());
        // y: the softmax, the maximum and sum of each pixel first, then class by class.
        let (mx, sum) = stats.split_at_mut(sp);
        if logits {
            mx.par_chunks_mut(CHUNK).zip(sum.par_chunks_mut(CHUNK)).enumerate().for_each(|(i, (mx, sum))| {
                for (j, (mx, sum)) in mx.iter_mut().zip(sum.iter_mut()).enumerate() {
                    let z = |n: usize| scores[n * sp + i * CHUNK + j].to_f64_lossless();
                    *mx = (0..n_cls).map(z).fold(f64::NEG_INFINITY, f64::max);
                    *sum = (0..n_cls).map(|n| (z(n) - *mx).exp()).sum();
                }
            });
        }
        let (mx, sum) = (&*mx, &*sum);
        y.par_chunks_mut(sp).zip(scores.par_chunks(sp)).for_each(|(y, z)| {
            for (s, (y, z)) in y.iter_mut().zip(z).enumerate() {
                let z = z.to_f64_lossless();
                *y = if logits { (z - mx[s]).exp() / sum[s] } else { z };
            }
        });
        // The centre x̄: any constant keeps the result exact; the mean keeps the sums small.
        let valid = (0..sp).map(m).sum::<f64>().max(1.0);
        for (k, v) in centre.iter_mut().enumerate() {
            *v = (0..sp).map(|s| m(s) * image[k * sp + s].to_f64_lossless()).sum::<f64>() / valid;
        }
        let sample = Sample { image, mask, centre, cover, dims, local };
        let y = &*y;
        g.par_chunks_mut(sp).zip(classes.par_iter_mut()).enumerate().for_each(|(n, (g, out))| {
            let mut buf = crate::take(slots);
            let yn = &y[n * sp..(n + 1) * sp];
            let f = local.arch.dispatch(Class { sample: &sample, yn, g, buf: &mut buf[..] });
            *out = (f, true);
        });
        total += classes.iter().map(|(f, _)| f).sum::<f64>();
        let Some(grad) = grad.as_deref_mut() else { continue };
        let grad = &mut grad[b * n_cls * sp..(b + 1) * n_cls * sp];
        // For logits, the softmax's Jacobian: Σ_n y_n·g_n per pixel first.
        let (mean, _) = stats.split_at_mut(sp);
        if logits {
            mean.par_chunks_mut(CHUNK).enumerate().for_each(|(i, mean)| {
                for (j, v) in mean.iter_mut().enumerate() {
                    let s = i * CHUNK + j;
                    *v = (0..n_cls).map(|n| y[n * sp + s] * g[n * sp + s]).sum();
                }
            });
        }
        let (mean, g) = (&*mean, &*g);
        grad.par_chunks_mut(sp).zip(classes.par_iter_mut()).enumerate().for_each(|(n, (out, (_, ok)))| {
            let (y, g) = (&y[n * sp..(n + 1) * sp], &g[n * sp..(n + 1) * sp]);
            for (s, o) in out.iter_mut().enumerate() {
                let v = local.factor * if logits { y[s] * (g[s] - mean[s]) } else { g[s] };
                *o += T::from_f64_lossy(v);
                *ok &= o.is_finite();
            }
        });
        finite &= classes.iter().all(|(_, ok)| *ok);
    }
    (total, finite)
}

/// One class's fidelity as a [`pulp::WithSimd`] operation: monomorphised for each instruction
/// set, so that its loops and [`msloss_core::Gaussian::convolve`]'s are compiled for that set's
/// vectors (a closure passed to `dispatch` stayed a separate function, compiled for the baseline).
struct Class<'a, 'b, T> {
    sample: &'a Sample<'b, T>,
    yn: &'a [f64],
    g: &'a mut [f64],
    buf: &'a mut [f64],
}

impl<T: CpuFloat> pulp::WithSimd for Class<'_, '_, T> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
        self.sample.class(self.yn, self.g, self.buf)
    }
}

/// Pixels per task of the per-pixel sweeps.
const CHUNK: usize = 1 << 14;

/// What every class of one sample shares.
struct Sample<'a, T> {
    image: &'a [T],
    mask: Option<&'a [T]>,
    centre: &'a [f64],
    /// `S(t)`'s factors: each axis's edge weights, one after another.
    cover: &'a [f64],
    dims: [usize; 3],
    local: &'a Local<'a>,
}

impl<T: CpuFloat> Sample<'_, T> {
    /// Class map `yn`'s `F`, and its `∂F/∂y` (before `w·scale`) into `g`.
    #[inline(always)]
    fn class(&self, yn: &[f64], g: &mut [f64], buf: &mut [f64]) -> f64 {
        let (c, sp, dims) = (self.centre.len(), yn.len(), self.dims);
        let (planes, line) = buf.split_at_mut((c + 1) * sp);
        let (a, bk) = planes.split_at_mut(sp);
        let mask = |s: usize| self.mask.map_or(1.0, |m| m[s].to_f64_lossless());
        let xc = |k: usize, s: usize| self.image[k * sp + s].to_f64_lossless() - self.centre[k];
        let [d, h, w] = dims;
        let cover = self.cover;
        let coverage = |s: usize| cover[s / (h * w)] * cover[d + (s / w) % h] * cover[d + h + s % w];
        let (gaussian, eps, centre) = (self.local.gaussian, self.local.eps, self.centre);
        for s in 0..sp {
            a[s] = mask(s) * yn[s];
            for k in 0..c {
                bk[k * sp + s] = a[s] * xc(k, s);
            }
        }
        gaussian.convolve(a, dims, line);
        for k in 0..c {
            gaussian.convolve(&mut bk[k * sp..(k + 1) * sp], dims, line);
        }
        // f', κ, the energy's window part; U over b', W over a.
        let mut total = 0.0;
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
        gaussian.convolve(a, dims, line);
        for k in 0..c {
            gaussian.convolve(&mut bk[k * sp..(k + 1) * sp], dims, line);
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
            g[s] = mask(s) * (cov * xx - xu + a[s]);
        }
        total
    }
}
