//! Pass 1 for logits in `f32` on AVX-512 (any number of slices; 1 to 4 channels; every other
//! case takes the parent's tiled kernel).
//!
//! A row is done in tiles, as in the parent, but each tile in three sweeps instead of one per
//! step and class. The first copies the tile's logits, class by class, into a buffer of padded
//! lines (read in place, the lines of all classes at one column lie a plane apart, a power of
//! two in the usual shapes, and so in one set of the first- and second-level caches). The second
//! goes over the tile's chunks of 16 pixels with the classes inside: the chunk's maximum and
//! the sum of its exponentials stay in registers, the exponentials overwrite the logits in the
//! buffer, and each chunk's reciprocal sum goes to another. The third goes over the chunks again
//! with the classes inside, a few classes at a time: each probability is normalised, stored in
//! the gradient buffer (with `cache`; plain stores, see the crate docs) and added to
//! its class's moments, held in registers with the chunk's image values. A class-pixel is
//! loaded once from memory and four times from the first-level cache, and stored three times,
//! where the tiled kernel's separate steps (maximum, exponentials, normalisation, moments,
//! copy) load and store it and their per-pixel temporaries several times each.
//!
//! The probabilities are those of the parent's `load_probs` bit for bit (the same maximum,
//! exponential, class order of the sum, reciprocal and product), so the rows pass 2 reads back
//! are the rows it would recompute. The moments are summed in another order than the tiled
//! kernel's; energy alone and with a gradient both take this kernel and agree bitwise.
//!
//! The logits are checked through the sums: `Σ_n (d_n·0 + e_n)`, with `d_n` the logit minus
//! the chunk's maximum, is `Σ e_n` exactly when every `d_n` is finite and NaN otherwise (a
//! logit that is not finite, or a difference that overflows, which only logits beyond `±1.7e38`
//! can give; the caller's full check of the input then finds nothing and goes on).

use core::any::TypeId;
use core::arch::x86_64::*;

use msloss_core::Real;

use super::simd::{Simd, lanes};
use super::{L, aligned, aligned_mut, retype};
use crate::Isa;
use crate::exp::f32_consts::{COEFFS, LN2_HI, LN2_LO, ROUND, UNDERFLOW};
use crate::kernel::{
    Block, GradRows, MAX_FUSED_CHANNELS, P1_HEAD, Problem, Scratch, fold, prefetch_inputs, row_checks,
};

/// Whether [`pass1`] handles this problem in the kernel copy `isa`.
#[inline(always)]
pub(crate) fn usable<T: Real>(isa: Isa, p: &Problem<'_, T>) -> bool {
    isa == Isa::Avx512
        && TypeId::of::<T>() == TypeId::of::<f32>()
        && p.logits
        && (1..=MAX_FUSED_CHANNELS).contains(&p.c)
}

/// Pass 1 over one block (see the module docs); fills `part` as the parent's `pass1` does,
/// and with `cache` stores the block's probabilities in the gradient buffer.
///
/// # Safety
/// [`usable`] must hold (the CPU has the AVX-512 subsets of `Isa::Avx512`).
pub(crate) unsafe fn pass1<T: Real>(
    p: &Problem<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    cache: Option<GradRows<T>>,
    part: &mut [f64],
) {
    let (p, s, cache) = retype::<T, f32>(p, s, cache);
    // Classes per group of the third sweep: its `G·(1 + C)` sums, the chunk's `C` image values,
    // mask and reciprocal stay within the 32 registers.
    // SAFETY (all arms): the caller's contract.
    unsafe {
        match (p.c, p.mask.is_some()) {
            (1, false) => block::<1, 10, false>(p, blk, s, cache, part),
            (1, true) => block::<1, 10, true>(p, blk, s, cache, part),
            (2, false) => block::<2, 6, false>(p, blk, s, cache, part),
            (2, true) => block::<2, 6, true>(p, blk, s, cache, part),
            (3, false) => block::<3, 5, false>(p, blk, s, cache, part),
            (3, true) => block::<3, 5, true>(p, blk, s, cache, part),
            (4, false) => block::<4, 4, false>(p, blk, s, cache, part),
            (4, true) => block::<4, 4, true>(p, blk, s, cache, part),
            _ => unreachable!("1 to 4 channels"),
        }
    }
}

/// `e^x` lane by lane for `x <= 0`: the parent's `exp_nonpos_f32::<true>` operation for
/// operation, so bitwise the same (a test checks it).
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    // SAFETY: (all intrinsics here) the caller runs with AVX-512 F.
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

/// The block, with `C` channels, groups of `G` classes in the second sweep, and a mask or not.
///
/// # Safety
/// As for [`pass1`], and `p.c == C`, `p.mask.is_some() == MASKED`.
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
unsafe fn block<const C: usize, const G: usize, const MASKED: bool>(
    p: &Problem<'_, f32>,
    blk: Block,
    s: &mut Scratch<f32>,
    cache: Option<GradRows<f32>>,
    part: &mut [f64],
) {
    part.fill(0.0);
    let (head, rest) = part.split_at_mut(P1_HEAD);
    let (area, moments) = rest.split_at_mut(p.n);
    let (n, w, sp, b) = (p.n, p.w, p.sp(), blk.b);
    // The logits and then the exponentials of a tile, a line of `tw` per class, and the chunks'
    // reciprocal sums, 64-byte aligned in the fused pass 2's lines (free in pass 1; `n` padded
    // lines each, so at least `n·tw + L` values).
    let tile = p.tile.min(FOLD_CHUNKS * L);
    let tw = tile.div_ceil(L) * L;
    assert!(aligned(&s.ycur).len() >= n * tw && aligned(&s.ynext).len() >= tw, "pass 1's lines are sized by prepare");
    let ebuf = aligned_mut(&mut s.ycur).as_mut_ptr();
    let ibuf = aligned_mut(&mut s.ynext).as_mut_ptr();
    // The chunks' `Σ_n (d_n·0 + e_n)·0`: NaN if a logit is not finite.
    let mut check = _mm512_setzero_ps();
    // The lanes of every class's sums, `1 + C` registers' worth per class, and the chunks added
    // to them since they were last added in `f64`.
    let sums = &mut s.sums1[..n * (1 + C) * L];
    sums.fill(0.0);
    let mut pending = 0;
    for r in blk.r0..blk.r1 {
        if r + 1 < blk.r1 {
            prefetch_inputs(p, b, r + 1);
        }
        let mrow = row_checks(p, b, r, head, &mut s.t3);
        for a in (0..w).step_by(tile) {
            let len = tile.min(w - a);
            if pending + len.div_ceil(L) > FOLD_CHUNKS {
                flush::<C>(sums, area, moments);
                pending = 0;
            }
            // Class `i` of the tile at `i·sp` from `z`; channel `k` of the image at `k·sp` from
            // `x`. The last class's and channel's lines are within their slices (sliced with
            // bounds checks).
            let at = (b * n * sp) + r * w + a;
            let z = p.scores[at..at + (n - 1) * sp + len].as_ptr();
            let xat = b * C * sp + r * w + a;
            let x = p.image[xat..xat + (C - 1) * sp + len].as_ptr();
            let m = mrow.map(|m| m[a..a + len].as_ptr());
            let out = cache.map(|g| {
                assert!(at + (n - 1) * sp + len <= g.len, "gradient rows out of the buffer");
                // SAFETY: in bounds (checked above).
                unsafe { g.ptr.add(at) }
            });
            // SAFETY: the CPU has the features (this function's contract). Every lane read or
            // written is within the slices above (`lanes` masks the tile's last chunk), the
            // buffers hold `n·tw` and `tw` values, and `out` is this block's rows of the
            // gradient, which no other thread touches and nothing else borrows.
            unsafe {
                check = exponentials(z, sp, n, len, ebuf, tw, ibuf, check);
                let acc = sums.as_mut_ptr();
                let mut cls = 0;
                while cls + G <= n {
                    normalise::<C, G, MASKED>(cls, len, (ebuf, tw, ibuf), (x, m, sp), out, acc);
                    cls += G;
                }
                while cls < n {
                    normalise::<C, 1, MASKED>(cls, len, (ebuf, tw, ibuf), (x, m, sp), out, acc);
                    cls += 1;
                }
            }
            pending += len.div_ceil(L);
        }
    }
    flush::<C>(sums, area, moments);
    // SAFETY: the CPU has the features (this function's contract).
    head[0] += unsafe { f32::fold(check) };
}

/// The most chunks whose sums are added in `f32` before they are added in `f64` (tiles are
/// at most this many chunks wide): at most 32 values a lane, as in the parent's sums (lanes of
/// 8 over 256 values).
const FOLD_CHUNKS: usize = 32;

/// Adds the lanes of every class's sums (`[A, M_0, …, M_{C−1}]` per class, `L` lanes each) to
/// `area` and `moments` in `f64`, and clears them.
#[inline(always)]
fn flush<const C: usize>(sums: &mut [f32], area: &mut [f64], moments: &mut [f64]) {
    for (cls, lines) in sums.chunks_exact_mut((1 + C) * L).enumerate() {
        for (k, line) in lines.chunks_exact_mut(L).enumerate() {
            let mut lanes = [0.0; L];
            lanes.copy_from_slice(line);
            let v = fold(lanes);
            if k == 0 {
                area[cls] += v;
            } else {
                moments[cls * C + k - 1] += v;
            }
            line.fill(0.0);
        }
    }
}

/// The first two sweeps over a tile of `len` pixels: the `n` classes' logits (class `i` at
/// `i·sp` from `z`) copied to their lines in `ebuf` (class `i`'s at `i·tw`), then for each
/// chunk their maximum, their exponentials after subtracting it (over the logits in `ebuf`),
/// and the reciprocal of their sum (in `ibuf`). Returns `check` plus every chunk's `sum·0`.
///
/// # Safety
/// The CPU has AVX-512 F; `len` values of each class are readable from `z`; `ebuf` holds `n·tw`
/// and `ibuf` `tw` values, both 64-byte aligned, `tw >= len` a multiple of 16.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the tile's logits, its size and the two buffers")]
unsafe fn exponentials(
    z: *const f32,
    sp: usize,
    n: usize,
    len: usize,
    ebuf: *mut f32,
    tw: usize,
    ibuf: *mut f32,
    mut check: __m512,
) -> __m512 {
    // SAFETY: by the contract (`lanes` masks what is past `len`).
    unsafe {
        let zero = _mm512_setzero_ps();
        // The tile's logits first, class by class, into the buffer (zeros past `len`): read in
        // place, the chunk's lines of all classes would lie a plane apart, in one set of the
        // first- and second-level caches, and be evicted between the two loops below.
        for cls in 0..n {
            let mut j = 0;
            while j < len {
                _mm512_store_ps(ebuf.add(cls * tw + j), f32::ld(z.add(cls * sp + j), lanes(len - j)));
                j += L;
            }
        }
        let mut j = 0;
        while j < len {
            // The maximum in four independent chains (the maximum of finite values does not
            // depend on the order; of a `+0`/`−0` tie either gives the same `d` below, but
            // for the zero's sign, and the same exponential).
            let zc = |cls: usize| _mm512_load_ps(ebuf.add(cls * tw + j));
            let (mut m0, mut m1, mut m2, mut m3) = (zc(0), zc(0), zc(0), zc(0));
            let mut cls = 1;
            while cls + 4 <= n {
                m0 = _mm512_max_ps(zc(cls), m0);
                m1 = _mm512_max_ps(zc(cls + 1), m1);
                m2 = _mm512_max_ps(zc(cls + 2), m2);
                m3 = _mm512_max_ps(zc(cls + 3), m3);
                cls += 4;
            }
            while cls < n {
                m0 = _mm512_max_ps(zc(cls), m0);
                cls += 1;
            }
            let mx = _mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3));
            let mut tot = zero;
            for cls in 0..n {
                let d = _mm512_sub_ps(zc(cls), mx);
                let e = exp16(d);
                _mm512_store_ps(ebuf.add(cls * tw + j), e);
                tot = _mm512_add_ps(tot, _mm512_fmadd_ps(d, zero, e));
            }
            check = _mm512_fmadd_ps(tot, zero, check);
            _mm512_store_ps(ibuf.add(j), _mm512_div_ps(_mm512_set1_ps(1.0), tot));
            j += L;
        }
        check
    }
}

/// The third sweep over a tile of `len` pixels for classes `cls..cls + G`: the probabilities
/// `e·(1/Σ e)` from the first sweep's buffers `(ebuf, tw, ibuf)`, stored at `i·sp` from `out`
/// for class `i`, and their moments with the image
/// (channel `k` at `k·sp` from `x`) and mask `m`, added to the lanes of class `i`'s sums at
/// `i·(1 + C)·L` from `acc` (see [`flush`]).
///
/// # Safety
/// As for [`exponentials`], for the buffers it filled; `len` values of each channel of `x`
/// and of `m` are readable, each class's `out` writable with no reference covering them, and
/// `acc` holds the sums of classes up to `cls + G`.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the group, the buffers, the image and mask, the output and the sums")]
unsafe fn normalise<const C: usize, const G: usize, const MASKED: bool>(
    cls: usize,
    len: usize,
    (ebuf, tw, ibuf): (*const f32, usize, *const f32),
    (x, m, sp): (*const f32, Option<*const f32>, usize),
    out: Option<*mut f32>,
    acc: *mut f32,
) {
    // SAFETY: by the contract (`lanes` masks what is past `len`).
    unsafe {
        let zero = _mm512_setzero_ps();
        let line = |g: usize, k: usize| acc.add(((cls + g) * (1 + C) + k) * L);
        let mut acc_a: [__m512; G] = core::array::from_fn(|g| _mm512_loadu_ps(line(g, 0)));
        let mut acc_m: [[__m512; C]; G] =
            core::array::from_fn(|g| core::array::from_fn(|k| _mm512_loadu_ps(line(g, 1 + k))));
        let mut j = 0;
        while j < len {
            let lm = lanes(len - j);
            let inv = _mm512_load_ps(ibuf.add(j));
            let xs: [__m512; C] = core::array::from_fn(|k| f32::ld(x.add(k * sp + j), lm));
            let wt = match m {
                Some(m) if MASKED => f32::ld(m.add(j), lm),
                _ => zero,
            };
            for g in 0..G {
                let y = _mm512_maskz_mul_ps(lm as __mmask16, _mm512_load_ps(ebuf.add((cls + g) * tw + j)), inv);
                if let Some(out) = out {
                    f32::st(out.add((cls + g) * sp + j), lm, y);
                }
                let my = if MASKED { _mm512_mul_ps(y, wt) } else { y };
                acc_a[g] = _mm512_add_ps(acc_a[g], my);
                for (a, &xk) in acc_m[g].iter_mut().zip(&xs) {
                    *a = _mm512_fmadd_ps(my, xk, *a);
                }
            }
            j += L;
        }
        for (g, (a, ms)) in acc_a.iter().zip(&acc_m).enumerate() {
            _mm512_storeu_ps(line(g, 0), *a);
            for (k, mk) in ms.iter().enumerate() {
                _mm512_storeu_ps(line(g, 1 + k), *mk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exp16;
    use crate::exp::exp_nonpos_f32;
    use core::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    fn exp16_lanes(x: [f32; 16]) -> [f32; 16] {
        let mut out = [0.0f32; 16];
        // SAFETY: the caller checked the feature; both arrays hold 16 values.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr()))) };
        out
    }

    #[test]
    fn exp16_is_the_scalar_exp_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let mut x = 0.0f32;
        let mut checked = 0;
        while x > -110.0 {
            let xs: [f32; 16] = core::array::from_fn(|l| x - l as f32 * 0.000_37);
            // SAFETY: AVX-512 F is present (checked above).
            let got = unsafe { exp16_lanes(xs) };
            for (v, g) in xs.iter().zip(got) {
                assert_eq!(g.to_bits(), exp_nonpos_f32::<true>(*v).to_bits(), "x = {v}");
                checked += 1;
            }
            x -= 0.007_3;
        }
        assert!(checked > 200_000);
        // The edges: zero, the underflow threshold, below it, and the smallest subnormal results.
        let edges = [0.0, -0.0, -103.27, -103.97, -104.0, -104.01, -1e30, f32::MIN];
        let xs: [f32; 16] = core::array::from_fn(|l| edges[l % edges.len()]);
        // SAFETY: as above.
        let got = unsafe { exp16_lanes(xs) };
        for (v, g) in xs.iter().zip(got) {
            assert_eq!(g.to_bits(), exp_nonpos_f32::<true>(*v).to_bits(), "x = {v}");
        }
    }
}
