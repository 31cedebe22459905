//! Pass 2 in one sweep per row for `f32` and `f64` on AVX-512: 2D images and 3D volumes, an L1
//! or L2 length, 1 to 4 channels (every other case takes the row-line kernels of the parent
//! module). The kernel is written once over the register operations of [`simd::Simd`].
//!
//! A row is done in chunks of one register's pixels (16 of `f32`, 8 of `f64`), and within a
//! chunk class by class: the chunk's image values, their offsets to the centre, and the sums
//! over classes (`Σ y·g`, the fidelity and length terms) stay in registers, and each class's
//! fluxes go straight into its gradient, so a class-pixel is loaded and stored far fewer times
//! than through the per-class row lines. What crosses chunks and rows is small: per class, the W flux of the chunk's last
//! pixel (the next chunk's first pixel needs it) and the line of H fluxes of the row above
//! (`up`, updated in place as the row's own H fluxes are computed). In 3D a row also pairs with
//! the same row of the next slice (its D fluxes), and reads the D fluxes of the same row of the
//! slice before from a ring of `H + 1` rows of every class (the parent's `fd_ring`, in its
//! layout: the block's first slice takes them from the row-line kernels, as `up` of the
//! block's first row). With logits the chunk's `g`
//! of every class waits in a small buffer until `Σ y·g` is complete, then the outputs overwrite
//! the cached probabilities of the chunk. The row's last chunk uses masked loads and stores.
//!
//! With a gradient, each row's chunks start where the gradient's row is 64-byte aligned: the
//! first chunk starts up to a register's lanes before column 0 and has only its last lanes on
//! the row (masked, like the last). Stores that straddle two cache lines cost about 5% of S4's
//! time when the buffer is not aligned (a `Vec` from a large allocation is 16 bytes past a
//! page); shifted, every whole chunk's stores are aligned, and can be non-temporal. The sums
//! are the same bits whatever the shift (see [`Sums`]), so results never depend on where the
//! buffer is, and energy alone (unshifted) equals energy with a gradient.
//!
//! The probabilities of the row and the next are copied (or computed: from pass 1's statistics
//! where it kept them, see `pass1::probs_from_stats`) into per-class lines a padded stride
//! apart: read in place, the chunk's lines of all classes would lie a whole plane apart, a
//! power of two in the usual shapes, and so in one set of the first- and second-level caches.
//!
//! With logits and L1, a chunk where some sign may be in doubt (see the parent module; one
//! test per pixel and class, see `Consts::tol_any`) is done again with the parent's per-pair
//! test, and each doubtful sign is recomputed exactly before the class's gradient uses it. The
//! arithmetic is the row-line kernels' (the same
//! fused multiply-adds), but sums are taken in another order, so results differ from theirs in
//! the last bits; energy alone and with a gradient take the same path and agree bitwise.

use core::any::TypeId;

use msloss_core::{LengthKind, Real};

// The flags of [`block`]: the parent's `L1` (else L2) and `MASKED` of `flux_fused`, and its
// `CL_LOGITS` of `class_line` (with L1, the signs of logits can be in doubt).
use super::{
    Block, CL_LOGITS as LOGITS, Exact, GradRows, L1, MASKED, MAX_FUSED_CHANNELS, PADDED_LANES, Pass2, Problem, Scratch,
    padded_stride, prefetch, prefetch_line, prefetch_rows, prefetch_span, stream_fence,
};
use crate::Isa;
use pass1::PREFETCH_ROWS;
use simd::{Simd, lanes};

pub(crate) mod pass1;
mod simd;

/// The flag of [`block`] for a 3D volume (with the parent's three: `L1`, `MASKED`, `LOGITS`).
const D3: u8 = 8;

/// The most lanes a register of any of the types has: 16 of `f32`.
const L: usize = PADDED_LANES;
/// Chunks whose sums are added in `T` before they are added in `f64`.
const FOLD_CHUNKS: usize = 16;

/// Whether [`pass2`] handles this problem in the kernel copy `isa`.
#[inline(always)]
pub(crate) fn usable<T: Real>(isa: Isa, p: &Problem<'_, T>, length: LengthKind) -> bool {
    isa == Isa::Avx512
        && (TypeId::of::<T>() == TypeId::of::<f32>() || TypeId::of::<T>() == TypeId::of::<f64>())
        && (1..=MAX_FUSED_CHANNELS).contains(&p.c)
        && p.n <= MAX_CLASSES
        && matches!(length, LengthKind::L1 | LengthKind::L2)
}

/// Pass 2 over one block (see the module docs); fills `part` as the parent's `pass2` does, and
/// with `grad` writes the block's rows of the gradient.
///
/// # Safety
/// [`usable`] must hold (the CPU has the AVX-512 subsets of `Isa::Avx512`).
pub(crate) unsafe fn pass2<T: Real>(
    p: &Problem<'_, T>,
    k: &Pass2<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    grad: Option<GradRows<T>>,
    part: &mut [f64],
) {
    // SAFETY: (both) the caller's contract; `T` is the type named.
    unsafe {
        if TypeId::of::<T>() == TypeId::of::<f32>() {
            typed::<T, f32>(p, k, blk, s, grad, part);
        } else {
            typed::<T, f64>(p, k, blk, s, grad, part);
        }
    }
}

/// [`pass2`] for `T`, which is `U`.
///
/// # Safety
/// As for [`pass2`], and `T` is `U`.
#[inline(always)]
unsafe fn typed<T: Real, U: Simd>(
    p: &Problem<'_, T>,
    k: &Pass2<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    grad: Option<GradRows<T>>,
    part: &mut [f64],
) {
    let (p, s, grad) = retype::<T, U>(p, s, grad);
    // SAFETY: `T` is `U` (`retype` asserts it): the cast only names the type by what it is.
    let k = unsafe { &*core::ptr::from_ref(k).cast::<Pass2<'_, U>>() };
    let flags = u8::from(k.length == LengthKind::L1) * L1
        + u8::from(p.mask.is_some()) * MASKED
        + u8::from(p.logits) * LOGITS
        + u8::from(p.d > 1) * D3;
    macro_rules! dispatch {
        ($($c:literal)*; $($f:literal)*) => {
            dispatch!(@c ($($c)*) ($($f)*))
        };
        (@c ($($c:literal)*) $fs:tt) => {
            match p.c {
                $($c => dispatch!(@f $c $fs),)*
                _ => unreachable!("1 to 4 channels"),
            }
        };
        (@f $c:literal ($($f:literal)*)) => {
            match flags {
                // SAFETY: the caller's contract.
                $($f => unsafe { block::<U, $c, $f>(p, k, blk, s, grad, part) },)*
                _ => unreachable!("four flag bits"),
            }
        };
    }
    dispatch!(1 2 3 4; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
}

/// The problem, scratch and gradient rows of a kernel generic over `T` as the type `U` that `T`
/// is (asserted: anything else panics).
#[inline(always)]
fn retype<'a, 'p, T: Real, U: Real>(
    p: &'a Problem<'p, T>,
    s: &'a mut Scratch<T>,
    grad: Option<GradRows<T>>,
) -> (&'a Problem<'p, U>, &'a mut Scratch<U>, Option<GradRows<U>>) {
    assert!(TypeId::of::<T>() == TypeId::of::<U>(), "a chunked kernel runs on the type it is given");
    // SAFETY: `T` is `U` (asserted): the casts only name the types by what they are.
    unsafe {
        (
            &*core::ptr::from_ref(p).cast::<Problem<'p, U>>(),
            &mut *core::ptr::from_mut(s).cast::<Scratch<U>>(),
            grad.map(|g| GradRows::<U> { ptr: g.ptr.cast(), len: g.len }),
        )
    }
}

/// The part of a scratch buffer from its first 64-byte boundary, where its lines start
/// (`Scratch::prepare` sizes the buffers with room for the offset).
#[inline(always)]
pub(crate) fn aligned<T>(v: &[T]) -> &[T] {
    &v[first_boundary(v)..]
}

/// [`aligned`], mutable.
#[inline(always)]
pub(crate) fn aligned_mut<T>(v: &mut [T]) -> &mut [T] {
    let at = first_boundary(v);
    &mut v[at..]
}

/// The index of `v`'s first element on a 64-byte boundary (at most its length).
#[inline(always)]
fn first_boundary<T>(v: &[T]) -> usize {
    v.as_ptr().align_offset(64).min(v.len())
}

/// The lines of one row of every class: class `i` starts `i·stride` after `ptr`.
struct ClassRows<T> {
    ptr: *const T,
    stride: usize,
}

impl<T> Clone for ClassRows<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ClassRows<T> {}

/// The flux, length term and doubt of the pairs `(a, b)` lane by lane, with weights `wt`
/// (`weighted`: masked or at the row's end; a zero weight makes the pair missing): `λ·sign(d)`
/// and `|d|` (L1) or `2λ·d` and `d²` (L2) of `d = (b − a)·wt`, and (with logits and L1) the
/// lanes whose sign is in doubt, `|d| ≤ tol·(a + b)` on a pair that is not missing (as the
/// parent's `pair`). With `sign_only` (logits and L1, unweighted), the L1 flux is `±λ` by
/// `d`'s sign bit alone and no doubt is returned: the caller tests doubt for both of a pixel's
/// pairs at once (see [`Consts::tol_any`]), and a zero `d` is always in doubt there.
#[inline(always)]
unsafe fn pairs<T: Simd, const F: u8>(
    weighted: bool,
    sign_only: bool,
    a: T::V,
    b: T::V,
    wt: T::V,
    k: &Consts<'_, T>,
) -> (T::V, T::V, u32) {
    // SAFETY: (all operations here) the caller runs with AVX-512.
    unsafe {
        let zero = T::zeros();
        let d = if weighted { T::vmul(T::vsub(b, a), wt) } else { T::vsub(b, a) };
        if F & L1 == 0 {
            return (T::vmul(T::splat(k.lam + k.lam), d), T::vmul(d, d), 0);
        }
        let ad = T::vabs(d);
        if sign_only {
            return (T::with_sign_of(k.lam, d), ad, 0);
        }
        let phi = T::keep(T::ne_ordered(d, zero), T::with_sign_of(k.lam, d));
        if F & LOGITS == 0 {
            return (phi, ad, 0);
        }
        let slack = T::vfmadd(T::vadd(a, b), T::splat(k.tol), T::vsub(zero, ad));
        let mut doubt = T::ge_ordered(slack, zero);
        if weighted {
            doubt &= T::ne_unordered(wt, zero);
        }
        (phi, ad, doubt)
    }
}

/// What a row's chunks read and write.
struct Row<'a, T> {
    /// This row's probabilities (a copy in scratch).
    y0: ClassRows<T>,
    /// The next row's probabilities (`has_h`; a copy in scratch).
    y1: ClassRows<T>,
    has_h: bool,
    /// In 3D, the same row of the next slice's probabilities (`has_d`; a copy in scratch).
    y2: ClassRows<T>,
    has_d: bool,
    /// `φ_H` of the row above.
    up: ClassRows<T>,
    /// This row's `φ_H`.
    up_out: ClassRows<T>,
    /// In 3D, `φ_D` of the same row of the slice before (zeros in the first slice).
    back: ClassRows<T>,
    /// In 3D, this row's `φ_D` (`has_d`).
    back_out: ClassRows<T>,
    out: ClassRows<T>,
    /// Whether `out` is written with non-temporal stores (a buffer too large to stay in cache,
    /// and every chunk 64-byte aligned).
    stream: bool,
    m0: Option<&'a [T]>,
    m1: Option<&'a [T]>,
    /// The mask's row of the next slice (`has_d`).
    m2: Option<&'a [T]>,
    /// Channel `c` of this row of the image at `c·sp`.
    image: &'a [T],
    sp: usize,
    w: usize,
    /// A slice's pixels, `H·W` (the D pair's stride).
    hw: usize,
    exact: Exact<'a, 'a, T>,
}

/// A sample's per-class constants (see the parent's `ClassConsts`): `cent` and `weights` hold
/// `n·C` values, `base` and `corr` `n`, `center` `C` ([`Consts::new`] checks it; the chunks read
/// them unchecked).
struct Consts<'a, T> {
    n: usize,
    cent: &'a [T],
    center: &'a [T],
    weights: &'a [T],
    base: &'a [T],
    corr: &'a [T],
    wf: T,
    lam: T,
    /// An L1 sign is in doubt where `|d| ≤ tol·(a + b)` (logits; zero otherwise).
    tol: T,
    /// A wider test of both of a pixel's pairs at once, `fma(a, tol_any, −min(|d_W|, |d_H|)) ≥
    /// −tiny`, that needs only their shared `a`: it holds wherever either pair is in doubt by
    /// `tol` (see [`tol_any`]), so a chunk where it holds nowhere has no sign in doubt. (The
    /// few more chunks it flags are done again with the `tol` test, which decides: results
    /// do not change.)
    tol_any: T,
    /// The type's smallest subnormal (`tiny` above).
    tiny: T,
    scale: T,
}

impl<'a, T: Real> Consts<'a, T> {
    /// The sample's constants with `C` channels.
    fn new<const C: usize>(p: &Problem<'_, T>, k: &'a Pass2<'a, T>, logits_l1: bool) -> Self {
        let n = p.n;
        // Softmax outputs carry a relative error below (N + 4)·ε (see the parent's `flux_row`).
        let tol = if logits_l1 { T::from_f64_lossy(2.0 * (n + 4) as f64) * T::epsilon() } else { T::zero() };
        assert!(
            k.centroids.len() == n * C
                && k.weights.len() == n * C
                && k.base.len() == n
                && k.corr.len() == n
                && k.center.len() == C,
            "one sample's constants"
        );
        Self {
            n,
            cent: k.centroids,
            center: k.center,
            weights: k.weights,
            base: k.base,
            corr: k.corr,
            wf: k.fidelity_weight,
            lam: k.lambda,
            tol,
            tol_any: T::from_f64_lossy(tol_any(tol.to_f64_lossless(), T::epsilon().to_f64_lossless())),
            tiny: T::min_positive_value() * T::epsilon(),
            scale: k.scale,
        }
    }
}

/// [`Consts::tol_any`] for the test `|d| ≤ tol·(a + b)` of `a, b ≥ 0` in a type of machine
/// epsilon `eps`, for `tol < 1/4` ([`MAX_CLASSES`] keeps it far below).
///
/// As computed, `fma(a ⊕ b, tol, −|d|) ≥ 0` (the rounded difference may be `−0`), that test
/// holds only where `|d| ≤ t·(a + b) + h`, with `t = tol·(1 + eps)` (the sum rounds up by less)
/// and `h` half the smallest subnormal (a difference rounds to `−0` only from `−h` up).
/// Where `b ≤ a`, `|d| ≤ 2t·a + h`. Where `b > a`, `b·(1 − t) ≤ a·(1 + t) + h`, so
/// `a + b ≤ (2a + h)/(1 − t)` and `|d| ≤ 2t/(1 − t)·a + h/(1 − t)`, below `2t/(1 − t)·a + 2h`.
/// The wider test holds wherever `|d| ≤ tol_any·a + 2h` exactly (the fma rounds once and
/// `−2h` is a float), so `tol_any ≥ 2t/(1 − t)` suffices: this returns that with room for its
/// own roundings (in `f64`, and to the type). Where `a ≈ b` it is `tol`'s band, `|d| ≲ 2tol·a`.
fn tol_any(tol: f64, eps: f64) -> f64 {
    debug_assert!((0.0..0.25).contains(&tol), "tol {tol}");
    let t = tol * (1.0 + eps);
    2.0 * t / (1.0 - t) * (1.0 + 1.0 / 1024.0)
}

/// The most classes the chunked pass 2 takes: [`tol_any`] needs `2(N + 4)·ε < 1/4` (in `f32`,
/// `N` below a million).
const MAX_CLASSES: usize = 1 << 16;

/// One chunk of a row, lane `l` on column `a + l`: with `PARTIAL`, the lanes of `valid` only
/// (the row's first chunk, which starts before column 0 when the row's chunks are aligned to
/// its gradient, or its last, which ends at the row's end; or any chunk of a row without a next
/// row, or in 3D without a next slice), of which those of `next` have a W pair; otherwise all
/// lanes, on columns that all exist, the one after the chunk too, and the row has a next row
/// (and in 3D a next slice). Returns the chunk's
/// `[fidelity, length, gradient check]` lanes (exact zeros on the lanes not in `valid`), and
/// whether some L1 sign was in doubt (then nothing was written).
///
/// # Safety
/// AVX-512 F, VL, DQ and BW; the row's lines as [`Row`] says, this block's row only; the
/// columns of `valid` exist, and `next ⊆ valid` (both `FULL` without `PARTIAL`, and then
/// `row.has_h`, and `row.has_d` in 3D); `k` as [`Consts::new`] makes it; `carry` and `carry_out` hold at least `k.n`
/// values, `gbuf` `k.n` registers' worth.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "a chunk reads the row, the constants, its place and the carried state")]
unsafe fn chunk<T: Simd, const C: usize, const F: u8, const PARTIAL: bool, const EXACT: bool>(
    row: &Row<'_, T>,
    k: &Consts<'_, T>,
    a: isize,
    (valid, next): (u32, u32),
    grad: bool,
    (carry, carry_out): (&[T], &mut [T]),
    gbuf: &mut [T],
) -> ([T::V; 3], bool) {
    let masked = F & MASKED != 0;
    let weighted = masked || PARTIAL;
    let logits = F & LOGITS != 0;
    let d3 = F & D3 != 0;
    // Unweighted chunks test doubt for the pixel at once (see `Consts::tol_any`), and the exact
    // pass uses `pairs`' test.
    let test_any = F & L1 != 0 && logits && !weighted && !EXACT;
    let (n, nl) = (k.n, T::LANES);
    debug_assert!(
        k.cent.len() == n * C
            && k.weights.len() == n * C
            && k.base.len() == n
            && k.corr.len() == n
            && carry.len() >= n
            && carry_out.len() >= n
            && gbuf.len() >= n * nl
            && (weighted || (row.has_h && (row.has_d || !d3))),
        "a chunk's constants and carried state"
    );
    // Only rows with a next row (and a next slice) take unweighted chunks.
    let has_h = !weighted || row.has_h;
    let has_d = d3 && (!weighted || row.has_d);
    // Column `a` of the line that starts at `line` (before it, for a first chunk that starts
    // before column 0: only its lanes past the line's start are read or written).
    let at = |line: *const T| line.wrapping_offset(a);
    // SAFETY: (the whole body) AVX-512 by the caller's contract; every load and store below
    // is masked to the lanes of `valid`, or of `next` for the next pixel's values, whose
    // columns are within the row's lines (masked lanes are not accessed and cannot fault).
    // The constants and carried state are read at `cls < n` (registers from `cls·nl` in
    // `gbuf`), within their lengths (the contract).
    unsafe {
        let zero = T::zeros();
        let one = T::splat(T::one());
        let (valid, next) = if PARTIAL { (valid, next) } else { (T::FULL, T::FULL) };
        let xs: [T::V; C] = core::array::from_fn(|c| T::ld(at(row.image.as_ptr().wrapping_add(c * row.sp)), valid));
        // Pair weights: the masks, and zero where a pair is missing.
        let (m0, mw, mh, md) = if weighted {
            let m0 = match row.m0 {
                Some(m) => T::ld(at(m.as_ptr()), valid),
                None => T::keep(valid, one),
            };
            let mn = match row.m0 {
                Some(m) => T::ld(at(m.as_ptr()).wrapping_add(1), next),
                None => T::keep(next, one),
            };
            let mh = match (row.m1, row.has_h) {
                (Some(m), true) => T::vmul(m0, T::ld(at(m.as_ptr()), valid)),
                _ => m0,
            };
            let md = match (row.m2, has_d) {
                (Some(m), true) => T::vmul(m0, T::ld(at(m.as_ptr()), valid)),
                _ => m0,
            };
            (m0, T::vmul(m0, mn), mh, md)
        } else {
            (one, one, one, one)
        };
        // With logits, `ĉ − x` (see the parent's `ClassConsts`).
        let us: [T::V; C] = core::array::from_fn(|c| T::vsub(T::splat(*k.center.get_unchecked(c)), xs[c]));
        let (cent, weights, base, corr) = (k.cent.as_ptr(), k.weights.as_ptr(), k.base.as_ptr(), k.corr.as_ptr());
        let (carry, carry_out, gbuf) = (carry.as_ptr(), carry_out.as_mut_ptr(), gbuf.as_mut_ptr());
        let (mut fid, mut len_sum, mut yg) = (zero, zero, zero);
        let mut doubt = 0u32;
        let (tol_any, neg_tiny) = (T::splat(k.tol_any), T::splat(-k.tiny));
        for cls in 0..n {
            let y0 = at(row.y0.ptr.wrapping_add(cls * row.y0.stride));
            let yc = T::ld(y0, valid);
            let yn = T::ld(y0.wrapping_add(1), next);
            let (mut pw, lw, dw) = pairs::<T, F>(weighted, test_any, yc, yn, mw, k);
            let (mut ph, lh, dh) = if has_h {
                let y1 = T::ld(at(row.y1.ptr.wrapping_add(cls * row.y1.stride)), valid);
                pairs::<T, F>(weighted, test_any, yc, y1, mh, k)
            } else {
                (zero, zero, 0)
            };
            let (mut pd, ld, dd) = if has_d {
                let y2 = T::ld(at(row.y2.ptr.wrapping_add(cls * row.y2.stride)), valid);
                pairs::<T, F>(weighted, test_any, yc, y2, md, k)
            } else {
                (zero, zero, 0)
            };
            let lwh = T::vadd(lw, lh);
            len_sum = T::vadd(len_sum, if d3 { T::vadd(lwh, ld) } else { lwh });
            // The fidelity term, and the fidelity part of `g` (as the parent's `class_line`).
            let mut d2 = zero;
            let mut dc = if logits { T::splat(*base.add(cls)) } else { zero };
            for c in 0..C {
                let cc = T::splat(*cent.add(cls * C + c));
                let e = T::vsub(xs[c], cc);
                d2 = T::vfmadd(e, e, d2);
                dc = if logits {
                    T::vfmadd(us[c], T::splat(*weights.add(cls * C + c)), dc)
                } else {
                    T::vfmadd(cc, e, dc)
                };
            }
            let my = if weighted { T::vmul(m0, yc) } else { yc };
            fid = T::vfmadd(my, d2, fid);
            if !grad {
                continue;
            }
            if test_any {
                // (`lw`, `lh` and `ld` are the pairs' `|d|`.)
                let least = if d3 { T::vmin(T::vmin(lw, lh), ld) } else { T::vmin(lw, lh) };
                let slack = T::vfmsub(yc, tol_any, least);
                doubt |= T::ge_ordered(slack, neg_tiny);
            } else if !EXACT {
                doubt |= dw | dh | dd;
            } else if (dw | dh | dd) != 0 {
                let ex = Exact { cls, ..row.exact };
                let mut fw = [T::zero(); L];
                let mut fh = [T::zero(); L];
                let mut fd = [T::zero(); L];
                T::storeu(fw.as_mut_ptr(), pw);
                T::storeu(fh.as_mut_ptr(), ph);
                T::storeu(fd.as_mut_ptr(), pd);
                // (Lanes in doubt are lanes of `valid`: their columns exist.)
                for l in 0..nl {
                    let i = a.wrapping_add_unsigned(l) as usize;
                    if dw >> l & 1 != 0 {
                        fw[l] = ex.flux(i, 1, k.lam);
                    }
                    if dh >> l & 1 != 0 {
                        fh[l] = ex.flux(i, row.w, k.lam);
                    }
                    if dd >> l & 1 != 0 {
                        fd[l] = ex.flux(i, row.hw, k.lam);
                    }
                }
                pw = T::loadu(fw.as_ptr());
                ph = T::loadu(fh.as_ptr());
                pd = T::loadu(fd.as_ptr());
            }
            let up = T::ld(at(row.up.ptr.wrapping_add(cls * row.up.stride)), valid);
            if has_h {
                T::st(at(row.up_out.ptr.wrapping_add(cls * row.up_out.stride)).cast_mut(), valid, ph);
            }
            let back = if d3 { T::ld(at(row.back.ptr.wrapping_add(cls * row.back.stride)), valid) } else { zero };
            if has_d {
                T::st(at(row.back_out.ptr.wrapping_add(cls * row.back_out.stride)).cast_mut(), valid, pd);
            }
            // The W flux before each pixel: the previous lane's, or the previous chunk's last.
            *carry_out.add(cls) = T::last(pw);
            let pb = T::shift_in(pw, *carry.add(cls));
            let f = match (logits, masked) {
                (true, true) => T::vmul(m0, dc),
                (true, false) => dc,
                (false, true) => T::vmul(T::vmul(T::splat(k.wf), m0), T::vfmadd(T::splat(-*corr.add(cls)), dc, d2)),
                (false, false) => T::vmul(T::splat(k.wf), T::vfmadd(T::splat(-*corr.add(cls)), dc, d2)),
            };
            let own = T::vadd(T::vsub(T::vsub(pb, pw), ph), up);
            let own = if d3 { T::vadd(T::vsub(own, pd), back) } else { own };
            let g = T::vadd(f, own);
            if logits {
                yg = T::vfmadd(yc, g, yg);
                T::storeu(gbuf.add(cls * nl), g);
            } else {
                let v = T::vmul(T::splat(k.scale), g);
                yg = T::vadd(yg, T::vmul(v, zero));
                T::put(at(row.out.ptr.wrapping_add(cls * row.out.stride)).cast_mut(), valid, v, row.stream);
            }
        }
        if doubt != 0 {
            // Some sign is in doubt: the caller does the chunk again with `EXACT`.
            return ([fid, len_sum, yg], true);
        }
        if logits && grad {
            // ∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m), over the cached probabilities.
            let scale = T::splat(k.scale);
            for cls in 0..n {
                let g = T::loadu(gbuf.add(cls * nl));
                let to = at(row.out.ptr.wrapping_add(cls * row.out.stride));
                let yc = T::ld(at(row.y0.ptr.wrapping_add(cls * row.y0.stride)), valid);
                T::put(to.cast_mut(), valid, T::vmul(T::vmul(scale, yc), T::vsub(g, yg)), row.stream);
            }
            // A non-finite `g` makes `Σ y·g` non-finite too (0·∞ is NaN).
            yg = T::vmul(yg, zero);
        }
        ([fid, len_sum, yg], false)
    }
}

/// Copies `from` to `to` (as long) a register's lanes at a time; with `ahead`, asks for the
/// line `ahead` values past each line it reads (the same columns of a later row: see
/// `pass1::exponentials`).
///
/// # Safety
/// The CPU has AVX-512 F, VL, DQ and BW.
#[inline(always)]
unsafe fn copy_line<T: Simd>(to: &mut [T], from: &[T], ahead: Option<usize>) {
    assert_eq!(to.len(), from.len(), "a line is copied to a line as long");
    let (nl, len) = (T::LANES, from.len());
    let (src, dst) = (from.as_ptr(), to.as_mut_ptr());
    let mut j = 0;
    // SAFETY: the CPU has the features (the contract); whole registers from `j` while they fit
    // in both lines, then the lanes of `lanes(len − j)` only (the others are not accessed).
    unsafe {
        while j < len {
            if let Some(ahead) = ahead {
                prefetch(src.wrapping_add(j + ahead));
            }
            if j + nl <= len {
                T::storeu(dst.add(j), T::loadu(src.add(j)));
            } else {
                let m = lanes(len - j);
                T::st(dst.add(j), m, T::ld(src.add(j), m));
            }
            j += nl;
        }
    }
}

/// Running sums of a row: fidelity, length and the gradient check, in lanes of `T` over
/// windows of [`FOLD_CHUNKS`] registers' worth of columns from column 0, then in `f64`.
///
/// The sums are the same bit for bit wherever the row's chunks start: each lane adds the same
/// columns in the same order whatever the shift `s` of the chunks (lane `l` on the columns
/// `≡ l − s`), a chunk that straddles a window's end adds its lanes on either side to either
/// window, and the fold of a window's lanes does not depend on where they start.
struct Sums<T: Simd> {
    lanes: [T::V; 3],
    /// The column where the current window ends.
    end: isize,
    total: [f64; 3],
}

impl<T: Simd> Sums<T> {
    /// A window's columns.
    const WINDOW: isize = (FOLD_CHUNKS * T::LANES) as isize;

    /// Sums of a row.
    #[inline(always)]
    fn new() -> Self {
        // SAFETY: AVX-512 F, in the callers' kernel.
        Self { lanes: [unsafe { T::zeros() }; 3], end: Self::WINDOW, total: [0.0; 3] }
    }

    /// Adds the lanes of the chunk that starts at column `a`.
    #[inline(always)]
    fn add(&mut self, v: [T::V; 3], a: isize) {
        let nl = T::LANES as isize;
        // SAFETY: (all operations here) AVX-512 F, in the callers' kernel.
        unsafe {
            if a + nl <= self.end {
                for (acc, v) in self.lanes.iter_mut().zip(v) {
                    *acc = T::vadd(*acc, v);
                }
                if a + nl == self.end {
                    self.flush();
                }
            } else {
                // The lanes before the window's end, then the rest in the next window.
                let before = lanes((self.end - a) as usize);
                for (acc, v) in self.lanes.iter_mut().zip(v) {
                    *acc = T::vadd(*acc, T::keep(before, v));
                }
                self.flush();
                for (acc, v) in self.lanes.iter_mut().zip(v) {
                    *acc = T::keep(!before & T::FULL, v);
                }
            }
        }
    }

    /// Adds the lanes to the totals and starts the next window.
    #[inline(always)]
    fn flush(&mut self) {
        for (t, acc) in self.total.iter_mut().zip(self.lanes.iter_mut()) {
            // SAFETY: as above.
            unsafe {
                *t += T::fold(*acc);
                *acc = T::zeros();
            }
        }
        self.end += Self::WINDOW;
    }
}

/// How many rows ahead pass 2 asks for the gradient's lines where it reads the probabilities
/// from a sample's own buffer (S2 `f32`, two threads, 8 alternations: 3.38 ms without, 3.09
/// with 1 row, 3.06 with 2, 3.10 with 3; one thread 6.36 without, 5.85 with 2; S1 unchanged).
const GRAD_PREFETCH_ROWS: usize = 2;

/// The fused pass 2 over one block (see the module docs).
///
/// # Safety
/// The CPU must have AVX-512 F, VL, DQ and BW, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
unsafe fn block<T: Simd, const C: usize, const F: u8>(
    p: &Problem<'_, T>,
    k: &Pass2<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    grad: Option<GradRows<T>>,
    part: &mut [f64],
) {
    part.fill(0.0);
    s.forget();
    let (n, w, h, sp) = (p.n, p.w, p.h, p.sp());
    // The sample's rows (`D·H`: row `r` is row `r mod H` of slice `r / H`).
    let rows = p.d * h;
    let b = blk.b;
    let logits = F & LOGITS != 0;
    let d3 = F & D3 != 0;
    // With logits and a gradient pass 1 may have cached the probabilities (`k.cache`, in the
    // gradient buffer or a buffer of their own; see `SoftmaxCache`); otherwise each row's are
    // computed here.
    debug_assert!(k.cache.is_none() || (logits && grad.is_some()), "only logits with a gradient are cached");
    let cached = if logits { k.cache } else { None };
    let consts = Consts::new::<C>(p, k, logits && F & L1 != 0);
    s.cache = cached;
    // The rows read from the cache (`Pass2::cached_rows`).
    let (lo, hi) = k.cached_rows(p, grad, blk);
    (s.cache_lo, s.cache_hi) = (lo, hi);
    // The probabilities of the row and the next, and the H fluxes of the row above and this
    // one, each class's line `ws` apart: a stride that is not a multiple of a page, so that the
    // chunk's lines of all classes fall in different cache sets (the sample's planes are a
    // power of two apart in the usual shapes, which would put all of them in one set).
    let ws = padded_stride(w);
    let nl = T::LANES;
    // Each row's chunks start where its gradient's are 64-byte aligned (see [`Sums`]): the
    // chunks start `shift(r)` columns before column 0 (a first chunk with only its last lanes
    // on the row). With planes a whole number of registers apart, every class's row has the
    // same alignment; rows of a single chunk keep theirs.
    let grad_ptr = grad.map_or(core::ptr::null(), |g| g.ptr.cast_const());
    let shifted = grad.is_some() && sp % nl == 0 && w > nl;
    let shift = |r: usize| {
        if shifted { grad_ptr.wrapping_add(b * n * sp + r * w).addr() / size_of::<T>() % nl } else { 0 }
    };
    // Every class's line starts `off` after the scratch buffer's first 64-byte boundary, which
    // aligns the chunks of the block's first row in scratch too, and leaves room before
    // column 0 for a first chunk's lanes that are not on the row.
    let off = nl + shift(blk.r0);
    // Sized by `Scratch::prepare`; the raw reads and writes below rely on it.
    let lines = [&s.up, &s.up_next, &s.ycur, &s.ynext];
    // In 3D, the ring of `φ_D` lines (`H + 1` rows of `n` lines of `w`, as the parent's
    // `fd_ring`) and the lines of the next slice's row.
    let ring = h + 1;
    assert!(
        lines.iter().all(|l| aligned(l).len() >= off + n * ws)
            && (!d3
                || (aligned(&s.yd).len() >= off + n * ws
                    && s.fd_ring.len() >= ring * n * w
                    && s.fd_keys.len() == ring
                    && s.zero.len() >= w))
            && s.carry.len() >= 2 * n
            && s.gbuf.len() >= n * T::LANES
            && s.inv.len() >= pass1::MAX_TILE,
        "scratch sized"
    );
    // `φ_H` of the row above the block (in its slice), and in 3D `φ_D` of the block's first
    // rows' slice before, computed as the row-line kernels do (rows of another block, whose
    // probabilities may already be overwritten there: recomputed). In 3D the row-line kernels
    // leave each row's `φ_D` in the ring, where the rows here read and write them.
    s.up.fill(T::zero());
    if grad.is_some() && blk.r0 > 0 {
        let first = if d3 { blk.r0.saturating_sub(h) } else { blk.r0 - 1 };
        let mut above = 0;
        for (clock, r) in (first..blk.r0).enumerate() {
            above = s.flux_slot::<true>(p, k, b, r, clock as u64 + 1);
        }
        if !blk.r0.is_multiple_of(h) {
            let flen = 3 * n * w;
            for cls in 0..n {
                let from = above * flen + (3 * cls + 1) * w;
                aligned_mut(&mut s.up)[off + cls * ws..][..w].copy_from_slice(&s.flux[from..from + w]);
            }
        }
    }
    // The gradient's rows (only taken with a gradient).
    let own_rows = |r: usize| ClassRows { ptr: grad_ptr.wrapping_add(b * n * sp + r * w), stride: sp };
    // For `f32` logits computed here, the chunk loop of row `r` asks for the logits of row
    // `r + 2` a column at a time (see `pass1::column_ahead`); the block's first row's copy asks
    // for the second.
    let by_column = logits && cached.is_none() && pass1::column_ahead::<T>();
    let prefetch_grad = grad.is_some() && !p.stream && cached.is_some() && !k.in_place(grad);
    // Loads probability row `r` into `dst`: copied from the cache or the given probabilities,
    // or computed (logits not cached, or a row of the next block).
    macro_rules! load_row {
        ($r:expr, $dst:expr) => {{
            let r = $r;
            let dst = &mut aligned_mut(&mut $dst)[off..];
            // Whether a computed row asks for the next as it reads (else the chunk loop does).
            let prefetch_next = !by_column || r == blk.r0;
            if !logits {
                let ahead = (r + PREFETCH_ROWS < rows).then_some(PREFETCH_ROWS * w);
                for cls in 0..n {
                    let from = &p.scores[(b * n + cls) * sp + r * w..][..w];
                    // SAFETY: the CPU has the features (this function's contract).
                    unsafe { copy_line(&mut dst[cls * ws..][..w], from, ahead) };
                }
            } else if let (Some(g), true) = (cached, r < hi) {
                let ahead = (r + PREFETCH_ROWS < hi).then_some(PREFETCH_ROWS * w);
                for cls in 0..n {
                    // SAFETY: a row pass 1 cached that nothing writes while it is read (`lo ≤ r <
                    // hi`: rows before `r` are below `lo` only in a sample's own buffer); the CPU
                    // has the features (this function's contract).
                    unsafe { copy_line(&mut dst[cls * ws..][..w], g.row_ref(p, b, cls, r), ahead) };
                }
            } else if let Some(st) = k.stats {
                // SAFETY: as below; pass 1 wrote every row's statistics (`Pass2::stats`), and
                // `Stats::row` asserts the row is in the buffer.
                unsafe { pass1::probs_from_stats(p, b, r, st.row(p, b, r), dst.as_mut_ptr(), ws, prefetch_next) };
            } else {
                // SAFETY: the CPU has the features (this function's contract); row `r` of sample
                // `b` is in the input; the lines and `inv` are sized as `softmax_row` needs
                // (asserted at the block's start; `ws` is `w` rounded up to 16 and 16 more) and
                // only borrowed here.
                unsafe { pass1::softmax_row(p, b, r, dst.as_mut_ptr(), ws, s.inv.as_mut_ptr(), prefetch_next) };
            }
        }};
    }
    load_row!(blk.r0, s.ycur);
    // The ring's start (3D; written through, so taken from a mutable borrow, after `flux_slot`
    // filled it and before the rows read and write it).
    let ring_ptr = s.fd_ring.as_mut_ptr();
    // Every whole chunk of the gradient starts on a 64-byte boundary when the rows' chunks are
    // shifted to where they are.
    let stream = p.stream && shifted;
    for r in blk.r0..blk.r1 {
        // The inputs of the next rows the sweep will load, ahead of the hardware prefetcher.
        // The probabilities (given, cached or computed) are asked for a line at a time as the
        // row before them is loaded (`copy_line`, `softmax_row`); the mask here, and the logits
        // of the first row past a block whose rows are cached, which nothing before loads.
        if cached.is_some() && r + 2 == hi {
            prefetch_rows(p, None, b, r + 2);
        } else if let Some(mask) = p.mask.filter(|_| r + 2 < rows) {
            prefetch_line(&mask[b * sp + (r + 2) * w..][..w]);
        }
        if r + 1 < rows {
            for c in 0..C {
                prefetch_line(&p.image[(b * C + c) * sp + (r + 1) * w..][..w]);
            }
        }
        // (Pass 1 kept statistics only for logits it did not cache.)
        if let Some(st) = k.stats.filter(|_| r + 2 < rows) {
            prefetch_span(st.row(p, b, r + 2), 2 * w);
        }
        let has_h = r % h + 1 < h;
        // (In 3D the next row is also the next slice's first, which the block may go on to.)
        if has_h || r + 1 < blk.r1 {
            load_row!(r + 1, s.ynext);
        }
        let has_d = d3 && r + h < rows;
        if has_d {
            load_row!(r + h, s.yd);
        }
        let line = |v: &[T]| ClassRows { ptr: aligned(v)[off..].as_ptr(), stride: ws };
        let (y0, y1) = (line(&s.ycur), line(&s.ynext));
        // The ring's lines of row `r` (`n` lines of `w`).
        let ring_row = |r: usize| ClassRows { ptr: ring_ptr.wrapping_add((r % ring) * n * w).cast_const(), stride: w };
        let zeros = ClassRows { ptr: s.zero.as_ptr(), stride: 0 };
        let mask_row = |r: usize| p.mask.map(|m| &m[b * sp + r * w..][..w]);
        let row = Row {
            y0,
            y1,
            has_h,
            y2: if has_d { line(&s.yd) } else { zeros },
            has_d,
            up: line(&s.up),
            up_out: line(&s.up_next),
            back: if d3 && grad.is_some() && r >= h { ring_row(r - h) } else { zeros },
            back_out: if has_d { ring_row(r) } else { zeros },
            out: if grad.is_some() { own_rows(r) } else { y0 },
            stream,
            m0: mask_row(r),
            m1: if has_h { mask_row(r + 1) } else { None },
            m2: if has_d { mask_row(r + h) } else { None },
            image: &p.image[b * C * sp + r * w..],
            sp,
            w,
            hw: h * w,
            exact: Exact { p, b, cls: 0, s0: r * w },
        };
        let (mut carry, mut carry_out) = s.carry.split_at_mut(n);
        carry.fill(T::zero());
        let g = grad.is_some();
        let gbuf = &mut s.gbuf[..];
        let sh = shift(r);
        let mut sums = Sums::<T>::new();
        // What the chunk loop asks for a line of every class at a time: the logits of row
        // `r + 2` (see `by_column`), or, where the probabilities come from a sample's own
        // buffer, the gradient rows it will write `GRAD_PREFETCH_ROWS` rows on, which nothing
        // else brings in (written with plain stores, each line is read first).
        let ahead = if by_column && r + 2 < rows {
            Some(p.scores[b * n * sp + (r + 2) * w..].as_ptr())
        } else if prefetch_grad && r + GRAD_PREFETCH_ROWS < blk.r1 {
            Some(grad_ptr.wrapping_add(b * n * sp + (r + GRAD_PREFETCH_ROWS) * w))
        } else {
            None
        };
        // SAFETY: the CPU has the features (this function's contract). `out` is row `r` of
        // this block's gradient, which no other thread touches and nothing else borrows.
        // `y0`, `y1`, `y2`, `up` and `up_out` point into this thread's scratch (`ycur`,
        // `ynext`, `yd`, `up`, `up_next`), `ws` apart per class with `w` columns each and
        // `off ≥ nl` before the first, sized above and not otherwise borrowed while the chunks
        // run; `back` and `back_out` are two rows of the ring (`w` apart per class; `back` row
        // `r − h`, written by this block or by `flux_slot` above, `back_out` row `r`: distinct
        // entries of `H + 1`), or the zero line; the image and masks are rows of their slices. A first chunk that starts before column 0 has
        // only the lanes from column 0 on, and any chunk only the columns before `w`.
        unsafe {
            // A chunk with a sign in doubt is done again with the exact signs, from the same
            // inputs (the fluxes carried in and the row above's are kept apart from those it
            // writes).
            macro_rules! run {
                ($partial:literal, $a:expr, $masks:expr) => {{
                    let (a, masks) = ($a, $masks);
                    if let Some(z) = ahead {
                        for cls in 0..n {
                            prefetch(z.wrapping_add(cls * sp).wrapping_offset(a));
                        }
                    }
                    let (mut v, doubt) =
                        chunk::<T, C, F, $partial, false>(&row, &consts, a, masks, g, (carry, carry_out), gbuf);
                    if doubt {
                        v = chunk::<T, C, F, $partial, true>(&row, &consts, a, masks, g, (carry, carry_out), gbuf).0;
                    }
                    sums.add(v, a);
                    core::mem::swap(&mut carry, &mut carry_out);
                }};
            }
            let mut a = 0;
            if sh > 0 {
                // The first chunk, on columns `0..nl − sh` (all with a W pair: `w > nl`).
                let on = T::FULL & !lanes(sh);
                run!(true, -(sh as isize), (on, on));
                a = nl - sh;
            }
            // (A row without a next row has only weighted chunks: its H pairs are missing.)
            while a + nl < w {
                if has_h && (has_d || !d3) {
                    run!(false, a as isize, (T::FULL, T::FULL));
                } else {
                    run!(true, a as isize, (T::FULL, T::FULL));
                }
                a += nl;
            }
            run!(true, a as isize, (lanes(w - a), lanes(w - a - 1)));
        }
        sums.flush();
        for (o, v) in part.iter_mut().zip(sums.total) {
            *o += v;
        }
        core::mem::swap(&mut s.ycur, &mut s.ynext);
        if has_h {
            core::mem::swap(&mut s.up, &mut s.up_next);
        } else if d3 {
            // The next slice's first row has no row above.
            s.up.fill(T::zero());
        }
        if has_d && g {
            s.fd_keys[r % ring] = r;
        }
    }
    if stream {
        stream_fence();
    }
    s.cache = None;
}

#[cfg(test)]
mod tests {
    use msloss_core::Real;
    use msloss_core::rng::SplitMix64;

    use super::{MAX_CLASSES, tol_any};

    /// Every pair `(a, b)` in doubt by the kernels' test, `fma(a + b, tol, −|d|) ≥ 0`, is in
    /// doubt by the wider one, `fma(a, tol_any, −|d|) ≥ −tiny`, as both are computed in `T`:
    /// over near ties a few roundings apart, ties scaled by `tol`, and values from 1 down to
    /// the subnormals (where roundings are absolute). Returns how many pairs were in doubt.
    fn wider_test_covers<T: Real>() -> usize {
        let mut rng = SplitMix64::new(41);
        let eps = T::epsilon();
        let tiny = T::min_positive_value() * eps;
        let lowest = tiny.to_f64_lossless().log2();
        let mut in_doubt = 0;
        for n in [1, 2, 3, 21, 150, 1000, MAX_CLASSES] {
            let tol = T::from_f64_lossy(2.0 * (n + 4) as f64) * eps;
            let wide = T::from_f64_lossy(tol_any(tol.to_f64_lossless(), eps.to_f64_lossless()));
            for i in 0..200_000 {
                // `a` from 1 down to a few subnormals, log-uniform.
                let a = T::from_f64_lossy((rng.uniform() * (lowest + 3.0)).exp2());
                let b = match i % 4 {
                    // Within a few multiples of the band, either way.
                    0 => a * (T::one() + T::from_f64_lossy(rng.range(-3.0, 3.0)) * tol),
                    // A few steps of the smallest subnormal away.
                    1 => a + T::from_f64_lossy(rng.range(-8.0, 8.0).round()) * tiny,
                    // A few roundings away.
                    2 => a * (T::one() + T::from_f64_lossy(rng.range(-8.0, 8.0).round()) * eps),
                    // Near the band's edge, relative to the sum.
                    _ => a + (a + a) * tol * T::from_f64_lossy(rng.range(0.9, 1.1)),
                };
                let b = b.max(T::zero());
                let ad = (b - a).abs();
                let narrow = (a + b).mul_add(tol, -ad) >= T::zero();
                let covered = a.mul_add(wide, -ad) >= -tiny;
                assert!(!narrow || covered, "N = {n}: a = {a:?}, b = {b:?}, tol = {tol:?}, wide = {wide:?}");
                in_doubt += usize::from(narrow);
            }
        }
        in_doubt
    }

    #[test]
    fn wider_doubt_test_covers_the_kernels_test() {
        // Enough of the pairs are in doubt that the check means something.
        assert!(wider_test_covers::<f32>() > 200_000);
        assert!(wider_test_covers::<f64>() > 200_000);
    }
}
