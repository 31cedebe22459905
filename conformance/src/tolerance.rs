//! How close a subject's results must be to the reference's.

use msloss_core::{Energy, Real};

/// How close two results must be: `|got − want| <= relative·scale + absolute`.
///
/// The scale of an energy is `|fidelity| + |length|` of the reference (so a part that is small
/// next to the other is not held to a bar finer than the total's rounding); the scale of a
/// slice (gradient, centroids) is the largest `|want|` in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// The bar relative to the scale.
    pub relative: f64,
    /// The absolute floor (keeps all-zero results comparable).
    pub absolute: f64,
}

impl Tolerance {
    /// For `f64` computations (both sides compute in `f64`; only summation order differs).
    pub const F64: Tolerance = Tolerance { relative: 1e-10, absolute: 1e-300 };
    /// For `f32` inputs and outputs (the accuracy target). The GPU backend is held to it
    /// too.
    pub const F32: Tolerance = Tolerance { relative: 1e-5, absolute: 1e-30 };

    /// The tolerance of computations in `T`: [`Tolerance::F32`] for `f32`, else
    /// [`Tolerance::F64`].
    pub fn of<T: Real>() -> Self {
        if T::NAME == "f32" { Self::F32 } else { Self::F64 }
    }

    /// The same tolerance with another relative bar.
    pub const fn with_relative(self, relative: f64) -> Self {
        Self { relative, ..self }
    }

    /// Asserts that `got` is within tolerance of `want` elementwise, relative to the largest
    /// magnitude of `want`; a failure names `case`, `what`, the worst element, its values and
    /// how many elements are out.
    ///
    /// # Panics
    /// When the lengths differ or an element is out of tolerance (NaN included).
    pub fn slices<T: Real>(&self, what: &str, case: &str, got: &[T], want: &[T]) {
        assert_eq!(got.len(), want.len(), "{case}: {what} lengths");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.to_f64_lossless().abs()));
        let bound = self.relative * scale + self.absolute;
        let mut worst: Option<(usize, f64)> = None;
        let mut out = 0usize;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let diff = (g.to_f64_lossless() - w.to_f64_lossless()).abs();
            if diff.is_nan() || diff > bound {
                out += 1;
                if worst.is_none_or(|(_, d)| diff.is_nan() || diff > d) {
                    worst = Some((i, diff));
                }
            }
        }
        if let Some((i, diff)) = worst {
            panic!(
                "{case}: {what}[{i}] got {:e}, want {:e}, diff {diff:e} > {bound:e} (scale {scale:e}); \
                 {out} of {} elements out of tolerance",
                got[i].to_f64_lossless(),
                want[i].to_f64_lossless(),
                got.len()
            );
        }
    }

    /// Asserts that the three parts of an energy are within tolerance, relative to
    /// `|fidelity| + |length|` of `want`.
    ///
    /// # Panics
    /// When a part is out of tolerance.
    pub fn energy<T: Real>(&self, case: &str, got: Energy<T>, want: Energy<T>) {
        for (what, g, w) in [
            ("fidelity", got.fidelity, want.fidelity),
            ("length", got.length, want.length),
            ("total", got.total, want.total),
        ] {
            self.energy_part(case, what, g, want, w);
        }
    }

    /// Asserts that a total energy is within tolerance of `want.total`, relative to
    /// `|fidelity| + |length|` of `want` (for subjects that report the total alone).
    ///
    /// # Panics
    /// When it is out of tolerance.
    pub fn total<T: Real>(&self, case: &str, got: T, want: Energy<T>) {
        self.energy_part(case, "total", got, want, want.total);
    }

    fn energy_part<T: Real>(&self, case: &str, what: &str, got: T, want: Energy<T>, want_part: T) {
        let scale = want.fidelity.to_f64_lossless().abs() + want.length.to_f64_lossless().abs();
        let bound = self.relative * scale + self.absolute;
        let (g, w) = (got.to_f64_lossless(), want_part.to_f64_lossless());
        let diff = (g - w).abs();
        assert!(diff <= bound, "{case}: {what} got {g:e}, want {w:e}, diff {diff:e} > {bound:e} (scale {scale:e})");
    }
}
