//! Loss parameters.

use crate::Error;

/// How the length (boundary) term measures the forward differences `d` of each class map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LengthKind {
    /// Anisotropic total variation `Σ |d|`, the published choice (subgradient 0 at `d = 0`).
    #[default]
    L1,
    /// Squared differences `Σ d²` (smooth, favours blurry boundaries).
    L2,
    /// Isotropic and smooth: `Σ_s (sqrt(Σ_a d_a(s)² + δ²) − δ)`.
    Charbonnier,
}

impl LengthKind {
    /// All kinds, in a fixed order.
    pub const ALL: [LengthKind; 3] = [LengthKind::L1, LengthKind::L2, LengthKind::Charbonnier];

    /// The command-line name (`l1`, `l2`, `charbonnier`).
    pub const fn name(self) -> &'static str {
        match self {
            LengthKind::L1 => "l1",
            LengthKind::L2 => "l2",
            LengthKind::Charbonnier => "charbonnier",
        }
    }
}

/// How the energy is reduced over pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reduction {
    /// The plain sum, as published.
    #[default]
    Sum,
    /// The sum divided by the number of valid pixels `Σ_b Σ_s m_s` (batch- and size-independent scale).
    Mean,
}

impl Reduction {
    /// The command-line name (`sum`, `mean`).
    pub const fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
        }
    }
}

/// What the fidelity term compares each pixel with.
///
/// `Global` is the published loss: one centroid `c_bn` per sample and class. `Local` is Li et
/// al.'s region-scalable fitting ("Minimization of Region-Scalable Fitting Energy for Image
/// Segmentation", IEEE TIP 2008) in the multiphase form of this crate: every pixel `s` gets its
/// own Gaussian-weighted local mean per class,
///
/// ```text
/// a_bn(s)  = Σ_t K(s, t)·m_t·y_bnt
/// f_bnk(s) = Σ_t K(s, t)·m_t·y_bnt·x_bkt / (a_bn(s) + ε_c)
/// F        = Σ_b Σ_n Σ_s Σ_t K(s, t)·m_t·y_bnt·‖x_bt − f_bn(s)‖²      (s over every pixel)
/// ```
///
/// which fits images whose phases drift in intensity (a bias field, uneven illumination).
/// `K(s, t) = Π_a k(s_a − t_a)` over the spatial axes of extent > 1, with the Gaussian taps
/// `k(d) ∝ exp(−d²/(2σ²))` for `|d| ≤ r = ⌈3σ⌉`, normalised to sum to one over `−r..=r`, and
/// 0 beyond (see [`Gaussian`]); pixels outside the image do not exist (no padding).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Fidelity {
    /// One soft class mean per sample and class.
    #[default]
    Global,
    /// Gaussian-weighted local means; `sigma` in pixels, `> 0` and at most the largest spatial
    /// extent of the input (checked with the shape).
    Local {
        /// The Gaussian's standard deviation, in pixels.
        sigma: f64,
    },
}

impl Fidelity {
    /// The command-line name (`global`, `local`).
    pub const fn name(self) -> &'static str {
        match self {
            Fidelity::Global => "global",
            Fidelity::Local { .. } => "local",
        }
    }
}

/// The truncated, normalised 1D Gaussian of [`Fidelity::Local`]: taps `k(0..=radius)`, with
/// `k(−d) = k(d)` and `Σ_{d=−r..=r} k(d) = 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    taps: alloc::vec::Vec<f64>,
}

impl Gaussian {
    /// The taps for `sigma` (finite and `> 0`), out to `⌈3σ⌉`.
    pub fn new(sigma: f64) -> Self {
        let radius = num_traits::Float::ceil(3.0 * sigma) as usize;
        let raw: alloc::vec::Vec<f64> =
            (0..=radius).map(|d| num_traits::Float::exp(-((d * d) as f64) / (2.0 * sigma * sigma))).collect();
        let total = raw[0] + 2.0 * raw[1..].iter().sum::<f64>();
        Self { taps: raw.iter().map(|v| v / total).collect() }
    }
    /// `r = ⌈3σ⌉`: `k(d) = 0` for `|d| > r`.
    pub fn radius(&self) -> usize {
        self.taps.len() - 1
    }
    /// `k(d)` for `d = |s_a − t_a|`.
    #[inline]
    pub fn tap(&self, d: usize) -> f64 {
        self.taps.get(d).copied().unwrap_or(0.0)
    }

    /// `S_a(i) = Σ_j k(|i − j|)` over the `j` of a line of `n` pixels: the weight of `K`'s window
    /// at position `i` that falls inside the image along one axis (1 for an axis of extent 1,
    /// which `K` leaves out). `S(t) = Σ_s K(s, t)` is its product over the axes.
    pub fn edge_weight(&self, n: usize, i: usize) -> f64 {
        if n < 2 {
            return 1.0;
        }
        let r = self.radius();
        (i.saturating_sub(r)..(i + r + 1).min(n)).map(|j| self.tap(i.abs_diff(j))).sum()
    }

    /// `plane` (`[D, H, W]`) convolved in place with `K` along every axis of extent > 1, pixels
    /// outside the image absent (the sums are cut at the edges, not renormalised). `scratch` holds
    /// at least `plane.len()` values and twice the largest extent. Each output is
    /// `Σ_d k(|d|)·v(i + d)`, added tap by tap from `d = −r` up (a fixed order, whatever calls
    /// it): along W line by line, along H and D whole rows (or slices) at a time, so every inner
    /// loop runs over contiguous memory. Always inlined, so that a caller compiled for wider
    /// vectors (the CPU backend's SIMD dispatch) gets them.
    #[inline(always)]
    pub fn convolve(&self, plane: &mut [f64], dims: [usize; 3], scratch: &mut [f64]) {
        let [d, h, w] = dims;
        let r = self.radius() as isize;
        // The outputs `i` of a line of `n` whose input `i + off` is inside it.
        let span = |n: usize, off: isize| ((-off).max(0) as usize, (n as isize - off.max(0)).max(0) as usize);
        if w > 1 {
            let (src, acc) = scratch.split_at_mut(w);
            let acc = &mut acc[..w];
            for row in plane.chunks_exact_mut(w) {
                src.copy_from_slice(row);
                acc.fill(0.0);
                for off in -r..=r {
                    let (lo, hi) = span(w, off);
                    if lo >= hi {
                        continue;
                    }
                    let t = self.tap(off.unsigned_abs());
                    for (a, v) in acc[lo..hi].iter_mut().zip(&src[(lo as isize + off) as usize..]) {
                        *a += t * v;
                    }
                }
                row.copy_from_slice(acc);
            }
        }
        for (n, stride) in [(h, w), (d, h * w)] {
            if n < 2 {
                continue;
            }
            let out = &mut scratch[..plane.len()];
            out.fill(0.0);
            for (block, dst) in plane.chunks_exact(n * stride).zip(out.chunks_exact_mut(n * stride)) {
                for (i, dst) in dst.chunks_exact_mut(stride).enumerate() {
                    for off in -r..=r {
                        let j = i as isize + off;
                        if j < 0 || j >= n as isize {
                            continue;
                        }
                        let t = self.tap(off.unsigned_abs());
                        let src = &block[j as usize * stride..(j as usize + 1) * stride];
                        for (a, v) in dst.iter_mut().zip(src) {
                            *a += t * v;
                        }
                    }
                }
            }
            plane.copy_from_slice(out);
        }
    }
}

/// The loss parameters. Values are `f64` whatever the compute type; backends convert them.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `lambda` | `1e-3` | weight λ of the length term (the published experiments' order of magnitude) |
/// | `fidelity_weight` | `1` | weight `w` of the fidelity term |
/// | `length` | [`LengthKind::L1`] | how boundaries are measured |
/// | `delta` | `1e-2` | Charbonnier's δ (1e-15 to 1e15); smaller is closer to isotropic TV but stiffer |
/// | `centroid_eps` | `1e-8` | ε_c in the centroid denominator (1e-30 to 1e15): keeps an empty class finite |
/// | `reduction` | [`Reduction::Sum`] | sum (published) or mean over valid pixels |
/// | `fidelity` | [`Fidelity::Global`] | global class means (published) or local, Gaussian-weighted ones |
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Weight λ of the length term (`0 ..= 1e30`).
    pub lambda: f64,
    /// Weight `w` of the fidelity term (`0 ..= 1e30`).
    pub fidelity_weight: f64,
    /// The length kind.
    pub length: LengthKind,
    /// Charbonnier's δ (`1e-15 ..= 1e15`; used only by [`LengthKind::Charbonnier`]).
    pub delta: f64,
    /// ε_c of the centroid denominator (`1e-30 ..= 1e15`).
    pub centroid_eps: f64,
    /// The reduction.
    pub reduction: Reduction,
    /// The fidelity kind.
    pub fidelity: Fidelity,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            lambda: 1e-3,
            fidelity_weight: 1.0,
            length: LengthKind::L1,
            delta: 1e-2,
            centroid_eps: 1e-8,
            reduction: Reduction::Sum,
            fidelity: Fidelity::Global,
        }
    }
}

impl Params {
    /// Checks every field's range. The ranges keep every parameter, and δ², a normal `f32`, so
    /// that every backend computes with the same parameters in either type and all of them accept
    /// or refuse the same ones (a δ of 1e308 overflowed δ² in `f64` but became `inf`, and a length
    /// of 0, in `f32`; one of 1e-300 became 0 in `f32`).
    ///
    /// # Errors
    /// [`Error::BadParam`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let check = |name, (lo, hi): (f64, f64), expected, value: f64| {
            if (lo..=hi).contains(&value) { Ok(()) } else { Err(Error::BadParam { name, expected, value }) }
        };
        check("lambda", (0.0, 1e30), "finite, >= 0 and <= 1e30", self.lambda)?;
        check("fidelity_weight", (0.0, 1e30), "finite, >= 0 and <= 1e30", self.fidelity_weight)?;
        check("delta", (1e-15, 1e15), "between 1e-15 and 1e15", self.delta)?;
        check("centroid_eps", (1e-30, 1e15), "between 1e-30 and 1e15", self.centroid_eps)?;
        if let Fidelity::Local { sigma } = self.fidelity {
            check("sigma", (f64::MIN_POSITIVE, 1e6), "finite, > 0 and <= 1e6", sigma)?;
        }
        Ok(())
    }

    /// [`Params::validate`], and what depends on the shape: a local fidelity's σ at most the
    /// largest spatial extent (a wider Gaussian is the global fidelity at a higher price).
    ///
    /// # Errors
    /// As [`Params::validate`]; [`Error::BadParam`] for σ beyond the largest extent.
    pub fn validate_for(&self, shape: crate::Shape) -> Result<(), Error> {
        self.validate()?;
        if let Fidelity::Local { sigma } = self.fidelity {
            let extent = shape.spatial_dims().into_iter().max().unwrap_or(1);
            if sigma > extent as f64 {
                return Err(Error::BadParam {
                    name: "sigma",
                    expected: "at most the largest spatial extent of the input",
                    value: sigma,
                });
            }
        }
        Ok(())
    }

    /// The energy's two parts `(w·F·scale, λ·L·scale)` from the raw sums `F` and `L`. A zero
    /// weight switches its term off: a sum that overflowed the backend's type (∞) then gives 0,
    /// not `0·∞ = NaN`, as it does in exact arithmetic.
    pub fn weigh(&self, fidelity_sum: f64, length_sum: f64, scale: f64) -> (f64, f64) {
        let term = |w: f64, sum: f64| if w == 0.0 { 0.0 } else { w * sum * scale };
        (term(self.fidelity_weight, fidelity_sum), term(self.lambda, length_sum))
    }

    /// With another λ.
    pub fn with_lambda(mut self, lambda: f64) -> Self {
        self.lambda = lambda;
        self
    }
    /// With another length kind.
    pub fn with_length(mut self, length: LengthKind) -> Self {
        self.length = length;
        self
    }
    /// With another reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
    /// With another fidelity kind.
    pub fn with_fidelity(mut self, fidelity: Fidelity) -> Self {
        self.fidelity = fidelity;
        self
    }
}
