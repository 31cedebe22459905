//! The AVX-512 operations of the chunked kernels, for `f32` (16 lanes a register) and `f64`
//! (8): the kernels are written once over [`Simd`].
//!
//! Masks are `u32` here, lane `l` in bit `l`, narrowed to the instructions' 16- or 8-bit masks
//! where they are used. Every method is `unsafe`: the CPU must have AVX-512 F, VL, DQ and BW
//! (the caller's kernel is compiled with them), and the pointer methods read or write the lanes
//! their masks name.

use core::arch::x86_64::*;

use msloss_core::Real;

use crate::kernel::fold;

/// A float type's AVX-512 register and the operations the chunked kernels use on it.
pub(crate) trait Simd: Real {
    /// One register of the type.
    type V: Copy;
    /// Lanes per register.
    const LANES: usize;
    /// The mask of every lane.
    const FULL: u32;

    unsafe fn zeros() -> Self::V;
    unsafe fn splat(x: Self) -> Self::V;
    unsafe fn vadd(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn vsub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn vmul(a: Self::V, b: Self::V) -> Self::V;
    /// `a·b + c`, one rounding.
    unsafe fn vfmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a·b − c`, one rounding.
    unsafe fn vfmsub(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a / b`, correctly rounded.
    unsafe fn vdiv(a: Self::V, b: Self::V) -> Self::V;
    /// The larger of `a` and `b`, lane by lane; `b` where either is NaN (`maxps`).
    unsafe fn vmax(a: Self::V, b: Self::V) -> Self::V;
    /// The smaller of `a` and `b`, lane by lane; `b` where either is NaN (`minps`).
    unsafe fn vmin(a: Self::V, b: Self::V) -> Self::V;
    /// `e^x` lane by lane for `x <= 0`: the crate's scalar `exp_nonpos_f32::<true>` or
    /// `exp_nonpos_f64::<true>` operation for operation, so bitwise the same (a test checks it).
    unsafe fn vexp_nonpos(x: Self::V) -> Self::V;
    unsafe fn vabs(a: Self::V) -> Self::V;
    /// `lam` with the sign of `d`, lane by lane.
    unsafe fn with_sign_of(lam: Self, d: Self::V) -> Self::V;
    /// The lanes of `m` of `v`, zeros elsewhere.
    unsafe fn keep(m: u32, v: Self::V) -> Self::V;
    /// Lanes where `a != b`, both ordered.
    unsafe fn ne_ordered(a: Self::V, b: Self::V) -> u32;
    /// Lanes where `a >= b`, both ordered.
    unsafe fn ge_ordered(a: Self::V, b: Self::V) -> u32;
    /// Lanes where `a != b` or either is NaN.
    unsafe fn ne_unordered(a: Self::V, b: Self::V) -> u32;
    /// A full register from `at`.
    unsafe fn loadu(at: *const Self) -> Self::V;
    /// A full register to `at`.
    unsafe fn storeu(at: *mut Self, v: Self::V);
    /// The lanes of `m` from `at`, zeros elsewhere.
    unsafe fn ld(at: *const Self, m: u32) -> Self::V;
    /// The lanes of `m` of `v` to `at`.
    unsafe fn st(at: *mut Self, m: u32, v: Self::V);
    /// A full register to `at` (64-byte aligned) with a non-temporal store.
    unsafe fn stream(at: *mut Self, v: Self::V);
    /// The lanes of `m` of `v` to `at`: non-temporally where `stream` and `m` is full (then
    /// `at` must be 64-byte aligned), else as [`Simd::st`].
    #[inline(always)]
    unsafe fn put(at: *mut Self, m: u32, v: Self::V, stream: bool) {
        // SAFETY: by the caller's contract.
        unsafe {
            if stream && m == Self::FULL {
                Self::stream(at, v);
            } else {
                Self::st(at, m, v);
            }
        }
    }
    /// `[before, v_0, …, v_{LANES−2}]`: the lanes moved up by one, `before` in lane 0.
    unsafe fn shift_in(v: Self::V, before: Self) -> Self::V;
    /// The last lane.
    unsafe fn last(v: Self::V) -> Self;
    /// The lanes added in `f64` in the parent's pairwise order. The result does not depend on
    /// where the lanes start: lanes rotated by any number give the same bits (each step adds
    /// lanes `l` and `l + half` of the previous, a set of pairs that rotation keeps).
    unsafe fn fold(v: Self::V) -> f64;
}

/// Lanes `0..len` set (all of a 16-lane register from 16 on).
#[inline(always)]
pub(crate) fn lanes(len: usize) -> u32 {
    if len >= 16 { 0xffff } else { (1u32 << len) - 1 }
}

impl Simd for f32 {
    type V = __m512;
    const LANES: usize = 16;
    const FULL: u32 = 0xffff;

    #[inline(always)]
    unsafe fn zeros() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn vadd(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn vsub(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn vmul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn vfmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn vfmsub(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmsub_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn vdiv(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn vmax(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn vmin(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn vexp_nonpos(x: __m512) -> __m512 {
        use crate::exp::f32_consts::{COEFFS, LN2_HI, LN2_LO, ROUND, UNDERFLOW};
        unsafe {
            let v = _mm512_set1_ps;
            let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, v(UNDERFLOW));
            let xc = _mm512_max_ps(v(UNDERFLOW), x);
            let t = _mm512_fmadd_ps(xc, v(core::f32::consts::LOG2_E), v(ROUND));
            let k = _mm512_sub_ps(t, v(ROUND));
            let r = _mm512_fnmadd_ps(k, v(LN2_LO), _mm512_fnmadd_ps(k, v(LN2_HI), xc));
            let [c0, c1, c2, c3, c4, c5] = COEFFS;
            let r2 = _mm512_mul_ps(r, r);
            let p = _mm512_fmadd_ps(
                _mm512_mul_ps(r2, r2),
                _mm512_fmadd_ps(v(c0), r, v(c1)),
                _mm512_fmadd_ps(r2, _mm512_fmadd_ps(v(c2), r, v(c3)), _mm512_fmadd_ps(v(c4), r, v(c5))),
            );
            let p = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), v(1.0));
            // `p·2^k` rounded once, as `(p·2^(k + SHIFT))·2^−SHIFT` is (the first product is exact).
            _mm512_maskz_scalef_ps(keep, p, k)
        }
    }
    #[inline(always)]
    unsafe fn vabs(a: __m512) -> __m512 {
        unsafe { _mm512_abs_ps(a) }
    }
    #[inline(always)]
    unsafe fn with_sign_of(lam: f32, d: __m512) -> __m512 {
        unsafe { _mm512_or_ps(_mm512_and_ps(d, _mm512_set1_ps(-0.0)), _mm512_set1_ps(lam)) }
    }
    #[inline(always)]
    unsafe fn keep(m: u32, v: __m512) -> __m512 {
        unsafe { _mm512_maskz_mov_ps(m as __mmask16, v) }
    }
    #[inline(always)]
    unsafe fn ne_ordered(a: __m512, b: __m512) -> u32 {
        unsafe { u32::from(_mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(a, b)) }
    }
    #[inline(always)]
    unsafe fn ge_ordered(a: __m512, b: __m512) -> u32 {
        unsafe { u32::from(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(a, b)) }
    }
    #[inline(always)]
    unsafe fn ne_unordered(a: __m512, b: __m512) -> u32 {
        unsafe { u32::from(_mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(a, b)) }
    }
    #[inline(always)]
    unsafe fn loadu(at: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(at) }
    }
    #[inline(always)]
    unsafe fn storeu(at: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(at, v) }
    }
    #[inline(always)]
    unsafe fn ld(at: *const f32, m: u32) -> __m512 {
        unsafe { if m == 0xffff { _mm512_loadu_ps(at) } else { _mm512_maskz_loadu_ps(m as __mmask16, at) } }
    }
    #[inline(always)]
    unsafe fn st(at: *mut f32, m: u32, v: __m512) {
        unsafe { if m == 0xffff { _mm512_storeu_ps(at, v) } else { _mm512_mask_storeu_ps(at, m as __mmask16, v) } }
    }
    #[inline(always)]
    unsafe fn stream(at: *mut f32, v: __m512) {
        unsafe { _mm512_stream_ps(at, v) }
    }
    #[inline(always)]
    unsafe fn shift_in(v: __m512, before: f32) -> __m512 {
        unsafe {
            let b = _mm512_castps_si512(_mm512_set1_ps(before));
            _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(_mm512_castps_si512(v), b))
        }
    }
    #[inline(always)]
    unsafe fn last(v: __m512) -> f32 {
        unsafe { _mm_cvtss_f32(_mm_permute_ps::<0xff>(_mm512_extractf32x4_ps::<3>(v))) }
    }
    #[inline(always)]
    unsafe fn fold(v: __m512) -> f64 {
        let mut a = [0.0f32; 16];
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), v) };
        fold(a)
    }
}

impl Simd for f64 {
    type V = __m512d;
    const LANES: usize = 8;
    const FULL: u32 = 0xff;

    #[inline(always)]
    unsafe fn zeros() -> __m512d {
        unsafe { _mm512_setzero_pd() }
    }
    #[inline(always)]
    unsafe fn splat(x: f64) -> __m512d {
        unsafe { _mm512_set1_pd(x) }
    }
    #[inline(always)]
    unsafe fn vadd(a: __m512d, b: __m512d) -> __m512d {
        unsafe { _mm512_add_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn vsub(a: __m512d, b: __m512d) -> __m512d {
        unsafe { _mm512_sub_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn vmul(a: __m512d, b: __m512d) -> __m512d {
        unsafe { _mm512_mul_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn vfmadd(a: __m512d, b: __m512d, c: __m512d) -> __m512d {
        unsafe { _mm512_fmadd_pd(a, b, c) }
    }
    #[inline(always)]
    unsafe fn vfmsub(a: __m512d, b: __m512d, c: __m512d) -> __m512d {
        unsafe { _mm512_fmsub_pd(a, b, c) }
    }
    #[inline(always)]
    unsafe fn vdiv(a: __m512d, b: __m512d) -> __m512d {
        unsafe { _mm512_div_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn vmax(a: __m512d, b: __m512d) -> __m512d {
        unsafe { _mm512_max_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn vmin(a: __m512d, b: __m512d) -> __m512d {
        unsafe { _mm512_min_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn vexp_nonpos(x: __m512d) -> __m512d {
        use crate::exp::f64_consts::{COEFFS, LN2_HI, LN2_LO, ROUND, UNDERFLOW};
        unsafe {
            let v = _mm512_set1_pd;
            let fma = |a, b, c| _mm512_fmadd_pd(a, b, c);
            let keep = _mm512_cmp_pd_mask::<_CMP_NLT_UQ>(x, v(UNDERFLOW));
            let xc = _mm512_max_pd(v(UNDERFLOW), x);
            let t = fma(xc, v(core::f64::consts::LOG2_E), v(ROUND));
            let k = _mm512_sub_pd(t, v(ROUND));
            let r = _mm512_fnmadd_pd(k, v(LN2_LO), _mm512_fnmadd_pd(k, v(LN2_HI), xc));
            let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11] = COEFFS.map(|c| v(c));
            let r2 = _mm512_mul_pd(r, r);
            let r4 = _mm512_mul_pd(r2, r2);
            let r8 = _mm512_mul_pd(r4, r4);
            let q0 = fma(r2, fma(c8, r, c9), fma(c10, r, c11));
            let q1 = fma(r2, fma(c4, r, c5), fma(c6, r, c7));
            let q2 = fma(r2, fma(c0, r, c1), fma(c2, r, c3));
            let p = fma(r8, q2, fma(r4, q1, q0));
            let one = v(1.0);
            let p = fma(fma(p, r, one), r, one);
            // `p·2^k` rounded once, as `(p·2^(k + SHIFT))·2^−SHIFT` is (the first product is exact).
            _mm512_maskz_scalef_pd(keep, p, k)
        }
    }
    #[inline(always)]
    unsafe fn vabs(a: __m512d) -> __m512d {
        unsafe { _mm512_abs_pd(a) }
    }
    #[inline(always)]
    unsafe fn with_sign_of(lam: f64, d: __m512d) -> __m512d {
        unsafe { _mm512_or_pd(_mm512_and_pd(d, _mm512_set1_pd(-0.0)), _mm512_set1_pd(lam)) }
    }
    #[inline(always)]
    unsafe fn keep(m: u32, v: __m512d) -> __m512d {
        unsafe { _mm512_maskz_mov_pd(m as __mmask8, v) }
    }
    #[inline(always)]
    unsafe fn ne_ordered(a: __m512d, b: __m512d) -> u32 {
        unsafe { u32::from(_mm512_cmp_pd_mask::<_CMP_NEQ_OQ>(a, b)) }
    }
    #[inline(always)]
    unsafe fn ge_ordered(a: __m512d, b: __m512d) -> u32 {
        unsafe { u32::from(_mm512_cmp_pd_mask::<_CMP_GE_OQ>(a, b)) }
    }
    #[inline(always)]
    unsafe fn ne_unordered(a: __m512d, b: __m512d) -> u32 {
        unsafe { u32::from(_mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(a, b)) }
    }
    #[inline(always)]
    unsafe fn loadu(at: *const f64) -> __m512d {
        unsafe { _mm512_loadu_pd(at) }
    }
    #[inline(always)]
    unsafe fn storeu(at: *mut f64, v: __m512d) {
        unsafe { _mm512_storeu_pd(at, v) }
    }
    #[inline(always)]
    unsafe fn ld(at: *const f64, m: u32) -> __m512d {
        unsafe { if m & 0xff == 0xff { _mm512_loadu_pd(at) } else { _mm512_maskz_loadu_pd(m as __mmask8, at) } }
    }
    #[inline(always)]
    unsafe fn st(at: *mut f64, m: u32, v: __m512d) {
        unsafe { if m & 0xff == 0xff { _mm512_storeu_pd(at, v) } else { _mm512_mask_storeu_pd(at, m as __mmask8, v) } }
    }
    #[inline(always)]
    unsafe fn stream(at: *mut f64, v: __m512d) {
        unsafe { _mm512_stream_pd(at, v) }
    }
    #[inline(always)]
    unsafe fn shift_in(v: __m512d, before: f64) -> __m512d {
        unsafe {
            let b = _mm512_castpd_si512(_mm512_set1_pd(before));
            _mm512_castsi512_pd(_mm512_alignr_epi64::<7>(_mm512_castpd_si512(v), b))
        }
    }
    #[inline(always)]
    unsafe fn last(v: __m512d) -> f64 {
        unsafe { _mm_cvtsd_f64(_mm_unpackhi_pd(_mm512_extractf64x2_pd::<3>(v), _mm512_extractf64x2_pd::<3>(v))) }
    }
    #[inline(always)]
    unsafe fn fold(v: __m512d) -> f64 {
        let mut a = [0.0f64; 8];
        unsafe { _mm512_storeu_pd(a.as_mut_ptr(), v) };
        fold(a)
    }
}
