//! A branch-free `exp` for non-positive arguments that the compiler vectorises.
//!
//! `std`'s `exp` is a call into the platform's maths library, one element at a time; the
//! softmax runs it `B·N·D·H·W` times per pass, which would dominate the loss. These versions
//! use only multiplies, adds, integer bit operations and selects, so loops over slices of them
//! become SIMD code: Cody–Waite reduction `x = k·ln 2 + r`, a polynomial for `e^r`, and `2^k`
//! built in the exponent bits. Accuracy: a couple of ulp of the correctly rounded result on the
//! whole range, subnormal results included, and exactly `0` where `exp` underflows.
//!
//! The polynomials are evaluated in Estrin's scheme (independent pairs, then powers of `r²`)
//! rather than Horner's: a dependency chain of 4 (`f32`) or 5 (`f64`) operations instead of 6
//! or 12, so that more of a loop's iterations fit in flight. With `FMA` every product that is
//! added is fused ([`madd`]); the kernels are compiled with it where the CPU has the instruction.

use core::any::TypeId;

use msloss_core::Real;

/// `a·b + c`: one fused multiply-add (one rounding) with `FMA`, else a product then a sum.
/// Only kernels compiled for a target with the instruction pass `FMA = true`; elsewhere
/// `mul_add` would be a call into the maths library.
#[inline(always)]
pub(crate) fn madd<F: Real, const FMA: bool>(a: F, b: F, c: F) -> F {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x` for `x <= 0` (finite) in `T`: the `f32` algorithm for `f32`, the `f64` one otherwise
/// (the type test is resolved at compile time).
#[inline(always)]
pub(crate) fn exp_nonpos<T: Real, const FMA: bool>(x: T) -> T {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // Both conversions are exact for f32 and vanish in the generated code.
        T::from_f64_lossy(f64::from(exp_nonpos_f32::<FMA>(x.to_f64_lossless() as f32)))
    } else {
        T::from_f64_lossy(exp_nonpos_f64::<FMA>(x.to_f64_lossless()))
    }
}

/// The constants of [`exp_nonpos_f64`] (shared with the AVX-512 copy of it in the chunked pass 1).
pub(crate) mod f64_consts {
    /// `1.5 · 2^52`: adding it rounds to an integer held in the low bits of the sum.
    pub(crate) const ROUND: f64 = 6_755_399_441_055_744.0;
    /// `ln 2` split so that `k · LN2_HI` is exact (fdlibm's split).
    pub(crate) const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    pub(crate) const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    /// Below this `exp` rounds to zero.
    pub(crate) const UNDERFLOW: f64 = -745.2;
    /// `2^(k + SHIFT)` stays normal for every `k >= -1075`; `UNSHIFT = 2^-SHIFT` undoes it
    /// with one correctly rounded product.
    pub(crate) const SHIFT: i64 = 60;
    pub(crate) const UNSHIFT: f64 = 8.673_617_379_884_035e-19;
    /// `1/j!`, `j = 13..=2`: truncation error below `2e-17` for `|r| <= ln 2 / 2`.
    pub(crate) const COEFFS: [f64; 12] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
}

/// `e^x` for `x <= 0` in `f64`, within about 2 ulp.
#[inline(always)]
pub(crate) fn exp_nonpos_f64<const FMA: bool>(x: f64) -> f64 {
    use f64_consts::*;
    let xc = if x < UNDERFLOW { UNDERFLOW } else { x };
    let fma = madd::<f64, FMA>;
    let t = fma(xc, core::f64::consts::LOG2_E, ROUND);
    let k = t - ROUND;
    let r = fma(-k, LN2_LO, fma(-k, LN2_HI, xc));
    // p = Σ_j COEFFS[j]·r^(11 − j) in Estrin's scheme: pairs, then pairs of pairs in r², …
    let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11] = COEFFS;
    let (r2, r4) = (r * r, r * r * (r * r));
    let r8 = r4 * r4;
    let q0 = fma(r2, fma(c8, r, c9), fma(c10, r, c11));
    let q1 = fma(r2, fma(c4, r, c5), fma(c6, r, c7));
    let q2 = fma(r2, fma(c0, r, c1), fma(c2, r, c3));
    let p = fma(r8, q2, fma(r4, q1, q0));
    let p = fma(fma(p, r, 1.0), r, 1.0);
    let ki = t.to_bits().wrapping_sub(ROUND.to_bits()) as i64;
    let scale = f64::from_bits(((ki + 1023 + SHIFT) as u64) << 52);
    let e = (p * scale) * UNSHIFT;
    if x < UNDERFLOW { 0.0 } else { e }
}

/// The constants of [`exp_nonpos_f32`] (shared with the AVX-512 copy of it in the chunked pass 1).
pub(crate) mod f32_consts {
    /// `1.5 · 2^23`: adding it rounds to an integer held in the low bits of the sum.
    pub(crate) const ROUND: f32 = 12_582_912.0;
    /// `ln 2` split so that `k · LN2_HI` is exact (Cephes' split).
    pub(crate) const LN2_HI: f32 = 0.693_359_4;
    pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
    /// Below this `exp` rounds to zero.
    pub(crate) const UNDERFLOW: f32 = -104.0;
    /// `2^(k + SHIFT)` stays normal for every `k >= -150`; `UNSHIFT = 2^-SHIFT` undoes it.
    pub(crate) const SHIFT: i32 = 30;
    pub(crate) const UNSHIFT: f32 = 9.313_226e-10;
    pub(crate) const COEFFS: [f32; 6] =
        [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
}

/// `e^x` for `x <= 0` in `f32`, within about 2 ulp (Cephes' `expf` polynomial).
#[inline(always)]
pub(crate) fn exp_nonpos_f32<const FMA: bool>(x: f32) -> f32 {
    use f32_consts::*;
    let xc = if x < UNDERFLOW { UNDERFLOW } else { x };
    let fma = madd::<f32, FMA>;
    let t = fma(xc, core::f32::consts::LOG2_E, ROUND);
    let k = t - ROUND;
    let r = fma(-k, LN2_LO, fma(-k, LN2_HI, xc));
    // p = Σ_j COEFFS[j]·r^(5 − j) in Estrin's scheme.
    let [c0, c1, c2, c3, c4, c5] = COEFFS;
    let r2 = r * r;
    let p = fma(r2 * r2, fma(c0, r, c1), fma(r2, fma(c2, r, c3), fma(c4, r, c5)));
    let p = fma(p, r2, r) + 1.0;
    let ki = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits(((ki + 127 + SHIFT) as u32) << 23);
    let e = (p * scale) * UNSHIFT;
    if x < UNDERFLOW { 0.0 } else { e }
}

#[cfg(test)]
mod tests {
    use super::{exp_nonpos, exp_nonpos_f32, exp_nonpos_f64};

    fn f64_across_the_range<const FMA: bool>() {
        let mut worst: f64 = 0.0;
        let mut x: f64 = 0.0;
        while x > -745.0 {
            let (want, got) = (x.exp(), exp_nonpos_f64::<FMA>(x));
            if want > f64::MIN_POSITIVE {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!((got - want).abs() <= 2.0 * 4.9e-324, "x={x} got={got} want={want}");
            }
            x -= 0.013_7;
        }
        assert!(worst < 1e-15, "worst relative error {worst:e} (FMA {FMA})");
        assert_eq!(exp_nonpos_f64::<FMA>(0.0), 1.0);
        assert_eq!(exp_nonpos_f64::<FMA>(-746.0), 0.0);
        assert_eq!(exp_nonpos_f64::<FMA>(-1e300), 0.0);
    }

    fn f32_across_the_range<const FMA: bool>() {
        let mut worst: f64 = 0.0;
        let mut x: f32 = 0.0;
        while x > -104.0 {
            let (want, got) = (f64::from(x).exp(), f64::from(exp_nonpos_f32::<FMA>(x)));
            if want > f64::from(f32::MIN_POSITIVE) {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!((got - want).abs() <= 2.0 * 1.5e-45, "x={x} got={got} want={want}");
            }
            x -= 0.001_37;
        }
        assert!(worst < 3.0 * f64::from(f32::EPSILON), "worst relative error {worst:e} (FMA {FMA})");
        assert_eq!(exp_nonpos_f32::<FMA>(0.0), 1.0);
        assert_eq!(exp_nonpos_f32::<FMA>(-105.0), 0.0);
        assert_eq!(exp_nonpos::<f32, FMA>(-1.0), exp_nonpos_f32::<FMA>(-1.0));
        assert_eq!(exp_nonpos::<f64, FMA>(-1.0), exp_nonpos_f64::<FMA>(-1.0));
    }

    #[test]
    fn f64_matches_std_across_the_range() {
        f64_across_the_range::<false>();
        f64_across_the_range::<true>();
    }

    #[test]
    fn f32_matches_std_across_the_range() {
        f32_across_the_range::<false>();
        f32_across_the_range::<true>();
    }
}
