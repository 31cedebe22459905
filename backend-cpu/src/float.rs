//! The two float types the kernels run in, behind one sealed trait, and their `exp`.
//!
//! `std`'s `exp` is a call into the maths library, one element at a time. These versions use
//! only products, sums, integer bit operations and selects, so a loop of them becomes SIMD code
//! in every ISA copy: Cody–Waite reduction `x = k·ln 2 + r`, a polynomial for `e^r` in Estrin's
//! scheme, and `2^k` built in the exponent bits. No multiply-add is fused: every ISA, the
//! scalar one included, rounds each operation the same way, so all copies give the same bits.

use msloss_core::{Energy, Error, Input, Outputs, Params, Real};

use crate::{CpuBackend, CpuWorkspace};

/// `f32` or `f64`: the types [`CpuBackend`] computes in (sealed).
pub trait CpuFloat: Real + crate::simd::Wide {
    /// Relative rounding error per operation.
    #[doc(hidden)]
    const EPS: Self;
    /// `e^x` for `x <= 0`, within about 2 ulp, exactly `0` where it underflows.
    #[doc(hidden)]
    fn exp_nonpos(x: Self) -> Self;
    /// [`msloss_core::Backend::evaluate`] in this type, compiled once in this crate.
    #[doc(hidden)]
    fn evaluate(
        cpu: &CpuBackend,
        input: &Input<'_, Self>,
        params: &Params,
        out: Outputs<'_, Self>,
        ws: &mut CpuWorkspace<Self>,
    ) -> Result<Energy<Self>, Error>;
}

/// `CpuFloat::evaluate` for the impl's type: the driver instantiated in this crate.
macro_rules! evaluate_here {
    () => {
        fn evaluate(
            cpu: &CpuBackend,
            input: &Input<'_, Self>,
            params: &Params,
            out: Outputs<'_, Self>,
            ws: &mut CpuWorkspace<Self>,
        ) -> Result<Energy<Self>, Error> {
            crate::evaluate(cpu, input, params, out, ws)
        }
    };
}

impl CpuFloat for f32 {
    const EPS: f32 = f32::EPSILON;

    #[inline(always)]
    fn exp_nonpos(x: f32) -> f32 {
        const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low bits
        const LN2_HI: f32 = 0.693_359_4; // Cephes' split: k·LN2_HI is exact
        const LN2_LO: f32 = -2.121_944_4e-4;
        const UNDERFLOW: f32 = -104.0;
        const SHIFT: i32 = 30; // 2^(k + SHIFT) stays normal for every k >= -150
        const UNSHIFT: f32 = 9.313_226e-10; // 2^-SHIFT
        const C: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
        let xc = if x < UNDERFLOW { UNDERFLOW } else { x };
        let t = xc * core::f32::consts::LOG2_E + ROUND;
        let k = t - ROUND;
        let r = (xc - k * LN2_HI) - k * LN2_LO;
        let r2 = r * r;
        let p = (r2 * r2) * (C[0] * r + C[1]) + (r2 * (C[2] * r + C[3]) + (C[4] * r + C[5]));
        let p = (p * r2 + r) + 1.0;
        let ki = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
        let scale = f32::from_bits((ki.wrapping_add(127 + SHIFT) as u32) << 23);
        let e = (p * scale) * UNSHIFT;
        if x < UNDERFLOW { 0.0 } else { e }
    }

    evaluate_here!();
}

impl CpuFloat for f64 {
    const EPS: f64 = f64::EPSILON;

    #[inline(always)]
    fn exp_nonpos(x: f64) -> f64 {
        const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5·2^52
        const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000); // fdlibm's split
        const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
        const UNDERFLOW: f64 = -745.2;
        const SHIFT: i64 = 60; // 2^(k + SHIFT) stays normal for every k >= -1075
        const UNSHIFT: f64 = 8.673_617_379_884_035e-19;
        // 1/j!, j = 13..=2: truncation error below 2e-17 for |r| <= ln 2 / 2.
        const C: [f64; 12] = [
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
        let xc = if x < UNDERFLOW { UNDERFLOW } else { x };
        let t = xc * core::f64::consts::LOG2_E + ROUND;
        let k = t - ROUND;
        let r = (xc - k * LN2_HI) - k * LN2_LO;
        let (r2, r4) = (r * r, (r * r) * (r * r));
        let r8 = r4 * r4;
        let q0 = r2 * (C[8] * r + C[9]) + (C[10] * r + C[11]);
        let q1 = r2 * (C[4] * r + C[5]) + (C[6] * r + C[7]);
        let q2 = r2 * (C[0] * r + C[1]) + (C[2] * r + C[3]);
        let p = r8 * q2 + (r4 * q1 + q0);
        let p = (p * r + 1.0) * r + 1.0;
        let ki = t.to_bits().wrapping_sub(ROUND.to_bits()) as i64;
        let scale = f64::from_bits((ki.wrapping_add(1023 + SHIFT) as u64) << 52);
        let e = (p * scale) * UNSHIFT;
        if x < UNDERFLOW { 0.0 } else { e }
    }

    evaluate_here!();
}

#[cfg(test)]
mod tests {
    use super::CpuFloat;

    #[test]
    fn f64_exp_matches_std_across_the_range() {
        let (mut worst, mut x) = (0.0f64, 0.0f64);
        while x > -745.0 {
            let (want, got) = (x.exp(), f64::exp_nonpos(x));
            if want > f64::MIN_POSITIVE {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!((got - want).abs() <= 2.0 * 4.9e-324, "x={x} got={got} want={want}");
            }
            x -= 0.013_7;
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        assert_eq!((f64::exp_nonpos(0.0), f64::exp_nonpos(-746.0), f64::exp_nonpos(-1e300)), (1.0, 0.0, 0.0));
    }

    #[test]
    fn f32_exp_matches_std_across_the_range() {
        let (mut worst, mut x) = (0.0f64, 0.0f32);
        while x > -104.0 {
            let (want, got) = (f64::from(x).exp(), f64::from(f32::exp_nonpos(x)));
            if want > f64::from(f32::MIN_POSITIVE) {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!((got - want).abs() <= 2.0 * 1.5e-45, "x={x} got={got} want={want}");
            }
            x -= 0.001_37;
        }
        assert!(worst < 3.0 * f64::from(f32::EPSILON), "worst relative error {worst:e}");
        assert_eq!((f32::exp_nonpos(0.0), f32::exp_nonpos(-105.0)), (1.0, 0.0));
    }
}
