//! A branch-free `exp` for non-positive arguments that the compiler vectorises.
//!
//! `std`'s `f64::exp` is a call into the platform's maths library, one element at a time; the
//! softmax runs it `B·N·D·H·W` times per pass, which would dominate the loss. This version uses
//! only multiplies, adds, integer bit operations and a select, so loops over slices of it become
//! SIMD code. Accuracy: within about 2 ulp of the correctly rounded result on `[-745, 0]`,
//! including the subnormal range, and exactly `0` below it — the same underflow as `f64::exp`.

/// `1.5 · 2^52`: adding it rounds a value of magnitude below `2^51` to an integer, which then
/// sits in the low bits of the sum's representation.
const ROUND: f64 = 6_755_399_441_055_744.0;
/// `ln 2` split so that `k · LN2_HI` is exact for `|k| < 2^11`.
/// (fdlibm's split: the high part has 21 trailing zero bits.)
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// Below this `exp` underflows to zero (the smallest subnormal is `e^-744.44`).
const UNDERFLOW: f64 = -745.2;
/// The exponent offset that keeps the scale `2^(k + BIAS_SHIFT)` normal for every `k >= -1075`.
const BIAS_SHIFT: i64 = 60;
/// `2^-60`, undoing the shift (the product rounds correctly into the subnormal range).
const UNSHIFT: f64 = 8.673_617_379_884_035e-19;

/// Taylor coefficients `1/j!` for `j = 13, 12, ..., 2` (Horner order); `|r| <= ln 2 / 2`
/// leaves a truncation error below `2e-17` relative.
const COEFFS: [f64; 12] = [
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

/// `e^x` for `x <= 0` (finite). Larger `x` would overflow the scale and is not supported.
#[inline(always)]
pub(crate) fn exp_nonpos(x: f64) -> f64 {
    let xc = if x < UNDERFLOW { UNDERFLOW } else { x };
    // k = round(x / ln 2), kept both as a float and in the low bits of `t`.
    let t = xc * core::f64::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let mut p = COEFFS[0];
    for c in &COEFFS[1..] {
        p = p * r + c;
    }
    let p = (p * r + 1.0) * r + 1.0;
    let ki = t.to_bits().wrapping_sub(ROUND.to_bits()) as i64;
    let scale = f64::from_bits(((ki + 1023 + BIAS_SHIFT) as u64) << 52);
    let e = (p * scale) * UNSHIFT;
    if x < UNDERFLOW { 0.0 } else { e }
}

#[cfg(test)]
mod tests {
    use super::exp_nonpos;

    #[test]
    fn matches_std_exp_across_the_range() {
        let mut worst: f64 = 0.0;
        let mut x: f64 = 0.0;
        while x > -745.0 {
            let want = x.exp();
            let got = exp_nonpos(x);
            if want > f64::MIN_POSITIVE {
                worst = worst.max(((got - want) / want).abs());
            } else {
                // Subnormal results: within a couple of units of the last place.
                assert!((got - want).abs() <= 2.0 * 4.9e-324, "x={x} got={got} want={want}");
            }
            x -= 0.013_7;
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(-746.0), 0.0);
        assert_eq!(exp_nonpos(-1e300), 0.0);
    }
}
