//! The reference backend: plain, readable, slow on purpose. It is the oracle.

use alloc::vec::Vec;
use num_traits::Float;

use crate::{
    Backend, Energy, Error, Fidelity, Gaussian, Input, LengthKind, Outputs, Params, Real, Reduction, check_request,
};

/// The reference implementation of the loss: every quantity computed in `f64` exactly as the
/// definition reads (see the crate docs), one sample at a time, no fusion, no threads.
///
/// Every fast path is tested against it on seeded inputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference;

impl Reference {
    /// A fresh workspace (the same as [`Backend::workspace`], without naming the float type).
    pub fn workspace(&self) -> ReferenceWorkspace {
        ReferenceWorkspace::default()
    }
}

/// Scratch of the [`Reference`] backend: one sample's probabilities and gradient in `f64`.
#[derive(Debug, Default, Clone)]
pub struct ReferenceWorkspace {
    y: Vec<f64>,
    g: Vec<f64>,
}

impl<T: Real> Backend<T> for Reference {
    type Workspace = ReferenceWorkspace;
    type Error = Error;

    fn name(&self) -> &'static str {
        "reference"
    }

    fn workspace(&self) -> ReferenceWorkspace {
        ReferenceWorkspace::default()
    }

    fn evaluate(
        &self,
        input: &Input<'_, T>,
        params: &Params,
        mut out: Outputs<'_, T>,
        ws: &mut ReferenceWorkspace,
    ) -> Result<Energy<T>, Error> {
        let valid = check_request(input, params, &out)?;
        let shape = input.shape();
        let (n_cls, n_ch, sp) = (shape.classes(), shape.channels(), shape.spatial());
        let eps = params.centroid_eps;
        let mut fid_total = Sum::default();
        let mut len_total = Sum::default();
        // Divisor of the reduction.
        let scale = match params.reduction {
            Reduction::Sum => 1.0,
            Reduction::Mean => 1.0 / valid as f64,
        };
        let want_grad = out.grad.is_some();
        let gaussian = match params.fidelity {
            Fidelity::Global => None,
            Fidelity::Local { sigma } => Some(Gaussian::new(sigma)),
        };

        for b in 0..shape.batch() {
            let scores = &input.scores().data()[b * n_cls * sp..(b + 1) * n_cls * sp];
            let image = &input.image()[b * n_ch * sp..(b + 1) * n_ch * sp];
            let mask = |s: usize| -> f64 { input.mask().map_or(1.0, |m| m[b * sp + s].to_f64_lossless()) };
            let x = |k: usize, s: usize| image[k * sp + s].to_f64_lossless();

            // y: probabilities of this sample, [N, S].
            ws.y.clear();
            ws.y.extend(scores.iter().map(|v| v.to_f64_lossless()));
            if input.scores().is_logits() {
                softmax_in_place(&mut ws.y, n_cls, sp);
            }
            let y = &ws.y;
            ws.g.clear();
            ws.g.resize(n_cls * sp, 0.0);
            let g = &mut ws.g;

            for n in 0..n_cls {
                let yn = &y[n * sp..(n + 1) * sp];
                // A_n and the centroid c_n.
                let area = Sum::of((0..sp).map(|s| mask(s) * yn[s]));
                let mut c = Vec::with_capacity(n_ch);
                for k in 0..n_ch {
                    let moment = Sum::of((0..sp).map(|s| mask(s) * yn[s] * x(k, s)));
                    c.push(moment / (area + eps));
                }
                if let Some(cs) = out.centroids.as_deref_mut() {
                    for (k, ck) in c.iter().enumerate() {
                        cs[(b * n_cls + n) * n_ch + k] = T::from_f64_lossy(*ck);
                    }
                }
                // Fidelity and its gradient: against the centroid, or against local means.
                if let Some(gaussian) = &gaussian {
                    let fid = Local { dims: shape.spatial_dims(), gaussian, eps, weight: params.fidelity_weight };
                    fid_total.add(fid.term(yn, &x, n_ch, &mask, want_grad.then(|| &mut g[n * sp..(n + 1) * sp])));
                } else {
                    let corr = 2.0 * eps / (area + eps);
                    for s in 0..sp {
                        let dist2: f64 = (0..n_ch)
                            .map(|k| {
                                let d = x(k, s) - c[k];
                                d * d
                            })
                            .sum();
                        fid_total.add(mask(s) * yn[s] * dist2);
                        if want_grad {
                            let dot: f64 = (0..n_ch).map(|k| c[k] * (x(k, s) - c[k])).sum();
                            g[n * sp + s] += params.fidelity_weight * mask(s) * (dist2 - corr * dot);
                        }
                    }
                }
                // Length and its gradient.
                len_total.add(length_term(params, shape.spatial_dims(), yn, &mask, &mut g[n * sp..(n + 1) * sp]));
            }

            if let Some(grad) = out.grad.as_deref_mut() {
                let grad = &mut grad[b * n_cls * sp..(b + 1) * n_cls * sp];
                if input.scores().is_logits() {
                    // ∂E/∂z_n = y_n (g_n − Σ_m y_m g_m), per pixel.
                    for s in 0..sp {
                        let mean: f64 = (0..n_cls).map(|m| y[m * sp + s] * g[m * sp + s]).sum();
                        for n in 0..n_cls {
                            grad[n * sp + s] = T::from_f64_lossy(scale * y[n * sp + s] * (g[n * sp + s] - mean));
                        }
                    }
                } else {
                    for (o, gi) in grad.iter_mut().zip(g.iter()) {
                        *o = T::from_f64_lossy(scale * gi);
                    }
                }
            }
        }
        let (fidelity, length) = params.weigh(fid_total.value(), len_total.value(), scale);
        // Each reported number is the f64 value rounded once to T.
        let e = Energy {
            fidelity: T::from_f64_lossy(fidelity),
            length: T::from_f64_lossy(length),
            total: T::from_f64_lossy(fidelity + length),
        };
        if !e.total.is_finite() {
            return Err(Error::NonFiniteResult { what: "energy", value: e.total.to_f64_lossless() });
        }
        if let Some(v) = out.grad.as_deref().and_then(|g| g.iter().find(|v| !v.is_finite())) {
            return Err(Error::NonFiniteResult { what: "gradient", value: v.to_f64_lossless() });
        }
        Ok(e)
    }
}

/// The local fidelity of one class map ([`Fidelity::Local`]), summed literally: for every pixel
/// `s`, its window's `a(s)` and local mean `f(s)`, then `Σ_t K(s, t)·m_t·y_t·‖x_t − f(s)‖²` over
/// the window. Its gradient, added into `g` as `w·∂F/∂y_t`, is the same double sum of
///
/// ```text
/// ∂F/∂y_t = m_t·Σ_s K(s, t)·( ‖x_t − f(s)‖² − 2·ε_c/(a(s) + ε_c)·⟨f(s), x_t − f(s)⟩ )
/// ```
///
/// (the second term is what `ε_c` leaves of `∂f(s)/∂y_t`, as for the global centroid).
struct Local<'a> {
    dims: [usize; 3],
    gaussian: &'a Gaussian,
    eps: f64,
    weight: f64,
}

impl Local<'_> {
    /// The pixels of `s`'s window and their weights `K(s, t)`: along each axis of extent > 1,
    /// the taps out to the radius, cut at the image's edges.
    fn window(&self, s: usize, mut visit: impl FnMut(usize, f64)) {
        let [_, h, w] = self.dims;
        let at = [s / (h * w), (s / w) % h, s % w];
        let r = self.gaussian.radius();
        let span = |a: usize| {
            let n = self.dims[a];
            if n > 1 { at[a].saturating_sub(r)..(at[a] + r + 1).min(n) } else { at[a]..at[a] + 1 }
        };
        let tap = |a: usize, i: usize| if self.dims[a] > 1 { self.gaussian.tap(i.abs_diff(at[a])) } else { 1.0 };
        for i in span(0) {
            for j in span(1) {
                for k in span(2) {
                    visit((i * h + j) * w + k, tap(0, i) * tap(1, j) * tap(2, k));
                }
            }
        }
    }

    /// `F` of class map `yn`, and `w·∂F/∂y` added into `g` where given.
    fn term(
        &self,
        yn: &[f64],
        x: &dyn Fn(usize, usize) -> f64,
        n_ch: usize,
        mask: &dyn Fn(usize) -> f64,
        mut g: Option<&mut [f64]>,
    ) -> f64 {
        let mut total = Sum::default();
        let mut f = Vec::with_capacity(n_ch);
        for s in 0..yn.len() {
            let mut area = Sum::default();
            let mut moments = alloc::vec![Sum::default(); n_ch];
            self.window(s, |t, k| {
                let wy = k * mask(t) * yn[t];
                area.add(wy);
                for (c, m) in moments.iter_mut().enumerate() {
                    m.add(wy * x(c, t));
                }
            });
            let area = area.value();
            f.clear();
            f.extend(moments.iter().map(|m| m.value() / (area + self.eps)));
            let corr = 2.0 * self.eps / (area + self.eps);
            self.window(s, |t, k| {
                let dist2: f64 = (0..n_ch).map(|c| (x(c, t) - f[c]) * (x(c, t) - f[c])).sum();
                total.add(k * mask(t) * yn[t] * dist2);
                if let Some(g) = g.as_deref_mut() {
                    let dot: f64 = (0..n_ch).map(|c| f[c] * (x(c, t) - f[c])).sum();
                    g[t] += self.weight * k * mask(t) * (dist2 - corr * dot);
                }
            });
        }
        total.value()
    }
}

/// Softmax over the class axis of `[N, S]` data, in place, pixel by pixel as [`Softmax`].
pub(crate) fn softmax_in_place(y: &mut [f64], n_cls: usize, sp: usize) {
    for s in 0..sp {
        let stats = Softmax::new(|m| y[m * sp + s], n_cls);
        for n in 0..n_cls {
            y[n * sp + s] = stats.probability(y[n * sp + s]);
        }
    }
}

/// The reference's softmax at one pixel: the maximum of its logits and `Σ_m e^(z_m − max)`,
/// summed in class order, in `f64`. Fast backends that compute the softmax otherwise use it
/// where a result's sign depends on the last bits (an L1 difference within their rounding of
/// zero), keeping a pixel's `Softmax` for every class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Softmax {
    max: f64,
    sum: f64,
}

impl Softmax {
    /// A placeholder for a pixel not yet seen.
    pub const EMPTY: Self = Self { max: f64::NEG_INFINITY, sum: 0.0 };

    /// The statistics of the pixel whose logits of classes `0..n_cls` are `z(m)`.
    pub fn new(z: impl Fn(usize) -> f64, n_cls: usize) -> Self {
        let max = (0..n_cls).map(&z).fold(f64::NEG_INFINITY, f64::max);
        let sum = (0..n_cls).map(|m| Float::exp(z(m) - max)).sum();
        Self { max, sum }
    }

    /// The probability of the class whose logit is `zn`: `e^(z_n − max) / Σ`.
    pub fn probability(&self, zn: f64) -> f64 {
        Float::exp(zn - self.max) / self.sum
    }
}

/// `Len` of one class map `yn` (`[D, H, W]` flattened), and `λ·∂Len/∂y` added into `g`.
fn length_term(params: &Params, dims: [usize; 3], yn: &[f64], mask: &dyn Fn(usize) -> f64, g: &mut [f64]) -> f64 {
    let strides = [dims[1] * dims[2], dims[2], 1];
    let sp = yn.len();
    let lambda = params.lambda;
    let delta = params.delta;
    let mut total = Sum::default();
    for s in 0..sp {
        let coord = [s / strides[0], (s / strides[1]) % dims[1], s % dims[2]];
        // Forward differences d_a(s) along each axis; None where the pair is missing or invalid.
        let mut d = [None::<(usize, f64)>; 3];
        for a in 0..3 {
            if dims[a] > 1 && coord[a] + 1 < dims[a] {
                let t = s + strides[a];
                if mask(s) == 1.0 && mask(t) == 1.0 {
                    d[a] = Some((t, yn[t] - yn[s]));
                }
            }
        }
        match params.length {
            LengthKind::L1 | LengthKind::L2 => {
                for (t, di) in d.iter().flatten() {
                    let (v, dv) = if params.length == LengthKind::L1 {
                        (Float::abs(*di), sign0(*di))
                    } else {
                        (di * di, 2.0 * di)
                    };
                    total.add(v);
                    g[*t] += lambda * dv;
                    g[s] -= lambda * dv;
                }
            }
            LengthKind::Charbonnier => {
                let sq: f64 = d.iter().flatten().map(|(_, di)| di * di).sum();
                let r = Float::sqrt(sq + delta * delta);
                // √(sq + δ²) − δ, written so that it keeps its digits where sq ≪ δ² (the difference
                // itself cancels to 0 there).
                total.add(sq / (r + delta));
                for (t, di) in d.iter().flatten() {
                    g[*t] += lambda * di / r;
                    g[s] -= lambda * di / r;
                }
            }
        }
    }
    total.value()
}

/// `sign(v)` with `sign(0) = 0` (PyTorch's subgradient of `|v|` at 0).
fn sign0(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Neumaier's compensated sum: the reference's totals carry an error of a few ulps of the
/// result whatever the tensor size, so finite differences of the energy stay meaningful.
#[derive(Debug, Clone, Copy, Default)]
struct Sum {
    sum: f64,
    comp: f64,
}

impl Sum {
    fn of(values: impl Iterator<Item = f64>) -> f64 {
        let mut s = Sum::default();
        values.for_each(|v| s.add(v));
        s.value()
    }
    fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if Float::abs(self.sum) >= Float::abs(v) {
            self.comp += (self.sum - t) + v;
        } else {
            self.comp += (v - t) + self.sum;
        }
        self.sum = t;
    }
    fn value(&self) -> f64 {
        self.sum + self.comp
    }
}
