//! Pass 1 for logits in `f32` and `f64` on AVX-512 (any number of slices; 1 to 4 channels;
//! every other case takes the parent's tiled kernel), written once over [`Simd`].
//!
//! A row is done in tiles, as in the parent, but each tile in three sweeps instead of one per
//! step and class. The first copies the tile's logits, class by class, into a buffer of padded
//! lines (read in place, the lines of all classes at one column lie a plane apart, a power of
//! two in the usual shapes, and so in one set of the first- and second-level caches). The second
//! goes over the tile's chunks of one register's pixels (16 of `f32`, 8 of `f64`) with the
//! classes inside: the chunk's maximum and the sum of its exponentials stay in registers, the
//! exponentials overwrite the logits in the buffer, and each chunk's reciprocal sum goes to
//! another. The third goes over the chunks again with the classes inside, a few classes at a
//! time: each probability is normalised, stored in the gradient buffer (with `cache`; plain
//! stores, see the crate docs) and added to its class's moments, held in registers with the
//! chunk's image values. A class-pixel is loaded once from memory and four times from the
//! first-level cache, and stored three times, where the tiled kernel's separate steps (maximum,
//! exponentials, normalisation, moments, copy) load and store it and their per-pixel
//! temporaries several times each.
//!
//! Where pass 2 will compute the probabilities again, the second sweep also stores each chunk's
//! maximum and reciprocal sum ([`Stats`]); pass 2's [`probs_from_stats`] then needs one sweep.
//!
//! The probabilities are those of the parent's `load_probs` bit for bit (the same maximum,
//! exponential, class order of the sum, reciprocal and product), so the rows pass 2 reads back
//! are the rows it would recompute. The moments are summed in another order than the tiled
//! kernel's; energy alone and with a gradient both take this kernel and agree bitwise.
//!
//! The logits are checked through the sums: `Σ_n (d_n·0 + e_n)`, with `d_n` the logit minus
//! the chunk's maximum, is `Σ e_n` exactly when every `d_n` is finite and NaN otherwise (a
//! logit that is not finite, or a difference that overflows, which only logits beyond half the
//! type's largest value can give; the caller's full check of the input then finds nothing and
//! goes on).

use core::any::TypeId;

use msloss_core::Real;

use super::simd::{Simd, lanes};
use super::{L, aligned, aligned_mut, retype};
use crate::Isa;
use crate::kernel::{
    Block, GradRows, MAX_FUSED_CHANNELS, MAX_FUSED_TILE, P1_HEAD, Problem, Scratch, Stats, prefetch, prefetch_image,
    prefetch_inputs, row_checks,
};

/// Whether [`pass1`] handles this problem in the kernel copy `isa`.
#[inline(always)]
pub(crate) fn usable<T: Real>(isa: Isa, p: &Problem<'_, T>) -> bool {
    isa == Isa::Avx512
        && (TypeId::of::<T>() == TypeId::of::<f32>() || TypeId::of::<T>() == TypeId::of::<f64>())
        && p.logits
        && (1..=MAX_FUSED_CHANNELS).contains(&p.c)
}

/// Pass 1 over one block (see the module docs); fills `part` as the parent's `pass1` does,
/// with `cache` stores the block's probabilities in the gradient buffer, and with `stats` its
/// rows' softmax statistics (see [`Stats`]).
///
/// # Safety
/// [`usable`] must hold (the CPU has the AVX-512 subsets of `Isa::Avx512`); `stats` holds
/// [`Stats::len`] values, and no other thread touches this block's rows of it.
pub(crate) unsafe fn pass1<T: Real>(
    p: &Problem<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    (cache, stats): (Option<GradRows<T>>, Option<Stats<T>>),
    part: &mut [f64],
) {
    // SAFETY: (both) the caller's contract; `T` is the type named.
    unsafe {
        if TypeId::of::<T>() == TypeId::of::<f32>() {
            typed::<T, f32>(p, blk, s, (cache, stats), part);
        } else {
            typed::<T, f64>(p, blk, s, (cache, stats), part);
        }
    }
}

/// [`pass1`] for `T`, which is `U`.
///
/// # Safety
/// As for [`pass1`], and `T` is `U`.
#[inline(always)]
unsafe fn typed<T: Real, U: Simd>(
    p: &Problem<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    (cache, stats): (Option<GradRows<T>>, Option<Stats<T>>),
    part: &mut [f64],
) {
    let (p, s, cache) = retype::<T, U>(p, s, cache);
    let stats = stats.map(Stats::retype::<U>);
    // Classes per group of the third sweep: its `G·(1 + C)` sums, the chunk's `C` image values,
    // mask and reciprocal stay within the 32 registers.
    // SAFETY (all arms): the caller's contract.
    unsafe {
        match (p.c, p.mask.is_some()) {
            (1, false) => block::<U, 1, 10, false>(p, blk, s, (cache, stats), part),
            (1, true) => block::<U, 1, 10, true>(p, blk, s, (cache, stats), part),
            (2, false) => block::<U, 2, 6, false>(p, blk, s, (cache, stats), part),
            (2, true) => block::<U, 2, 6, true>(p, blk, s, (cache, stats), part),
            (3, false) => block::<U, 3, 5, false>(p, blk, s, (cache, stats), part),
            (3, true) => block::<U, 3, 5, true>(p, blk, s, (cache, stats), part),
            (4, false) => block::<U, 4, 4, false>(p, blk, s, (cache, stats), part),
            (4, true) => block::<U, 4, 4, true>(p, blk, s, (cache, stats), part),
            _ => unreachable!("1 to 4 channels"),
        }
    }
}

/// The block, with `C` channels, groups of `G` classes in the second sweep, and a mask or not.
///
/// # Safety
/// As for [`pass1`], and `p.c == C`, `p.mask.is_some() == MASKED`.
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
unsafe fn block<T: Simd, const C: usize, const G: usize, const MASKED: bool>(
    p: &Problem<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    (cache, stats): (Option<GradRows<T>>, Option<Stats<T>>),
    part: &mut [f64],
) {
    part.fill(0.0);
    let (head, rest) = part.split_at_mut(P1_HEAD);
    let (area, moments) = rest.split_at_mut(p.n);
    let (n, w, sp, b) = (p.n, p.w, p.sp(), blk.b);
    // The logits and then the exponentials of a tile, a line of `tw` per class, and the chunks'
    // reciprocal sums, 64-byte aligned in the fused pass 2's lines (free in pass 1; `n` padded
    // lines each, so at least `n·tw + L` values).
    let tile = p.tile.min(MAX_TILE);
    let tw = tile.div_ceil(L) * L;
    assert!(aligned(&s.ycur).len() >= n * tw && aligned(&s.ynext).len() >= tw, "pass 1's lines are sized by prepare");
    let ebuf = aligned_mut(&mut s.ycur).as_mut_ptr();
    let ibuf = aligned_mut(&mut s.ynext).as_mut_ptr();
    // The chunks' `Σ_n (d_n·0 + e_n)·0`: NaN if a logit is not finite.
    // SAFETY: the CPU has the features (this function's contract).
    let mut check = unsafe { T::zeros() };
    // The lanes of every class's sums, `1 + C` registers' worth per class, and the chunks added
    // to them since they were last added in `f64`.
    let sums = &mut s.sums1[..n * (1 + C) * T::LANES];
    sums.fill(T::zero());
    let mut pending = 0;
    // The logits' next row is prefetched a line at a time, as the copy reads this row (see
    // [`exponentials`]), where a row of every class is more than [`BURST_BYTES`]; otherwise at
    // once with the image's.
    let spread = n * w * size_of::<T>() > BURST_BYTES;
    // For `f32`, the third sweep asks for them instead, a column at a time (see [`column_ahead`]).
    let by_column = spread && column_ahead::<T>();
    for r in blk.r0..blk.r1 {
        if r + 1 < blk.r1 {
            if spread {
                prefetch_image(p, b, r + 1);
            } else {
                prefetch_inputs(p, b, r + 1);
            }
        }
        let ahead = (spread && !by_column && r + PREFETCH_ROWS < blk.r1).then_some(PREFETCH_ROWS * w);
        let mrow = row_checks(p, b, r, head, &mut s.t3);
        // This row's statistics: its maxima, and `w` on its reciprocal sums.
        let st = stats.map(|st| st.row(p, b, r));
        for a in (0..w).step_by(tile) {
            let len = tile.min(w - a);
            if pending + len.div_ceil(L) > FOLD_CHUNKS {
                // SAFETY: as above.
                unsafe { flush::<T, C>(sums, area, moments) };
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
            // The same columns of the next row (asked for by the third sweep).
            let next = (by_column && r + 1 < blk.r1).then(|| z.wrapping_add(w));
            let st = st.map(|st| (st.wrapping_add(a), w));
            let out = cache.map(|g| {
                assert!(at + (n - 1) * sp + len <= g.len, "gradient rows out of the buffer");
                // SAFETY: in bounds (checked above).
                unsafe { g.ptr.add(at) }
            });
            // SAFETY: the CPU has the features (this function's contract). Every lane read or
            // written is within the slices above (`lanes` masks the tile's last chunk), the
            // buffers hold `n·tw` and `tw` values, and `out` is this block's rows of the
            // gradient, which no other thread touches and nothing else borrows; `st` is this
            // block's row of the statistics (`2·w` values from the row's start, asserted by
            // `Stats::row`), written by nothing else.
            unsafe {
                check = exponentials::<T>(z, sp, n, len, (ebuf, tw, ibuf), (ahead, st), check);
                let acc = sums.as_mut_ptr();
                let mut cls = 0;
                while cls + G <= n {
                    normalise::<T, C, G, MASKED>(cls, len, (ebuf, tw, ibuf), (x, m, sp), out, acc, next);
                    cls += G;
                }
                while cls < n {
                    normalise::<T, C, 1, MASKED>(cls, len, (ebuf, tw, ibuf), (x, m, sp), out, acc, next);
                    cls += 1;
                }
            }
            pending += len.div_ceil(L);
        }
    }
    // SAFETY: the CPU has the features (this function's contract).
    unsafe {
        flush::<T, C>(sums, area, moments);
        head[0] += T::fold(check);
    }
}

/// The most 16-pixel chunks whose sums are added in `T` before they are added in `f64` (tiles
/// are at most this many chunks wide): at most 32 values a lane of `f32`, as in the parent's
/// sums (lanes of 8 over 256 values).
const FOLD_CHUNKS: usize = 32;

/// How many rows ahead both sweeps prefetch the logits (see [`exponentials`]). A row's time
/// is lead enough (S4 took the same time with 1 and 2, on one thread and two), and the rows
/// in flight stay far below the second-level cache (`21` classes of `512` columns of `f64`
/// take 86 KiB a row).
pub(crate) const PREFETCH_ROWS: usize = 1;

/// Whether the logits of the next row are asked for a column at a time from the sweeps that
/// compute (pass 1's third, and the chunk loop of pass 2, which asks for row `r + 2` as it does
/// row `r`), rather than by the copies as they read (`f32`; BENCHMARKS.md, thirteenth
/// session). Spread over the computing sweeps, the requests find the core's miss queue
/// free; the copies' requests come with the copies' own misses. Measured on S4 (2 threads,
/// alternations): `f32` 13.84 → 12.71 ms, 14.43 → 13.70, 15.64 → 13.70 and 14.44 → 13.50;
/// 1 thread within the noise (24.2 → 22.5, 27.5 → 26.7, 28.5 → 31.8); `f64` 32.4 → 33.2, so
/// `f64` keeps the copies' requests.
pub(crate) fn column_ahead<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
}

/// The most bytes of logits (a row of every class) that pass 1 prefetches at once. Measured
/// (S4 and S2, `f32` and `f64`, 2 threads): S2 `f32`'s rows, 10.5 KiB, ran 6–15% faster
/// prefetched at once than a line at a time; S2 `f64`'s, 21 KiB, 6% slower, and S4's (42 and
/// 84 KiB) 5–13% slower.
const BURST_BYTES: usize = 16 << 10;

/// The widest tile of either sweep (the chunked pass 1's, or [`softmax_row`]'s): at most
/// [`FOLD_CHUNKS`] chunks.
pub(crate) const MAX_TILE: usize = MAX_FUSED_TILE;
const _: () = assert!(MAX_TILE <= FOLD_CHUNKS * L);

/// The probabilities of row `r` of sample `b` from its logits, class `i`'s at `i·ws` from `dst`
/// (columns `0..w`; the lines' next register's worth of columns, up to column
/// `w.div_ceil(16)·16 + 15`, are overwritten with values of no use), bit for bit those of the
/// parent's `load_probs` and of [`pass1`]: in tiles as in [`pass1`], each tile's logits copied
/// to the lines, then per chunk their maximum, exponentials and reciprocal sum (in `inv`), then
/// the products. The logits are not checked (pass 1 did that). With `prefetch_next`, the copy
/// prefetches the same columns [`PREFETCH_ROWS`] rows on, where the sample has them.
///
/// # Safety
/// AVX-512 F, VL, DQ and BW; `p` holds row `r` of sample `b`, 2D; `dst` is writable for
/// `(n − 1)·ws + w.div_ceil(16)·16 + 16` values with `ws ≥ w.div_ceil(16)·16`, no reference
/// covering them, and `inv` for [`MAX_TILE`].
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the row, where its lines go, and whether to prefetch")]
pub(crate) unsafe fn softmax_row<T: Simd>(
    p: &Problem<'_, T>,
    b: usize,
    r: usize,
    dst: *mut T,
    ws: usize,
    inv: *mut T,
    prefetch_next: bool,
) {
    let (n, w, sp) = (p.n, p.w, p.sp());
    let nl = T::LANES;
    let tile = p.tile.min(MAX_TILE);
    let (z, ahead) = row_logits(p, b, r, prefetch_next);
    for a in (0..w).step_by(tile) {
        let len = tile.min(w - a);
        // SAFETY: the contract; class `i`'s logits `a..a + len` of the row are in `p.scores`
        // (sliced above), and the sweeps write at most `len.div_ceil(nl)·nl ≤ len + 15` values
        // of each line from column `a`, within `w.div_ceil(16)·16 + 16`.
        unsafe {
            let e = dst.add(a);
            exponentials::<T>(z.add(a), sp, n, len, (e, ws, inv), (ahead, None), T::zeros());
            let mut j = 0;
            while j < len {
                let s = T::loadu(inv.add(j));
                for cls in 0..n {
                    let at = e.add(cls * ws + j);
                    T::storeu(at, T::vmul(T::loadu(at), s));
                }
                j += nl;
            }
        }
    }
}

/// Where row `r` of sample `b`'s logits start (class `i`'s `i·sp` further; every class's row is
/// within the input, sliced with bounds checks), and with `prefetch_next` the offset of the
/// same columns [`PREFETCH_ROWS`] rows on, where the sample has them: what [`softmax_row`] and
/// [`probs_from_stats`] read and ask for.
#[inline(always)]
fn row_logits<T>(p: &Problem<'_, T>, b: usize, r: usize, prefetch_next: bool) -> (*const T, Option<usize>) {
    let (n, w, sp) = (p.n, p.w, p.sp());
    let z = p.scores[(b * n * sp) + r * w..(b * n + n - 1) * sp + (r + 1) * w].as_ptr();
    (z, (prefetch_next && r + PREFETCH_ROWS < p.d * p.h).then_some(PREFETCH_ROWS * w))
}

/// The probabilities of row `r` of sample `b`, as [`softmax_row`] computes them (the same
/// bits), from its logits and pass 1's statistics of the row (`st`, see [`Stats`]) in one
/// sweep: `e^(z − max)·(1/Σ e)`, each logit loaded once, so none is copied first. With
/// `prefetch_next`, asks for the same columns [`PREFETCH_ROWS`] rows on as it reads.
///
/// # Safety
/// As for [`softmax_row`] (but `inv`), and `st` holds the row's `2·w` statistics, written by
/// pass 1.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the row, its statistics, where its lines go, and whether to prefetch")]
pub(crate) unsafe fn probs_from_stats<T: Simd>(
    p: &Problem<'_, T>,
    b: usize,
    r: usize,
    st: *const T,
    dst: *mut T,
    ws: usize,
    prefetch_next: bool,
) {
    let (n, w, sp) = (p.n, p.w, p.sp());
    let nl = T::LANES;
    let (z, ahead) = row_logits(p, b, r, prefetch_next);
    // SAFETY: the contract; class `i`'s logits `0..w` of the row are in `p.scores` (sliced
    // above), loads are masked to the row's columns, and the stores write `w.div_ceil(nl)·nl`
    // values of each line, within `w.div_ceil(16)·16 + 16`.
    unsafe {
        for cls in 0..n {
            let (zc, yc) = (z.add(cls * sp), dst.add(cls * ws));
            // Whole registers, then the row's last lanes. (A closure here would be compiled
            // without the caller's target features.)
            let mut j = 0;
            while j + nl <= w {
                probs_chunk::<T>((zc, st, yc), w, j, T::FULL, ahead);
                j += nl;
            }
            if j < w {
                probs_chunk::<T>((zc, st, yc), w, j, lanes(w - j), ahead);
            }
        }
    }
}

/// One register's pixels of [`probs_from_stats`], from column `j`: the lanes of `lm` of a
/// class's logits `zc` and the row's statistics `st`, to its line `yc`.
///
/// # Safety
/// As for [`probs_from_stats`]: the lanes of `lm` are on the row.
#[inline(always)]
unsafe fn probs_chunk<T: Simd>(
    (zc, st, yc): (*const T, *const T, *mut T),
    w: usize,
    j: usize,
    lm: u32,
    ahead: Option<usize>,
) {
    if let Some(ahead) = ahead {
        prefetch(zc.wrapping_add(j + ahead));
    }
    // SAFETY: the contract.
    unsafe {
        let d = T::vsub(T::ld(zc.add(j), lm), T::ld(st.add(j), lm));
        T::storeu(yc.add(j), T::vmul(T::vexp_nonpos(d), T::ld(st.add(w + j), lm)));
    }
}

/// Adds the lanes of every class's sums (`[A, M_0, …, M_{C−1}]` per class, a register's lanes
/// each) to `area` and `moments` in `f64`, and clears them.
///
/// # Safety
/// The CPU has AVX-512 F.
#[inline(always)]
unsafe fn flush<T: Simd, const C: usize>(sums: &mut [T], area: &mut [f64], moments: &mut [f64]) {
    for (cls, lines) in sums.chunks_exact_mut((1 + C) * T::LANES).enumerate() {
        for (k, line) in lines.chunks_exact_mut(T::LANES).enumerate() {
            // SAFETY: the contract; `line` holds a register's lanes.
            let v = unsafe { T::fold(T::loadu(line.as_ptr())) };
            if k == 0 {
                area[cls] += v;
            } else {
                moments[cls * C + k - 1] += v;
            }
            line.fill(T::zero());
        }
    }
}

/// The first two sweeps over a tile of `len` pixels: the `n` classes' logits (class `i` at
/// `i·sp` from `z`) copied to their lines in `ebuf` (class `i`'s at `i·tw`), then for each
/// chunk their maximum, their exponentials after subtracting it (over the logits in `ebuf`),
/// and the reciprocal of their sum (in `ibuf`). Returns `check` plus every chunk's `sum·0`.
///
/// With `ahead`, the copy asks for the line `ahead` values past each line it reads (the same
/// columns of a later row), so that the logits come in a line per load, in step with the
/// sweep: prefetched a whole row at once, the requests fill the core's queue of misses and
/// stall it (in S4, the burst took a sixth of pass 1's time). With `stats = (st, w)`, each
/// pixel's maximum goes to `st` and its reciprocal sum `w` further (see [`Stats`]).
///
/// # Safety
/// The CPU has AVX-512 F; `len` values of each class are readable from `z`; `len.div_ceil(16)·16`
/// values are writable at `i·tw` from `ebuf` for each class `i` and from `ibuf` (the values past
/// `len` get zeros or values of no use); `len` values from `st` and from `st + w`.
#[inline(always)]
unsafe fn exponentials<T: Simd>(
    z: *const T,
    sp: usize,
    n: usize,
    len: usize,
    (ebuf, tw, ibuf): (*mut T, usize, *mut T),
    (ahead, stats): (Option<usize>, Option<(*mut T, usize)>),
    mut check: T::V,
) -> T::V {
    let nl = T::LANES;
    // SAFETY: by the contract (`lanes` masks what is past `len`).
    unsafe {
        let zero = T::zeros();
        // The tile's logits first, class by class, into the buffer (zeros past `len`): read in
        // place, the chunk's lines of all classes would lie a plane apart, in one set of the
        // first- and second-level caches, and be evicted between the two loops below.
        for cls in 0..n {
            let mut j = 0;
            while j < len {
                let from = z.add(cls * sp + j);
                if let Some(ahead) = ahead {
                    prefetch(from.wrapping_add(ahead));
                }
                T::storeu(ebuf.add(cls * tw + j), T::ld(from, lanes(len - j)));
                j += nl;
            }
        }
        let mut j = 0;
        while j < len {
            // The maximum in four independent chains (the maximum of finite values does not
            // depend on the order; of a `+0`/`−0` tie either gives the same `d` below, but
            // for the zero's sign, and the same exponential).
            let zc = |cls: usize| T::loadu(ebuf.add(cls * tw + j));
            let (mut m0, mut m1, mut m2, mut m3) = (zc(0), zc(0), zc(0), zc(0));
            let mut cls = 1;
            while cls + 4 <= n {
                m0 = T::vmax(zc(cls), m0);
                m1 = T::vmax(zc(cls + 1), m1);
                m2 = T::vmax(zc(cls + 2), m2);
                m3 = T::vmax(zc(cls + 3), m3);
                cls += 4;
            }
            while cls < n {
                m0 = T::vmax(zc(cls), m0);
                cls += 1;
            }
            let mx = T::vmax(T::vmax(m0, m1), T::vmax(m2, m3));
            let mut tot = zero;
            for cls in 0..n {
                let d = T::vsub(zc(cls), mx);
                let e = T::vexp_nonpos(d);
                T::storeu(ebuf.add(cls * tw + j), e);
                tot = T::vadd(tot, T::vfmadd(d, zero, e));
            }
            check = T::vfmadd(tot, zero, check);
            let inv = T::vdiv(T::splat(T::one()), tot);
            T::storeu(ibuf.add(j), inv);
            if let Some((st, w)) = stats {
                let lm = lanes(len - j);
                T::st(st.add(j), lm, mx);
                T::st(st.add(w + j), lm, inv);
            }
            j += nl;
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
/// `acc` holds the sums of classes up to `cls + G`. With `next`, asks for each chunk's columns
/// of the group's classes from there (class `i` at `i·sp`, as `x`'s channels).
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the group, the buffers, the image and mask, the output and the sums")]
unsafe fn normalise<T: Simd, const C: usize, const G: usize, const MASKED: bool>(
    cls: usize,
    len: usize,
    (ebuf, tw, ibuf): (*const T, usize, *const T),
    (x, m, sp): (*const T, Option<*const T>, usize),
    out: Option<*mut T>,
    acc: *mut T,
    next: Option<*const T>,
) {
    let nl = T::LANES;
    // SAFETY: by the contract (`lanes` masks what is past `len`).
    unsafe {
        let zero = T::zeros();
        let line = |g: usize, k: usize| acc.add(((cls + g) * (1 + C) + k) * nl);
        let mut acc_a: [T::V; G] = core::array::from_fn(|g| T::loadu(line(g, 0)));
        let mut acc_m: [[T::V; C]; G] = core::array::from_fn(|g| core::array::from_fn(|k| T::loadu(line(g, 1 + k))));
        let mut j = 0;
        while j < len {
            let lm = lanes(len - j);
            if let Some(next) = next {
                for g in 0..G {
                    prefetch(next.wrapping_add((cls + g) * sp + j));
                }
            }
            let inv = T::loadu(ibuf.add(j));
            let xs: [T::V; C] = core::array::from_fn(|k| T::ld(x.add(k * sp + j), lm));
            let wt = match m {
                Some(m) if MASKED => T::ld(m.add(j), lm),
                _ => zero,
            };
            for g in 0..G {
                let y = T::keep(lm, T::vmul(T::loadu(ebuf.add((cls + g) * tw + j)), inv));
                if let Some(out) = out {
                    T::st(out.add((cls + g) * sp + j), lm, y);
                }
                let my = if MASKED { T::vmul(y, wt) } else { y };
                acc_a[g] = T::vadd(acc_a[g], my);
                for (a, &xk) in acc_m[g].iter_mut().zip(&xs) {
                    *a = T::vfmadd(my, xk, *a);
                }
            }
            j += nl;
        }
        for (g, (a, ms)) in acc_a.iter().zip(&acc_m).enumerate() {
            T::storeu(line(g, 0), *a);
            for (k, mk) in ms.iter().enumerate() {
                T::storeu(line(g, 1 + k), *mk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Simd;
    use crate::exp::{exp_nonpos_f32, exp_nonpos_f64};

    /// `T::vexp_nonpos` of a register's worth of `xs`.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
    fn vexp<T: Simd>(xs: &[T]) -> Vec<T> {
        assert_eq!(xs.len(), T::LANES);
        let mut out = vec![T::zero(); T::LANES];
        // SAFETY: the caller checked the features; both slices hold a register's lanes.
        unsafe { T::storeu(out.as_mut_ptr(), T::vexp_nonpos(T::loadu(xs.as_ptr()))) };
        out
    }

    /// The register `exp` against the scalar one, bit for bit, over the whole range, at its
    /// edges (zero, the underflow threshold and beyond it, subnormal results) and for NaN.
    fn matches_scalar<T: Simd>(scalar: impl Fn(T) -> T, lowest: f64, step: f64, edges: &[f64]) -> usize {
        let nl = T::LANES;
        let mut checked = 0;
        let same = |v: T, g: T| {
            let (g, want) = (g.to_f64_lossless(), scalar(v).to_f64_lossless());
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan())
        };
        let mut x = 0.0;
        while x > lowest {
            let xs: Vec<T> = (0..nl).map(|l| T::from_f64_lossy(x - l as f64 * step * 0.05)).collect();
            // SAFETY: the features are present (checked by the callers).
            let got = unsafe { vexp(&xs) };
            for (v, g) in xs.iter().zip(got) {
                assert!(same(*v, g), "x = {v:?}: {g:?} vs {:?}", scalar(*v));
                checked += 1;
            }
            x -= step;
        }
        for e in edges.chunks(nl) {
            let xs: Vec<T> = (0..nl).map(|l| T::from_f64_lossy(e[l % e.len()])).collect();
            // SAFETY: as above.
            let got = unsafe { vexp(&xs) };
            for (v, g) in xs.iter().zip(got) {
                assert!(same(*v, g), "x = {v:?}: {g:?} vs {:?}", scalar(*v));
            }
        }
        checked
    }

    #[test]
    fn register_exp_is_the_scalar_exp_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx512f")
            || !std::arch::is_x86_feature_detected!("avx512vl")
            || !std::arch::is_x86_feature_detected!("avx512dq")
            || !std::arch::is_x86_feature_detected!("avx512bw")
        {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let f32_edges = [0.0, -0.0, -103.27, -103.97, -104.0, -104.01, -1e30, f64::from(f32::MIN), f64::NAN];
        let n = matches_scalar::<f32>(exp_nonpos_f32::<true>, -110.0, 0.007_3, &f32_edges);
        assert!(n > 200_000, "{n} values checked");
        let f64_edges =
            [0.0, -0.0, -708.3, -708.5, -744.4, -745.1, -745.2, -745.21, -746.0, -1e300, f64::MIN, f64::NAN];
        let n = matches_scalar::<f64>(exp_nonpos_f64::<true>, -750.0, 0.011_3, &f64_edges);
        assert!(n > 500_000, "{n} values checked");
    }
}
