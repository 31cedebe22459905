//! The per-block kernels of the two fused passes.
//!
//! Work is split into blocks of whole rows (a row is one line along `W`, indexed by `(d, h)`)
//! of one sample. Arithmetic is in `T`; inner loops run over whole rows with no branches, so
//! the compiler vectorises them. Sums run in [`LANES`] independent accumulators of `T` (the
//! compiler may not reorder a floating-point sum, but it vectorises one already split into
//! lanes) over chunks of [`CHUNK`] elements, and the chunks' sums are added in `f64`, so the
//! rounding error of a sum does not grow with the image size.
//!
//! The one place where `T`'s rounding could change a result by more than a rounding error is
//! the sign of an L1 difference `y_t − y_s` close to zero: there the subgradient jumps by `2λ`.
//! Differences of softmax outputs within their error bound of zero are therefore recomputed
//! exactly as the `f64` reference computes them (rare: a few per million pairs in `f32`).
//!
//! Pass 1 ([`pass1`]) computes the softmax of each row and the block's partial sums of
//! `A_n = Σ m·y_n` and `M_nk = Σ m·y_n·x_k`, and flags invalid values; with logits and a
//! gradient it also stores the probabilities in the gradient buffer. Pass 2 ([`pass2`]) reads
//! back the rows of its block not yet overwritten by their gradient and recomputes the softmax
//! of any other row it needs, then computes the fidelity, the length, and the
//! gradient row by row: the length's contribution to a pixel comes from the "fluxes"
//! `φ_a = λ·∂ℓ/∂d_a` of its own forward differences and of its backward neighbours', so a row
//! needs the fluxes of the row above and (in 3D) of the row in the previous slice, which a
//! small keyed cache of rows keeps from being recomputed.

use msloss_core::{LengthKind, Real};

use crate::exp::{exp_nonpos, madd};

#[cfg(target_arch = "x86_64")]
pub(crate) mod fused;

/// The unit the chunked kernels' lines are padded to: the most pixels per chunk (one AVX-512
/// register of `f32`; a chunk of `f64` is half of it).
pub(crate) const PADDED_LANES: usize = 16;

/// The most channels the chunked kernels (`fused`) handle.
pub(crate) const MAX_FUSED_CHANNELS: usize = 4;

/// The stride of the fused pass 2's per-class lines for rows of `w` pixels: whole chunks and one
/// more, so that it is not a multiple of a page (see `fused`).
pub(crate) fn padded_stride(w: usize) -> usize {
    w.div_ceil(PADDED_LANES) * PADDED_LANES + PADDED_LANES
}

/// The widest tile of the chunked kernels' softmax sweeps (their pass 1's, and pass 2's when it
/// recomputes the probabilities).
pub(crate) const MAX_FUSED_TILE: usize = 512;

/// Independent accumulators per sum.
pub(crate) const LANES: usize = 8;
/// Pixels per step of the loops that handle a remainder by redoing the last whole step.
const VEC: usize = 16;
/// Elements per partial sum in `T` before it is added in `f64`.
pub(crate) const CHUNK: usize = 256;
/// Cached rows of probabilities (3 are needed at once).
const Y_SLOTS: usize = 4;
/// Cached rows of fluxes (3 are needed at once).
const F_SLOTS: usize = 4;
/// A key no row has.
const NO_ROW: usize = usize::MAX;

/// Per-block partials of pass 1 before the moments: `[scores check, smallest probability,
/// image check, mask check, valid count]`.
pub(crate) const P1_HEAD: usize = 5;
/// Per-block partials of pass 2: `[fidelity, length, gradient check]`.
pub(crate) const P2_LEN: usize = 3;

/// What the kernels read: the inputs and the shape's extents.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Problem<'a, T> {
    pub(crate) scores: &'a [T],
    pub(crate) logits: bool,
    pub(crate) image: &'a [T],
    pub(crate) mask: Option<&'a [T]>,
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) d: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    /// Columns per tile in pass 1 (at least 1, at most `w`).
    pub(crate) tile: usize,
    /// Whether pass 2 writes the gradient with non-temporal stores where it can: probabilities
    /// input (nothing cached in the buffer, so its old contents are not in cache) and a buffer
    /// too large to stay in cache.
    pub(crate) stream: bool,
}

impl<T> Problem<'_, T> {
    /// Pixels of one sample.
    #[inline(always)]
    pub(crate) fn sp(&self) -> usize {
        self.d * self.h * self.w
    }

    /// Sample `b` alone, as a problem of one sample (its inputs' slices; in bounds: asserted).
    pub(crate) fn sample(&self, b: usize) -> Self {
        let sp = self.sp();
        Self {
            scores: &self.scores[b * self.n * sp..][..self.n * sp],
            image: &self.image[b * self.c * sp..][..self.c * sp],
            mask: self.mask.map(|m| &m[b * sp..][..sp]),
            ..*self
        }
    }
}

/// The constants of pass 2 for one sample, in `T`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pass2<'a, T> {
    /// The sample's centroids, `[N, C]`.
    pub(crate) centroids: &'a [T],
    /// `2·ε_c/(A_n + ε_c)`, `[N]`.
    pub(crate) corr: &'a [T],
    /// A common centre `ĉ` of the sample's centroids, `[C]` (see [`ClassConsts`]).
    pub(crate) center: &'a [T],
    /// `w·(2δ_n + corr_n·c_n)` with `δ_n = c_n − ĉ`, `[N, C]` (see [`ClassConsts`]).
    pub(crate) weights: &'a [T],
    /// `w·(‖δ_n‖² + corr_n·⟨c_n, δ_n⟩)`, `[N]`.
    pub(crate) base: &'a [T],
    pub(crate) fidelity_weight: T,
    pub(crate) lambda: T,
    pub(crate) delta: T,
    pub(crate) length: LengthKind,
    /// The reduction's factor applied to the gradient.
    pub(crate) scale: T,
    /// Where pass 1 stored the sample's probabilities (logits and a gradient), if it did: the
    /// gradient buffer, which pass 2 overwrites in place, or a buffer of their own.
    pub(crate) cache: Option<GradRows<T>>,
    /// Pass 1's softmax statistics of every row, where it stored them (logits not cached, for
    /// the fused pass 2).
    pub(crate) stats: Option<Stats<T>>,
    /// Whether pass 2 may take the one-sweep kernel of [`fused`] where it applies.
    pub(crate) fused: bool,
}

impl<T> Pass2<'_, T> {
    /// The rows of sample `b` that pass 2 of block `blk` reads from the cache (empty without
    /// one): every row from a sample's own buffer, which nothing writes in pass 2; from the
    /// gradient buffer `grad`, the block's own rows (their gradient overwrites them in order,
    /// and other blocks' may already be overwritten).
    pub(crate) fn cached_rows(&self, p: &Problem<'_, T>, grad: Option<GradRows<T>>, blk: Block) -> (usize, usize) {
        match self.cache {
            None => (0, 0),
            Some(_) if self.in_place(grad) => (blk.r0, blk.r1),
            Some(_) => (0, p.d * p.h),
        }
    }

    /// Whether the cache is the gradient buffer `grad`, whose rows pass 2 overwrites in place.
    pub(crate) fn in_place(&self, grad: Option<GradRows<T>>) -> bool {
        matches!((&self.cache, &grad), (Some(c), Some(g)) if c.same(g))
    }
}

/// One block: rows `r0..r1` of sample `b`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    pub(crate) b: usize,
    pub(crate) r0: usize,
    pub(crate) r1: usize,
}

/// A gradient buffer that blocks write disjoint rows of, from several threads (also the buffer
/// under [`Stats`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GradRows<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: `GradRows` is only a pointer to a `&mut [T]` that outlives the parallel section; the
// block partition guarantees that no two threads write the same element (see `row`, and
// `Stats::row`: pass 1's blocks write their own rows; pass 2 reads a sample's rows only after that
// sample's pass 1 has joined, while other samples' passes touch only their own rows; a sample's
// own buffer of probabilities is held by that sample alone for both its passes).
unsafe impl<T: Send> Send for GradRows<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for GradRows<T> {}

impl<T> GradRows<T> {
    /// Wraps the caller's gradient buffer; it must stay mutably borrowed for as long as this is used.
    pub(crate) fn new(grad: &mut [T]) -> Self {
        Self { ptr: grad.as_mut_ptr(), len: grad.len() }
    }

    /// Part `i` of the buffer cut into parts of `len` values (in bounds: asserted).
    pub(crate) fn part(self, i: usize, len: usize) -> Self {
        assert!((i + 1) * len <= self.len, "part {i} of {len} values out of {}", self.len);
        // In bounds (checked above).
        Self { ptr: self.ptr.wrapping_add(i * len), len }
    }

    /// Whether both are the same buffer.
    pub(crate) fn same(&self, other: &Self) -> bool {
        core::ptr::eq(self.ptr, other.ptr)
    }

    /// Row `r` of class `n` of sample `b`.
    ///
    /// # Safety
    /// No other live reference may cover this row: each block calls this only for its own rows
    /// (the blocks partition the rows of every sample), at most once at a time per row.
    #[inline(always)]
    unsafe fn row<'g>(&self, p: &Problem<'_, T>, b: usize, n: usize, r: usize) -> &'g mut [T] {
        let start = (b * p.n + n) * p.sp() + r * p.w;
        assert!(start + p.w <= self.len, "gradient row {start}+{} out of {}", p.w, self.len);
        // SAFETY: in bounds (checked above); exclusive by the caller's contract.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), p.w) }
    }

    /// Row `r` of class `n` of sample `b`, to read.
    ///
    /// # Safety
    /// No live mutable reference may cover this row (as for [`GradRows::row`]).
    #[inline(always)]
    unsafe fn row_ref<'g>(&self, p: &Problem<'_, T>, b: usize, n: usize, r: usize) -> &'g [T] {
        let start = (b * p.n + n) * p.sp() + r * p.w;
        assert!(start + p.w <= self.len, "gradient row {start}+{} out of {}", p.w, self.len);
        // SAFETY: in bounds (checked above); no writer by the caller's contract.
        unsafe { core::slice::from_raw_parts(self.ptr.add(start), p.w) }
    }
}

/// Pass 1's softmax statistics, for pass 2 to compute the probabilities from the logits in one
/// sweep (`e^(z − max)·(1/Σ e)`, the same bits as computing the softmax again): per pixel, the
/// largest logit and the reciprocal sum of the exponentials, `[B, D·H, 2, W]` (a row's maxima,
/// then its reciprocal sums). Blocks write their own rows in pass 1 and read any of their sample's
/// in pass 2 (which starts once the sample's pass 1 is done).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats<T>(GradRows<T>);

impl<T> Stats<T> {
    /// The values a problem's statistics take.
    pub(crate) fn len(p: &Problem<'_, T>, batch: usize) -> usize {
        batch * p.d * p.h * 2 * p.w
    }

    /// Wraps a buffer of at least [`Stats::len`] values; it must stay mutably borrowed for as
    /// long as this is used.
    pub(crate) fn new(buf: &mut [T]) -> Self {
        Self(GradRows::new(buf))
    }

    /// Sample `b`'s statistics alone, for [`Problem::sample`]'s problem (in bounds: asserted).
    pub(crate) fn sample(self, p: &Problem<'_, T>, b: usize) -> Self {
        Self(self.0.part(b, Self::len(p, 1)))
    }

    /// The start of row `r` of sample `b` (its `2·W` values are in the buffer: asserted).
    #[inline(always)]
    pub(crate) fn row(&self, p: &Problem<'_, T>, b: usize, r: usize) -> *mut T {
        let start = (b * p.d * p.h + r) * 2 * p.w;
        assert!(start + 2 * p.w <= self.0.len, "statistics row {start}+{} out of {}", 2 * p.w, self.0.len);
        // In bounds (checked above).
        self.0.ptr.wrapping_add(start)
    }

    /// The same buffer as statistics of `U`, the type `T` is (asserted: anything else panics).
    pub(crate) fn retype<U: 'static>(self) -> Stats<U>
    where
        T: 'static,
    {
        assert!(core::any::TypeId::of::<T>() == core::any::TypeId::of::<U>(), "statistics of the type they hold");
        Stats(GradRows { ptr: self.0.ptr.cast(), len: self.0.len })
    }
}

/// One thread's scratch: cached rows of probabilities and fluxes, and row temporaries.
#[derive(Debug, Default)]
pub(crate) struct Scratch<T> {
    n: usize,
    w: usize,
    /// `Y_SLOTS` rows of `[y_0, …, y_{N−1}, m]`, each `W` long.
    y: Vec<T>,
    y_key: [usize; Y_SLOTS],
    y_stamp: [u64; Y_SLOTS],
    /// `F_SLOTS` rows of `[own, φ_H, φ_D]` per class, each `W` long (see [`own_flux`]).
    flux: Vec<T>,
    f_key: [usize; F_SLOTS],
    f_stamp: [u64; F_SLOTS],
    /// The length summed over a flux row's own forward differences.
    f_value: [f64; F_SLOTS],
    /// In 3D, `φ_D` of the last `H + 1` flux rows, `[row mod (H + 1), N, W]`, where the flux
    /// slots' `φ_D` lines would be (a row needs `φ_D` of the row one slice back, `H` rows
    /// earlier: too far for the slots to keep it, and its probabilities are then already
    /// overwritten by their gradient).
    fd_ring: Vec<T>,
    /// The row each ring entry holds (`NO_ROW`: none); empty in 2D.
    fd_keys: Vec<usize>,
    clock: u64,
    /// `∂E/∂y` of one row, `[N, W]`.
    g: Vec<T>,
    t1: Vec<T>,
    t2: Vec<T>,
    t3: Vec<T>,
    /// `Σ_n y_n·g_n` of one row (logits).
    yg: Vec<T>,
    zero: Vec<T>,
    /// The mask line of a row without a mask.
    ones: Vec<T>,
    /// In pass 2 with logits and a gradient: where pass 1 stored the probabilities (the
    /// gradient buffer or the sample's own buffer); rows `cache_lo..cache_hi` (see
    /// [`Pass2::cached_rows`]; in the gradient buffer, the block's rows not yet overwritten by
    /// their gradient) are read from it instead of recomputing the softmax. `None` outside
    /// pass 2.
    cache: Option<GradRows<T>>,
    cache_lo: usize,
    cache_hi: usize,
    /// The fused pass 2 ([`fused`]): `φ_H` of the row above, a padded line per class.
    up: Vec<T>,
    /// The fused pass 2: `φ_H` of the current row (see `up`).
    up_next: Vec<T>,
    /// The fused pass 2: per class, the W flux of the last chunk's last pixel, and the
    /// current chunk's.
    carry: Vec<T>,
    /// The fused pass 2: one chunk's `g` of every class.
    gbuf: Vec<T>,
    /// The chunked pass 1: per class, the lanes of its sums `A` and `M_k` (up to
    /// [`MAX_FUSED_CHANNELS`] channels) not yet added in `f64`.
    sums1: Vec<T>,
    /// The fused pass 2's row softmax: a tile's reciprocal sums.
    inv: Vec<T>,
    /// The fused pass 2: the next row's probabilities (see `ycur`).
    ynext: Vec<T>,
    /// The fused pass 2: the current row's probabilities (`ynext` the next row's), each class
    /// a padded line.
    ycur: Vec<T>,
    /// The fused pass 2 in 3D: the same row of the next slice's probabilities (see `ycur`;
    /// empty in 2D).
    yd: Vec<T>,
}

impl<T: Real> Scratch<T> {
    /// Sizes the buffers for a shape (allocates only when they grow) and forgets cached rows.
    pub(crate) fn prepare(&mut self, n: usize, d: usize, h: usize, w: usize) {
        self.n = n;
        self.w = w;
        self.y.resize(Y_SLOTS * (n + 1) * w, T::zero());
        self.flux.resize(F_SLOTS * 3 * n * w, T::zero());
        let ring = if d > 1 { h + 1 } else { 0 };
        self.fd_ring.resize(ring * n * w, T::zero());
        self.fd_keys.resize(ring, NO_ROW);
        self.g.resize(n * w, T::zero());
        // The fused pass 2's lines (sized here with the rest, so that no call after the first with
        // a shape allocates, whichever thread's scratch a block lands on).
        let ws = padded_stride(w);
        // (Three registers' lanes more: one to reach a 64-byte boundary, two before the first
        // line; see the fused pass 2.)
        for t in [&mut self.up, &mut self.up_next, &mut self.ycur, &mut self.ynext] {
            t.resize(n * ws + 3 * PADDED_LANES, T::zero());
        }
        self.yd.resize(if d > 1 { n * ws + 3 * PADDED_LANES } else { 0 }, T::zero());
        self.carry.resize(2 * n, T::zero());
        self.gbuf.resize(n * PADDED_LANES, T::zero());
        self.sums1.resize(n * (1 + MAX_FUSED_CHANNELS) * PADDED_LANES, T::zero());
        self.inv.resize(MAX_FUSED_TILE, T::zero());
        for t in [&mut self.t1, &mut self.t2, &mut self.t3, &mut self.yg] {
            t.resize(w, T::zero());
        }
        self.zero.clear();
        self.zero.resize(w, T::zero());
        self.ones.clear();
        self.ones.resize(w, T::one());
        self.forget();
    }

    /// Forgets every cached row and its age (a new block, or new inputs, begins).
    fn forget(&mut self) {
        self.y_key = [NO_ROW; Y_SLOTS];
        self.f_key = [NO_ROW; F_SLOTS];
        self.y_stamp = [0; Y_SLOTS];
        self.f_stamp = [0; F_SLOTS];
        self.fd_keys.fill(NO_ROW);
        self.clock = 0;
    }

    /// Where probability row `r` of sample `b` is: in the gradient buffer if pass 1 cached it
    /// there and it is not yet overwritten, else in a slot (computed if absent).
    #[inline(always)]
    fn y_row<const FMA: bool>(&mut self, p: &Problem<'_, T>, b: usize, r: usize) -> YRow<T> {
        match self.cache {
            Some(g) if (self.cache_lo..self.cache_hi).contains(&r) => YRow::Cached(g, r),
            _ => YRow::Slot(self.y_slot::<FMA>(p, b, r)),
        }
    }

    /// The slot of probability row `r` of sample `b`, computing it if absent. Slots used since
    /// the clock last ticked are never evicted.
    #[inline(always)]
    fn y_slot<const FMA: bool>(&mut self, p: &Problem<'_, T>, b: usize, r: usize) -> usize {
        if let Some(i) = self.y_key.iter().position(|&k| k == r) {
            self.y_stamp[i] = self.clock;
            return i;
        }
        let i = lru(&self.y_stamp, self.clock);
        self.y_key[i] = r;
        self.y_stamp[i] = self.clock;
        let len = (self.n + 1) * self.w;
        let dst = &mut self.y[i * len..(i + 1) * len];
        load_probs::<T, FMA>(p, b, r, dst, &mut self.t1, &mut self.t2);
        i
    }

    /// The ring entry holding `φ_D` of flux row `r` of sample `b` (3D), computing the flux row
    /// if the ring does not hold it.
    #[inline(always)]
    fn fd_entry<const FMA: bool>(
        &mut self,
        p: &Problem<'_, T>,
        k: &Pass2<'_, T>,
        b: usize,
        r: usize,
        fclock: u64,
    ) -> usize {
        let at = r % self.fd_keys.len();
        if self.fd_keys[at] != r {
            self.flux_slot::<FMA>(p, k, b, r, fclock);
        }
        at
    }

    /// The slot of flux row `r` of sample `b`, computing it if absent (and, in 3D, its `φ_D`
    /// into the ring: a row whose `φ_D` the ring no longer holds counts as absent, and is
    /// computed again into the same slot).
    #[inline(always)]
    fn flux_slot<const FMA: bool>(
        &mut self,
        p: &Problem<'_, T>,
        k: &Pass2<'_, T>,
        b: usize,
        r: usize,
        fclock: u64,
    ) -> usize {
        let held = self.f_key.iter().position(|&key| key == r);
        let in_ring = self.fd_keys.is_empty() || self.fd_keys[r % self.fd_keys.len()] == r;
        if let (Some(i), true) = (held, in_ring) {
            self.f_stamp[i] = fclock;
            return i;
        }
        let fi = held.unwrap_or_else(|| lru(&self.f_stamp, fclock));
        self.f_key[fi] = r;
        self.f_stamp[fi] = fclock;
        // The probability rows this flux row needs, pinned together.
        self.clock += 1;
        let (dd, hh) = (r / p.h, r % p.h);
        let y0 = self.y_row::<FMA>(p, b, r);
        // (No closures here: they would not inherit the caller's target features.)
        let yh = if hh + 1 < p.h { Some(self.y_row::<FMA>(p, b, r + 1)) } else { None };
        let yd = if dd + 1 < p.d { Some(self.y_row::<FMA>(p, b, r + p.h)) } else { None };
        let (n, w) = (self.n, self.w);
        let y = YLines { slots: &self.y, ones: &self.ones, p, b };
        let flen = 3 * n * w;
        let mut value = 0.0;
        let out = &mut self.flux[fi * flen..(fi + 1) * flen];
        // In 3D `φ_D` goes to the ring.
        let ring = match self.fd_keys.len() {
            0 => None,
            len => {
                self.fd_keys[r % len] = r;
                Some(&mut self.fd_ring[(r % len) * n * w..][..n * w])
            }
        };
        let mut ring_lines = ring.map(|lines| lines.chunks_exact_mut(w));
        for (cls, fl) in out.chunks_exact_mut(3 * w).enumerate() {
            let (fw, rest) = fl.split_at_mut(w);
            let (fh, slot_fd) = rest.split_at_mut(w);
            let fd = match ring_lines.as_mut().and_then(Iterator::next) {
                Some(line) => line,
                None => slot_fd,
            };
            let next = |row: Option<YRow<T>>| row.map(|row| (y.line(row, cls), y.line(row, n)));
            let rows = Rows { y0: y.line(y0, cls), m0: y.line(y0, n), next_h: next(yh), next_d: next(yd) };
            let exact = Exact { p, b, cls, s0: r * w };
            value += flux_row::<T, FMA>(k, rows, exact, [fw, fh, fd], &mut self.t3, &self.zero);
        }
        self.f_value[fi] = value;
        fi
    }
}

/// Line `i` (a class or the mask) of cached row `slot`.
#[inline(always)]
fn line<T>(y: &[T], ylen: usize, w: usize, slot: usize, i: usize) -> &[T] {
    &y[slot * ylen + i * w..slot * ylen + (i + 1) * w]
}

/// Where a probability row is (see [`Scratch::y_row`]).
#[derive(Debug, Clone, Copy)]
enum YRow<T> {
    /// Slot `i` of the scratch rows, `[y_0, …, y_{N−1}, m]`.
    Slot(usize),
    /// Row `r` of the gradient buffer, where pass 1 cached it (the mask from the input).
    Cached(GradRows<T>, usize),
}

/// The probability rows of one sample, wherever they are (see [`YRow`]).
#[derive(Clone, Copy)]
struct YLines<'a, T> {
    slots: &'a [T],
    ones: &'a [T],
    p: &'a Problem<'a, T>,
    b: usize,
}

impl<'a, T: Real> YLines<'a, T> {
    /// Line `i` of a row: class `i < N`, or the mask (ones without a mask) for `i = N`.
    #[inline(always)]
    fn line(&self, row: YRow<T>, i: usize) -> &'a [T] {
        let (n, w, sp) = (self.p.n, self.p.w, self.p.sp());
        match row {
            YRow::Slot(slot) => line(self.slots, (n + 1) * w, w, slot, i),
            YRow::Cached(_, r) if i == n => match self.p.mask {
                Some(mask) => &mask[self.b * sp + r * w..][..w],
                None => &self.ones[..w],
            },
            // SAFETY: `Scratch::y_row` hands out `Cached` rows only within `cache_lo..cache_hi`:
            // rows that nothing writes while they are read (`Pass2::cached_rows`).
            YRow::Cached(g, r) => unsafe { g.row_ref(self.p, self.b, i, r) },
        }
    }
}

/// The least recently used slot not stamped `now`.
#[inline(always)]
fn lru(stamps: &[u64], now: u64) -> usize {
    let mut best = 0;
    for (i, &s) in stamps.iter().enumerate() {
        if s != now && (stamps[best] == now || s < stamps[best]) {
            best = i;
        }
    }
    best
}

/// Loads row `r` of sample `b` as `[y_0, …, y_{N−1}, m]`: the softmax of the logits (stable:
/// the maximum is subtracted first) or the probabilities as given, and the mask row (ones
/// without a mask).
#[inline(always)]
fn load_probs<T: Real, const FMA: bool>(
    p: &Problem<'_, T>,
    b: usize,
    r: usize,
    dst: &mut [T],
    mx: &mut [T],
    sum: &mut [T],
) {
    let (n, w, sp) = (p.n, p.w, p.sp());
    let (ys, m) = dst.split_at_mut(n * w);
    match p.mask {
        Some(mask) => m.copy_from_slice(&mask[b * sp + r * w..][..w]),
        None => m.fill(T::one()),
    }
    let src = |cls: usize| &p.scores[(b * n + cls) * sp + r * w..][..w];
    if !p.logits {
        for (cls, y) in ys.chunks_exact_mut(w).enumerate() {
            y.copy_from_slice(src(cls));
        }
        return;
    }
    mx.copy_from_slice(src(0));
    for cls in 1..n {
        for (a, &v) in mx.iter_mut().zip(src(cls)) {
            *a = if v > *a { v } else { *a };
        }
    }
    sum.fill(T::zero());
    for (cls, y) in ys.chunks_exact_mut(w).enumerate() {
        for (((v, &z), &a), s) in y.iter_mut().zip(src(cls)).zip(mx.iter()).zip(sum.iter_mut()) {
            let e = exp_nonpos::<T, FMA>(z - a);
            *v = e;
            *s += e;
        }
    }
    for s in sum.iter_mut() {
        *s = T::one() / *s;
    }
    for y in ys.chunks_exact_mut(w) {
        for (v, &inv) in y.iter_mut().zip(sum.iter()) {
            *v *= inv;
        }
    }
}

/// Adds `K` lanes of `T` (a power of two) in a fixed pairwise order, in `f64`.
#[inline(always)]
fn fold<T: Real, const K: usize>(acc: [T; K]) -> f64 {
    let mut v = acc.map(|a| a.to_f64_lossless());
    let mut half = K / 2;
    while half > 0 {
        for l in 0..half {
            v[l] += v[l + half];
        }
        half /= 2;
    }
    v[0]
}

/// `Σ a`: lanes of `T` within chunks of [`CHUNK`], chunks added in `f64`.
#[inline(always)]
pub(crate) fn sum<T: Real>(a: &[T]) -> f64 {
    let mut total = 0.0;
    for chunk in a.chunks(CHUNK) {
        let mut acc = [T::zero(); LANES];
        let (lanes, rest) = chunk.as_chunks::<LANES>();
        for v in lanes {
            add_lanes(&mut acc, v);
        }
        for (a, &v) in acc.iter_mut().zip(rest) {
            *a += v;
        }
        total += fold(acc);
    }
    total
}

/// `Σ a·b`, summed as in [`sum`].
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> f64 {
    let mut total = 0.0;
    for (ca, cb) in a.chunks(CHUNK).zip(b.chunks(CHUNK)) {
        let mut acc = [T::zero(); LANES];
        let (la, ra) = ca.as_chunks::<LANES>();
        let (lb, rb) = cb.as_chunks::<LANES>();
        for (x, y) in la.iter().zip(lb) {
            mul_add_lanes(&mut acc, x, y);
        }
        for ((a, &xv), &yv) in acc.iter_mut().zip(ra).zip(rb) {
            *a += xv * yv;
        }
        total += fold(acc);
    }
    total
}

/// Input checks fused into pass 1: returns a non-finite number if `src` holds a non-finite
/// value (`v·0` is NaN exactly then), and lowers `min` to the smallest value seen.
#[inline(always)]
fn check_values<T: Real>(src: &[T], min: &mut T) -> f64 {
    let mut lo = [*min; LANES];
    let (lanes, rest) = src.as_chunks::<LANES>();
    for v in lanes {
        for (o, &v) in lo.iter_mut().zip(v) {
            *o = if v < *o { v } else { *o };
        }
    }
    *min = lo.iter().chain(rest).fold(*min, |m, &v| if v < m { v } else { m });
    check_sum(src)
}

/// Columns per tile of pass 1 for `n` classes of `elem` bytes: the tile's scores and
/// probabilities (about `2·elem·n·tile` bytes, 32 KiB) stay in the first-level cache while the
/// softmax sweeps over them.
pub(crate) fn tile_width(n: usize, w: usize, elem: usize) -> usize {
    let t = (16384 / (n.max(1) * elem.max(1))).clamp(16, 1024) / 16 * 16;
    t.min(w)
}

/// Pass 1 over one block: fills `part` with `[P1_HEAD checks and count, A_0..A_{N−1},
/// M_00..M_{N−1,C−1}]` of the block. With `cache`, the probabilities of the block's rows are
/// computed in place in the gradient buffer (for pass 2 to read back); otherwise in scratch.
///
/// Each row is done in tiles of `tile` columns, so that the tile's sweeps (checks and maximum,
/// exponentials, normalisation and moments) run in the first-level cache.
#[inline(always)]
pub(crate) fn pass1<T: Real, const FMA: bool>(
    p: &Problem<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    cache: Option<GradRows<T>>,
    part: &mut [f64],
) {
    part.fill(0.0);
    let (head, rest) = part.split_at_mut(P1_HEAD);
    let (area, moments) = rest.split_at_mut(p.n);
    let (n, c, w, sp) = (p.n, p.c, p.w, p.sp());
    let b = blk.b;
    let mut min_prob = T::zero();
    for r in blk.r0..blk.r1 {
        if r + 1 < blk.r1 {
            prefetch_inputs(p, b, r + 1);
        }
        let mrow = row_checks(p, b, r, head, &mut s.t3);
        for a in (0..w).step_by(p.tile) {
            let len = p.tile.min(w - a);
            let at = |cls: usize| (b * n + cls) * sp + r * w + a;
            let image = &p.image[b * c * sp + r * w + a..];
            let m = mrow.map(|m| &m[a..a + len]);
            if !p.logits {
                for cls in 0..n {
                    let y = &p.scores[at(cls)..][..len];
                    head[0] += check_values(y, &mut min_prob);
                    let mom = &mut moments[cls * c..(cls + 1) * c];
                    tile_moments(y, m, image, sp, &mut area[cls], mom, &mut s.t1[..len]);
                }
                continue;
            }
            // The maximum over classes, with the checks of the logits fused in.
            let (mx, tot, ck) = (&mut s.t1[..len], &mut s.t2[..len], &mut s.t3[..len]);
            mx.copy_from_slice(&p.scores[at(0)..][..len]);
            ck.fill(T::zero());
            for cls in 0..n {
                max_check(&p.scores[at(cls)..][..len], mx, ck);
            }
            head[0] += sum(ck);
            // The exponentials, into the gradient buffer (cache) or scratch, and their sum.
            tot.fill(T::zero());
            for cls in 0..n {
                let z = &p.scores[at(cls)..][..len];
                // SAFETY: rows of this block belong to this block only; scratch is ours.
                let y = unsafe { dest(cache, &mut s.y, p, (b, cls, r), a, len) };
                for (((v, &zv), &mv), t) in y.iter_mut().zip(z).zip(mx.iter()).zip(tot.iter_mut()) {
                    let e = exp_nonpos::<T, FMA>(zv - mv);
                    *v = e;
                    *t += e;
                }
            }
            for t in tot.iter_mut() {
                *t = T::one() / *t;
            }
            // Normalise in place (the tile is in cache), then the moments.
            for cls in 0..n {
                // SAFETY: as above.
                let y = unsafe { dest(cache, &mut s.y, p, (b, cls, r), a, len) };
                for (v, &inv) in y.iter_mut().zip(tot.iter()) {
                    *v *= inv;
                }
                let mom = &mut moments[cls * c..(cls + 1) * c];
                tile_moments(y, m, image, sp, &mut area[cls], mom, &mut s.t3[..len]);
            }
        }
    }
    head[1] = if p.logits { 0.0 } else { min_prob.to_f64_lossless() };
}

/// Prefetches row `r` of sample `b` of the scores and the image, ahead of the hardware
/// prefetcher (which loses track of this many streams: one per class and channel).
#[inline(always)]
pub(crate) fn prefetch_inputs<T: Real>(p: &Problem<'_, T>, b: usize, r: usize) {
    let (n, w, sp) = (p.n, p.w, p.sp());
    for cls in 0..n {
        prefetch_line(&p.scores[(b * n + cls) * sp + r * w..][..w]);
    }
    prefetch_image(p, b, r);
}

/// Prefetches row `r` of sample `b`'s image.
#[inline(always)]
pub(crate) fn prefetch_image<T: Real>(p: &Problem<'_, T>, b: usize, r: usize) {
    let (c, w, sp) = (p.c, p.w, p.sp());
    for k in 0..c {
        prefetch_line(&p.image[(b * c + k) * sp + r * w..][..w]);
    }
}

/// Pass 1's checks of row `r` of sample `b` that do not depend on the scores: adds to `head`
/// (see [`pass1`]) a non-finite number if an image value is not finite, `Σ |m·(1 − m)|` (zero
/// exactly for a mask of zeros and ones) and the row's count of pixels, `Σ m` (`tmp`: `W`
/// values of scratch). Returns the mask row, if any.
#[inline(always)]
pub(crate) fn row_checks<'a, T: Real>(
    p: &Problem<'a, T>,
    b: usize,
    r: usize,
    head: &mut [f64],
    tmp: &mut [T],
) -> Option<&'a [T]> {
    let (c, w, sp) = (p.c, p.w, p.sp());
    let mut ignored = T::zero();
    for k in 0..c {
        head[2] += check_values(&p.image[(b * c + k) * sp + r * w..][..w], &mut ignored);
    }
    let mrow = p.mask.map(|mask| &mask[b * sp + r * w..][..w]);
    match mrow {
        Some(m) => {
            for (t, &v) in tmp.iter_mut().zip(m) {
                *t = (v * (T::one() - v)).abs();
            }
            head[3] += sum(&tmp[..w]);
            head[4] += sum(m);
        }
        None => head[4] += w as f64,
    }
    mrow
}

/// Asks the CPU to bring every cache line of `line` into the second-level cache (a hint: no
/// effect on results; nothing on targets without a prefetch instruction).
#[inline(always)]
fn prefetch_line<T>(line: &[T]) {
    prefetch_span(line.as_ptr(), line.len());
}

/// [`prefetch_line`] of the `len` values from `at` (any address: nothing is read).
#[inline(always)]
pub(crate) fn prefetch_span<T>(at: *const T, len: usize) {
    let bytes = len * size_of::<T>();
    let base = at.cast::<u8>();
    let mut off = 0;
    while off < bytes {
        prefetch(base.wrapping_add(off));
        off += 64;
    }
}

/// Asks the CPU to bring the cache line of `at` into the second-level cache (a hint: any
/// address will do, and nothing is read; nothing on targets without a prefetch instruction).
#[inline(always)]
pub(crate) fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        // SAFETY: a prefetch never faults and reads nothing, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(at.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Prefetches what loading probability row `r` of sample `b` reads: the cached probabilities
/// in the gradient buffer (`cache`) or the scores, and the mask row.
#[inline(always)]
fn prefetch_rows<T: Real>(p: &Problem<'_, T>, cache: Option<GradRows<T>>, b: usize, r: usize) {
    let (n, w, sp) = (p.n, p.w, p.sp());
    if r >= p.d * p.h {
        return;
    }
    for cls in 0..n {
        match cache {
            // SAFETY: only a prefetch of the row's addresses; nothing is read or written.
            Some(g) => prefetch_line(unsafe { g.row_ref(p, b, cls, r) }),
            None => prefetch_line(&p.scores[(b * n + cls) * sp + r * w..][..w]),
        }
    }
    if let Some(mask) = p.mask {
        prefetch_line(&mask[b * sp + r * w..][..w]);
    }
}

/// Orders the non-temporal stores before it before every store after it.
#[inline(always)]
fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a store fence has no preconditions.
    unsafe {
        core::arch::x86_64::_mm_sfence()
    };
}

/// Where pass 1 writes the probabilities of class `cls` on columns `a..a + len` of row `r`:
/// the gradient buffer with `cache`, else line `cls` of the scratch `y`.
///
/// # Safety
/// With `cache`, the row must be this block's and not otherwise borrowed (as for
/// [`GradRows::row`]).
#[inline(always)]
unsafe fn dest<'s, T: Real>(
    cache: Option<GradRows<T>>,
    y: &'s mut [T],
    p: &Problem<'_, T>,
    (b, cls, r): (usize, usize, usize),
    a: usize,
    len: usize,
) -> &'s mut [T] {
    match cache {
        // SAFETY: by the caller's contract.
        Some(g) => unsafe { &mut g.row(p, b, cls, r)[a..a + len] },
        None => &mut y[cls * len..(cls + 1) * len],
    }
}

/// Raises `mx` to `src` elementwise and adds `v·0` to `ck` (NaN exactly where `v` is not
/// finite), so that `Σ ck` over the classes is non-finite if a score is: per element, no sum
/// carried through the loop.
#[inline(always)]
fn max_check<T: Real>(src: &[T], mx: &mut [T], ck: &mut [T]) {
    for ((o, c), &v) in mx.iter_mut().zip(ck.iter_mut()).zip(src) {
        *o = if v > *o { v } else { *o };
        *c += v * T::zero();
    }
}

/// `Σ v·0` over `src` (in lanes, folded in `f64`): NaN exactly when `src` holds a non-finite value.
#[inline(always)]
fn check_sum<T: Real>(src: &[T]) -> f64 {
    let mut acc = [T::zero(); LANES];
    let (lanes, rest) = src.as_chunks::<LANES>();
    let zero = [T::zero(); LANES];
    for v in lanes {
        mul_add_lanes(&mut acc, v, &zero);
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += v * T::zero();
    }
    fold(acc)
}

/// Moments of one class on one tile: adds `Σ m·y` to `area` and `Σ m·y·x_k` to `moments[k]`
/// (`m = 1` without a mask; `image` starts at channel 0 of the tile, channel `k` is `k·sp`
/// further).
#[inline(always)]
fn tile_moments<T: Real>(
    y: &[T],
    m: Option<&[T]>,
    image: &[T],
    sp: usize,
    area: &mut f64,
    moments: &mut [f64],
    tmp: &mut [T],
) {
    let my: &[T] = match m {
        Some(m) => {
            for ((t, &mv), &yv) in tmp.iter_mut().zip(m).zip(y) {
                *t = mv * yv;
            }
            &tmp[..y.len()]
        }
        None => y,
    };
    match moments.len() {
        1 => class_moments::<T, 1>(my, image, sp, area, moments),
        2 => class_moments::<T, 2>(my, image, sp, area, moments),
        3 => class_moments::<T, 3>(my, image, sp, area, moments),
        4 => class_moments::<T, 4>(my, image, sp, area, moments),
        _ => {
            *area += sum(my);
            for (k, mk) in moments.iter_mut().enumerate() {
                *mk += dot(my, &image[k * sp..k * sp + my.len()]);
            }
        }
    }
}

/// A line of probabilities and its mask line.
type Line<'a, T> = (&'a [T], &'a [T]);

/// Adds `Σ my` to `area` and `Σ my·x_k` to `moments[k]` for one class's masked probabilities
/// `my`, in one loop with lanes of `T` for all `1 + C` sums (`image` starts at channel 0 of the
/// same pixels).
#[inline(always)]
fn class_moments<T: Real, const C: usize>(my: &[T], image: &[T], sp: usize, area: &mut f64, moments: &mut [f64]) {
    let w = my.len();
    let xs: [&[T]; C] = core::array::from_fn(|k| &image[k * sp..k * sp + w]);
    for start in (0..w).step_by(CHUNK) {
        let end = (start + CHUNK).min(w);
        let mut a = [T::zero(); LANES];
        let mut mk = [[T::zero(); LANES]; C];
        let (vs, vrest) = my[start..end].as_chunks::<LANES>();
        let xc: [&[[T; LANES]]; C] = core::array::from_fn(|k| xs[k][start..end].as_chunks::<LANES>().0);
        for (j, v) in vs.iter().enumerate() {
            add_lanes(&mut a, v);
            for k in 0..C {
                mul_add_lanes(&mut mk[k], v, &xc[k][j]);
            }
        }
        let tail = end - vrest.len();
        for (l, &v) in vrest.iter().enumerate() {
            a[l] += v;
            for k in 0..C {
                mk[k][l] += v * xs[k][tail + l];
            }
        }
        *area += fold(a);
        for (out, acc) in moments.iter_mut().zip(mk) {
            *out += fold(acc);
        }
    }
}

/// `acc += v`, lane by lane.
#[inline(always)]
fn add_lanes<T: Real>(acc: &mut [T; LANES], v: &[T; LANES]) {
    for l in 0..LANES {
        acc[l] += v[l];
    }
}

/// `acc += v·x`, lane by lane. Not fused even where the kernels have FMA: a sum's lanes are
/// a dependency chain, which a fused multiply-add lengthens (4 cycles instead of an add's 3 on
/// Zen 4), and pass 1 measured 20–25% slower with it.
#[inline(always)]
fn mul_add_lanes<T: Real>(acc: &mut [T; LANES], v: &[T; LANES], x: &[T; LANES]) {
    for l in 0..LANES {
        acc[l] += v[l] * x[l];
    }
}

/// The probability rows a flux row is computed from: the row and its mask, and the next rows
/// along H and D with their masks, where they exist.
#[derive(Clone, Copy)]
struct Rows<'a, T> {
    y0: &'a [T],
    m0: &'a [T],
    next_h: Option<(&'a [T], &'a [T])>,
    next_d: Option<(&'a [T], &'a [T])>,
}

/// Where a flux row's class map comes from, to recompute doubtful L1 signs exactly.
#[derive(Clone, Copy)]
struct Exact<'a, 'p, T> {
    p: &'a Problem<'p, T>,
    b: usize,
    cls: usize,
    /// The row's first pixel within the sample.
    s0: usize,
}

impl<T: Real> Exact<'_, '_, T> {
    /// `y_cls` at pixel `s` exactly as the reference computes it (same operations, same order).
    fn y(&self, s: usize) -> f64 {
        let (n, sp) = (self.p.n, self.p.sp());
        let at = |m: usize| self.p.scores[(self.b * n + m) * sp + s].to_f64_lossless();
        let max = (0..n).map(at).fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        let mut mine = 0.0;
        for m in 0..n {
            let e = (at(m) - max).exp();
            if m == self.cls {
                mine = e;
            }
            sum += e;
        }
        mine / sum
    }

    /// `λ·sign(y_t − y_s)` for the pair `(s0 + i, s0 + i + stride)`, from the reference's `y`.
    fn flux(&self, i: usize, stride: usize, lam: T) -> T {
        let s = self.s0 + i;
        let d = self.y(s + stride) - self.y(s);
        if d > 0.0 {
            lam
        } else if d < 0.0 {
            -lam
        } else {
            T::zero()
        }
    }
}

/// L1 or L2 along one axis: `out = φ` of the pairs `(y0[i], y1[i])`, `t = ℓ`; returns the
/// length and how many L1 differences lie within `T`'s rounding of zero (`tol` relative).
#[inline(always)]
fn axis<T: Real>(
    l1: bool,
    (y0, m0): (&[T], &[T]),
    (y1, m1): (&[T], &[T]),
    out: &mut [T],
    t: &mut [T],
    lam: T,
    tol: T,
) -> (f64, u32) {
    let mut doubtful = 0u32;
    let two_lam = lam + lam;
    for ((((o, v), (&a, &ma)), &bv), &mb) in out.iter_mut().zip(t.iter_mut()).zip(y0.iter().zip(m0)).zip(y1).zip(m1) {
        let wt = ma * mb;
        let d = (bv - a) * wt;
        if l1 {
            *v = d.abs();
            *o = if d > T::zero() {
                lam
            } else if d < T::zero() {
                -lam
            } else {
                T::zero()
            };
            doubtful += u32::from((tol > T::zero()) & (d.abs() <= tol * (a + bv)) & (wt != T::zero()));
        } else {
            *v = d * d;
            *o = two_lam * d;
        }
    }
    (sum(&t[..out.len()]), doubtful)
}

/// The fluxes `φ_a = λ·∂ℓ/∂d_a` of one class's row along W, H and D (zero where a pair is
/// missing or masked); returns the length `Σ ℓ` over the row's own forward differences
/// (before `λ`).
#[inline(always)]
fn flux_row<T: Real, const FMA: bool>(
    k: &Pass2<'_, T>,
    rows: Rows<'_, T>,
    exact: Exact<'_, '_, T>,
    fluxes: [&mut [T]; 3],
    t: &mut [T],
    zero: &[T],
) -> f64 {
    let [fw, fh, fd] = fluxes;
    let Rows { y0, m0, next_h, next_d } = rows;
    let w = y0.len();
    let lam = k.lambda;
    match k.length {
        LengthKind::L1 | LengthKind::L2 => {
            let l1 = k.length == LengthKind::L1;
            // Softmax outputs carry a relative error below (N + 4)·ε; given probabilities are
            // exact (and a difference of two floats rounds to zero only when they are equal).
            let tol = if l1 && exact.p.logits {
                T::from_f64_lossy(2.0 * (exact.p.n + 4) as f64) * T::epsilon()
            } else {
                T::zero()
            };
            // The fused loop first; the exact path below only where an L1 sign is in doubt.
            let (yh, mh) = next_h.unwrap_or((zero, zero));
            let (yd, md) = next_d.unwrap_or((zero, zero));
            let lines = [(y0, m0), (yh, mh), (yd, md)];
            let flags = u8::from(l1) * L1
                + u8::from(exact.p.mask.is_some()) * MASKED
                + u8::from(next_h.is_some()) * HAS_H
                + u8::from(next_d.is_some()) * HAS_D
                + u8::from(tol > T::zero()) * DOUBT;
            let outs = [&mut *fw, &mut *fh, &mut *fd];
            macro_rules! dispatch {
                ($($f:literal)*) => {
                    match flags {
                        $($f => flux_fused::<T, FMA, $f>(lam, tol, lines, outs, t),)*
                        _ => unreachable!("DOUBT only with L1"),
                    }
                };
            }
            // (`DOUBT` comes only with `L1`.)
            let fused = dispatch!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 17 19 21 23 25 27 29 31);
            if let Some(total) = fused {
                return total;
            }
            let mut total = 0.0;
            let strides = [1, w, exact.p.h * w];
            let axes: [(&mut [T], Option<Line<'_, T>>); 3] =
                [(&mut fw[..w - 1], Some((&y0[1..], &m0[1..]))), (fh, next_h), (fd, next_d)];
            for ((out, next), stride) in axes.into_iter().zip(strides) {
                let Some(next) = next else {
                    out.fill(T::zero());
                    continue;
                };
                let (value, doubtful) = axis(l1, (y0, m0), next, out, t, lam, tol);
                total += value;
                if doubtful > 0 {
                    let (y1, m1) = next;
                    for i in 0..out.len() {
                        let d = y1[i] - y0[i];
                        if tol > T::zero() && d.abs() <= tol * (y0[i] + y1[i]) && m0[i] * m1[i] != T::zero() {
                            out[i] = exact.flux(i, stride, lam);
                        }
                    }
                }
            }
            fw[w - 1] = T::zero();
            own_flux([fw, fh, fd], t);
            total
        }
        LengthKind::Charbonnier => {
            // Masked differences first, zero where the pair is missing.
            for (((o, &a), &b), (&ma, &mb)) in fw.iter_mut().zip(y0).zip(&y0[1..]).zip(m0.iter().zip(&m0[1..])) {
                *o = (b - a) * (ma * mb);
            }
            fw[w - 1] = T::zero();
            for (out, next) in [(&mut *fh, next_h), (&mut *fd, next_d)] {
                match next {
                    Some((y1, m1)) => {
                        for (((o, &a), &b), (&ma, &mb)) in out.iter_mut().zip(y0).zip(y1).zip(m0.iter().zip(m1)) {
                            *o = (b - a) * (ma * mb);
                        }
                    }
                    None => out.fill(T::zero()),
                }
            }
            let (delta, d2) = (k.delta, k.delta * k.delta);
            for (((v, a), b), c) in t.iter_mut().zip(fw.iter_mut()).zip(fh.iter_mut()).zip(fd.iter_mut()) {
                let r = (*a * *a + *b * *b + *c * *c + d2).sqrt();
                *v = r - delta;
                let q = lam / r;
                *a *= q;
                *b *= q;
                *c *= q;
            }
            let total = sum(t);
            own_flux([fw, fh, fd], t);
            total
        }
    }
}

/// Flags of [`flux_fused`]: L1 (else L2) length.
const L1: u8 = 1;
/// Flag: a mask is given (else every weight is one).
const MASKED: u8 = 2;
/// Flag: the row has a next row along H (else its H pairs are missing).
const HAS_H: u8 = 4;
/// Flag: the row has a next row along D.
const HAS_D: u8 = 8;
/// Flag (with [`L1`]): signs within `tol` of flipping are in doubt (`tol > 0`: softmax outputs).
const DOUBT: u8 = 16;

/// `(φ, ℓ, doubt)` of one pair `(a, b)` with masks `(ma, mb)` (ignored without [`MASKED`]):
/// the flux `λ·sign(d)` (L1) or `2λ·d` (L2) of `d = (b − a)·ma·mb`, its length term, and (with
/// [`DOUBT`]) whether the L1 sign is in doubt: `|d| ≤ tol·(a + b)` (relative to the pair) on a
/// pair that is not masked out.
///
/// With `DOUBT` the flux is `±λ` by `d`'s sign bit alone: where `d = 0` the pair is in doubt
/// (`|d| ≤ tol·(a + b)`), and the caller discards the row's fluxes for the exact path.
#[inline(always)]
fn pair<T: Real, const FMA: bool, const F: u8>(a: T, b: T, ma: T, mb: T, lam: T, tol: T) -> (T, T, u32) {
    let (d, live) = if F & MASKED != 0 {
        let wt = ma * mb;
        ((b - a) * wt, wt != T::zero())
    } else {
        (b - a, true)
    };
    if F & L1 == 0 {
        return ((lam + lam) * d, d * d, 0);
    }
    let ad = d.abs();
    if F & DOUBT != 0 {
        let phi = lam.copysign(d);
        let doubt = u32::from(madd::<T, FMA>(a + b, tol, -ad) >= T::zero());
        if F & MASKED != 0 {
            (if live { phi } else { T::zero() }, ad, if live { doubt } else { 0 })
        } else {
            (phi, ad, doubt)
        }
    } else {
        let phi = if d > T::zero() {
            lam
        } else if d < T::zero() {
            -lam
        } else {
            T::zero()
        };
        (phi, ad, 0)
    }
}

/// L1 or L2 fluxes of one class's row in one loop: writes `[own, φ_H, φ_D]` (see [`own_flux`])
/// and returns the row's length, or `None` (outputs unfinished) when some L1 sign is in doubt.
/// The flags `F` say which length, whether masks are read, and which next rows exist (absent
/// ones may be any lines; the flux lines along their axes are not written, and the fluxes
/// enter `own` as zero).
#[inline(always)]
fn flux_fused<T: Real, const FMA: bool, const F: u8>(
    lam: T,
    tol: T,
    [(y0, m0), (yh, mh), (yd, md)]: [Line<'_, T>; 3],
    [own, fh, fd]: [&mut [T]; 3],
    t: &mut [T],
) -> Option<f64> {
    let w = y0.len();
    // Without a next row along an axis the row's fluxes along it are left as they were: only
    // the next row reads them (as its `up` or `back` line), and that row does not exist.
    // The first and last pixels, where the W pair before or after is missing.
    let lines = [(y0, m0), (yh, mh), (yd, md)];
    edge::<T, FMA, F>(lines, lam, tol, 0, false, w > 1, [&mut *own, &mut *fh, &mut *fd, &mut *t]);
    if w > 1 {
        edge::<T, FMA, F>(lines, lam, tol, w - 1, true, false, [&mut *own, &mut *fh, &mut *fd, &mut *t]);
    }
    if w > 2 {
        let n = w - 2;
        let (prev, cur, next) = (&y0[..n], &y0[1..=n], &y0[2..n + 2]);
        let (mp, mc, mn) = (&m0[..n], &m0[1..=n], &m0[2..n + 2]);
        let (yh, mh, yd, md) = (&yh[1..=n], &mh[1..=n], &yd[1..=n], &md[1..=n]);
        let (own, fh, fd, t) = (&mut own[1..=n], &mut fh[1..=n], &mut fd[1..=n], &mut t[1..=n]);
        let z = T::zero();
        // Whole vectors of pixels, then the last `VEC` pixels again (the loop only assigns, so
        // redoing pixels changes nothing, and a doubt found twice is still a doubt): no scalar
        // remainder loop.
        let full = n / VEC * VEC;
        // (A macro, not a closure: closures do not inherit the caller's target features.)
        macro_rules! pixels {
            ($range:expr) => {
                for i in $range {
                    let (pb, _, _) = pair::<T, FMA, F>(prev[i], cur[i], mp[i], mc[i], lam, tol);
                    let (pw, vw, dw) = pair::<T, FMA, F>(cur[i], next[i], mc[i], mn[i], lam, tol);
                    let (ph, vh, dh) = if F & HAS_H != 0 {
                        pair::<T, FMA, F>(cur[i], yh[i], mc[i], mh[i], lam, tol)
                    } else {
                        (z, z, 0)
                    };
                    let (pd, vd, dd) = if F & HAS_D != 0 {
                        pair::<T, FMA, F>(cur[i], yd[i], mc[i], md[i], lam, tol)
                    } else {
                        (z, z, 0)
                    };
                    own[i] = pb - pw - ph - pd;
                    if F & HAS_H != 0 {
                        fh[i] = ph;
                    }
                    if F & HAS_D != 0 {
                        fd[i] = pd;
                    }
                    // A sign in doubt makes the pixel's length infinite (it is finite
                    // otherwise): the row's sum, taken anyway, then tells, and the loop carries
                    // no reduction.
                    t[i] = if F & DOUBT != 0 && (dw | dh | dd) != 0 { T::infinity() } else { vw + vh + vd };
                }
            };
        }
        pixels!(0..full);
        if full < n && n >= VEC {
            pixels!(n - VEC..n);
        } else {
            pixels!(full..n);
        }
    }
    let total = sum(&t[..w]);
    if F & DOUBT != 0 && !total.is_finite() { None } else { Some(total) }
}

/// One pixel of [`flux_fused`] at an end of the row, where the W pair before (`!before`) or
/// after (`!after`) is missing; a sign in doubt makes its length term infinite.
#[inline(always)]
fn edge<T: Real, const FMA: bool, const F: u8>(
    [(y0, m0), (yh, mh), (yd, md)]: [Line<'_, T>; 3],
    lam: T,
    tol: T,
    i: usize,
    before: bool,
    after: bool,
    [own, fh, fd, t]: [&mut [T]; 4],
) {
    let z = T::zero();
    let (pb, _, _) = if before { pair::<T, FMA, F>(y0[i - 1], y0[i], m0[i - 1], m0[i], lam, tol) } else { (z, z, 0) };
    let (pw, vw, dw) = if after { pair::<T, FMA, F>(y0[i], y0[i + 1], m0[i], m0[i + 1], lam, tol) } else { (z, z, 0) };
    let (ph, vh, dh) = if F & HAS_H != 0 { pair::<T, FMA, F>(y0[i], yh[i], m0[i], mh[i], lam, tol) } else { (z, z, 0) };
    let (pd, vd, dd) = if F & HAS_D != 0 { pair::<T, FMA, F>(y0[i], yd[i], m0[i], md[i], lam, tol) } else { (z, z, 0) };
    own[i] = pb - pw - ph - pd;
    fh[i] = ph;
    fd[i] = pd;
    // A sign in doubt is marked as in the interior loop of `flux_fused`.
    t[i] = if F & DOUBT != 0 && (dw | dh | dd) != 0 { T::infinity() } else { vw + vh + vd };
}

/// Replaces the W fluxes of a row by the row's own share of the length gradient,
/// `φ_W(s − 1) − φ_W(s) − φ_H(s) − φ_D(s)` (the shares from the rows before are added later).
#[inline(always)]
fn own_flux<T: Real>([fw, fh, fd]: [&mut [T]; 3], t: &mut [T]) {
    let w = fw.len();
    t.copy_from_slice(fw);
    fw[0] = -t[0] - fh[0] - fd[0];
    for ((((o, &prev), &cur), &h), &d) in fw[1..].iter_mut().zip(&t[..w - 1]).zip(&t[1..]).zip(&fh[1..]).zip(&fd[1..]) {
        *o = prev - cur - h - d;
    }
}

/// One class's lines of the current row, for [`class_line`].
#[derive(Clone, Copy)]
struct ClassLine<'a, T> {
    y: &'a [T],
    m: &'a [T],
    /// The row's own share of the length gradient.
    own: &'a [T],
    /// `φ_H` of the row above (zeros at the top).
    up: &'a [T],
    /// `φ_D` of the row in the previous slice (zeros in the first slice).
    back: &'a [T],
}

/// One class's constants in pass 2.
///
/// For logits, the softmax Jacobian subtracts `Σ_m y_m·g_m` from every `g_n`, and when the
/// classes' centroids are close the fidelity parts `‖x − c_n‖²` of the `g_n` nearly cancel
/// there: in `f32` that would lose several digits. So for logits `g_n` is computed without the
/// part common to all classes, `‖x − ĉ‖²` for a common centre `ĉ` (which the Jacobian removes
/// exactly, as `Σ_m y_m = 1`): with `u = x − ĉ` and `δ_n = c_n − ĉ`,
/// `‖x − c_n‖² − ‖x − ĉ‖² = ‖δ_n‖² − 2⟨u, δ_n⟩`, small when the centroids are close, and
/// accurate. With the correction `−corr·⟨c_n, x − c_n⟩ = −corr·⟨c_n, u − δ_n⟩` and the weight
/// `w`, the whole fidelity part is `m·(β_n − ⟨u, v_n⟩)`, with the per-class constants
/// `β_n = w·(‖δ_n‖² + corr·⟨c_n, δ_n⟩)` and `v_n = w·(2δ_n + corr·c_n)` (computed in `f64`):
/// `C` fused multiply-adds per pixel.
#[derive(Clone, Copy)]
struct ClassConsts<'a, T> {
    cent: &'a [T],
    center: &'a [T],
    /// `v_n` (logits).
    weights: &'a [T],
    /// `β_n` (logits).
    base: T,
    wf: T,
    cr: T,
    /// Whether `g` leaves out `w·m·‖x − ĉ‖²` (logits).
    shifted: bool,
}

/// Adds the fidelity terms `m·y·‖x − c‖²` of one class's row into `tmp`, and (with `GRAD`)
/// writes `g = ∂E/∂y` of it:
/// `w·m·(‖x − c‖² − corr·⟨c, x − c⟩)` (less `w·m·‖x − ĉ‖²` when `shifted`) plus the length's
/// share; one fused loop for `C` channels (`image` starts at channel 0 of the row; channel `k`
/// is `k·sp` further).
#[inline(always)]
fn class_line<T: Real, const FMA: bool, const C: usize, const F: u8>(
    l: ClassLine<'_, T>,
    image: &[T],
    sp: usize,
    k: ClassConsts<'_, T>,
    g: &mut [T],
    [tmp, yg]: [&mut [T]; 2],
) {
    let w = l.y.len();
    let xs: [&[T]; C] = core::array::from_fn(|i| &image[i * sp..i * sp + w]);
    let cs: [T; C] = core::array::from_fn(|i| k.cent[i]);
    let hs: [T; C] = core::array::from_fn(|i| k.center[i]);
    let vs: [T; C] = core::array::from_fn(|i| k.weights[i]);
    let fma = madd::<T, FMA>;
    let (wf, cr, base) = (k.wf, k.cr, k.base);
    let (y, m, own, up, back, g, tmp, yg) =
        (&l.y[..w], &l.m[..w], &l.own[..w], &l.up[..w], &l.back[..w], &mut g[..w], &mut tmp[..w], &mut yg[..w]);
    for i in 0..w {
        let mut d2 = T::zero();
        // Logits: `β − ⟨u, v⟩`; else `⟨c, x − c⟩` (see `ClassConsts`).
        let mut dc = if F & CL_LOGITS != 0 { base } else { T::zero() };
        for c in 0..C {
            let e = xs[c][i] - cs[c];
            d2 = fma(e, e, d2);
            if F & CL_LOGITS != 0 {
                dc = fma(hs[c] - xs[c][i], vs[c], dc);
            } else {
                dc = fma(cs[c], e, dc);
            }
        }
        let wm = if F & CL_MASK != 0 { m[i] } else { T::one() };
        tmp[i] = fma(if F & CL_MASK != 0 { wm * y[i] } else { y[i] }, d2, tmp[i]);
        if F & CL_GRAD != 0 {
            let fid = match (F & CL_LOGITS != 0, F & CL_MASK != 0) {
                (true, true) => wm * dc,
                (true, false) => dc,
                (false, true) => wf * wm * fma(-cr, dc, d2),
                (false, false) => wf * fma(-cr, dc, d2),
            };
            let gv = fid + own[i] + up[i] + back[i];
            g[i] = gv;
            if F & CL_LOGITS != 0 {
                yg[i] = fma(y[i], gv, yg[i]);
            }
        }
    }
}

/// Flags of [`class_line`]: write the gradient `g` (and, with [`CL_LOGITS`], add `y·g` to `yg`).
const CL_GRAD: u8 = 1;
/// Flag: a mask is given.
const CL_MASK: u8 = 2;
/// Flag: logits (`g` leaves out the part common to all classes; see [`ClassConsts`]).
const CL_LOGITS: u8 = 4;

/// [`class_line`] for any number of channels (and always the gradient), channel by channel.
#[inline(always)]
fn class_line_any<T: Real>(
    l: ClassLine<'_, T>,
    image: &[T],
    sp: usize,
    k: ClassConsts<'_, T>,
    g: &mut [T],
    [dist2, lin, tmp, yg]: [&mut [T]; 4],
) {
    let w = l.y.len();
    let (wf, cr) = (k.wf, k.cr);
    // `‖x − c‖²` in `dist2`; in `lin`, with logits `β − ⟨x − ĉ, v⟩`, else `⟨c, x − c⟩` (see
    // `ClassConsts`).
    dist2.fill(T::zero());
    lin.fill(if k.shifted { k.base } else { T::zero() });
    for (c, ((&ck, &hc), &v)) in k.cent.iter().zip(k.center).zip(k.weights).enumerate() {
        for ((d2, lv), &xv) in dist2.iter_mut().zip(lin.iter_mut()).zip(&image[c * sp..c * sp + w]) {
            let e = xv - ck;
            *d2 += e * e;
            if k.shifted {
                *lv -= (xv - hc) * v;
            } else {
                *lv += ck * e;
            }
        }
    }
    for (((t, &d2), &yv), &mv) in tmp.iter_mut().zip(dist2.iter()).zip(l.y).zip(l.m) {
        *t += mv * yv * d2;
    }
    if k.shifted {
        for (((gv, &mv), &lv), ((&o, &u), &bk)) in
            g.iter_mut().zip(l.m).zip(lin.iter()).zip(l.own.iter().zip(l.up).zip(l.back))
        {
            *gv = mv * lv + o + u + bk;
        }
        for ((s, &yv), &gv) in yg.iter_mut().zip(l.y).zip(g.iter()) {
            *s += yv * gv;
        }
    } else {
        for (((((gv, &mv), &d2), &lv), (&o, &u)), &bk) in
            g.iter_mut().zip(l.m).zip(dist2.iter()).zip(lin.iter()).zip(l.own.iter().zip(l.up)).zip(l.back)
        {
            *gv = wf * mv * (d2 - cr * lv) + o + u + bk;
        }
    }
}

/// Pass 2 over one block: fidelity, length and (where `grad` is given) the gradient of its
/// rows; fills `part` with `[fidelity, length, gradient check]` (before weights and reduction).
#[inline(always)]
pub(crate) fn pass2<T: Real, const FMA: bool>(
    p: &Problem<'_, T>,
    k: &Pass2<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    grad: Option<GradRows<T>>,
    part: &mut [f64],
) {
    part.fill(0.0);
    s.forget();
    s.cache = k.cache;
    let (lo, hi) = k.cached_rows(p, grad, blk);
    let in_place = k.in_place(grad);
    s.cache_hi = hi;
    let (n, c, w, sp) = (p.n, p.c, p.w, p.sp());
    let b = blk.b;
    let (cent, corr) = (k.centroids, k.corr);
    let mut fclock = 0;
    let flen = 3 * n * w;
    let flags =
        u8::from(grad.is_some()) * CL_GRAD + u8::from(p.mask.is_some()) * CL_MASK + u8::from(p.logits) * CL_LOGITS;
    for r in blk.r0..blk.r1 {
        // In the gradient buffer, rows before `r` already hold their gradient.
        s.cache_lo = if in_place { r } else { lo };
        // The inputs of the next rows the sweep will load, ahead of the hardware prefetcher.
        prefetch_rows(p, s.cache.filter(|_| r + 2 < hi), b, r + 2);
        // And the gradient rows it will write, where nothing else reads them first (S2 `f32`
        // in the AVX2 copy, 6 alternations: two threads 6.50 → 6.00 ms, one 12.3 → 11.5).
        if let Some(g) = grad.filter(|_| s.cache.is_some() && !in_place && !p.stream && r + 2 < blk.r1) {
            for cls in 0..n {
                // SAFETY: only a prefetch of a row of this block, which nothing writes yet.
                prefetch_line(unsafe { g.row_ref(p, b, cls, r + 2) });
            }
        }
        if p.d > 1 {
            prefetch_rows(p, s.cache.filter(|_| r + 1 + p.h < hi), b, r + 1 + p.h);
        }
        if r + 1 < p.d * p.h {
            for k in 0..c {
                prefetch_line(&p.image[(b * c + k) * sp + (r + 1) * w..][..w]);
            }
        }
        let (dd, hh) = (r / p.h, r % p.h);
        fclock += 1;
        let f_cur = s.flux_slot::<FMA>(p, k, b, r, fclock);
        part[1] += s.f_value[f_cur];
        let f_up = if grad.is_some() && hh > 0 { Some(s.flux_slot::<FMA>(p, k, b, r - 1, fclock)) } else { None };
        let f_back = if grad.is_some() && dd > 0 { Some(s.fd_entry::<FMA>(p, k, b, r - p.h, fclock)) } else { None };
        s.clock += 1;
        let yr = s.y_row::<FMA>(p, b, r);
        let ys = YLines { slots: &s.y, ones: &s.ones, p, b };
        let m = ys.line(yr, n);
        let (dist2, lin, tmp) = (&mut s.t1, &mut s.t2, &mut s.t3);
        let yg = &mut s.yg[..w];
        // The fidelity terms of all classes are added up per pixel in `tmp`, then summed once;
        // with logits, `Σ_n y_n·g_n` in `yg`.
        tmp.fill(T::zero());
        yg.fill(T::zero());
        for (cls, g) in s.g.chunks_exact_mut(w).enumerate() {
            let y = ys.line(yr, cls);
            let fl = |slot: usize, axis: usize| line(&s.flux, flen, w, slot, 3 * cls + axis);
            let lines = ClassLine {
                y,
                m,
                own: fl(f_cur, 0),
                up: match f_up {
                    Some(f) => fl(f, 1),
                    None => &s.zero[..w],
                },
                back: match f_back {
                    Some(at) => line(&s.fd_ring, n * w, w, at, cls),
                    None => &s.zero[..w],
                },
            };
            let image = &p.image[b * c * sp + r * w..];
            let kc = ClassConsts {
                cent: &cent[cls * c..(cls + 1) * c],
                center: k.center,
                weights: &k.weights[cls * c..(cls + 1) * c],
                base: k.base[cls],
                wf: k.fidelity_weight,
                cr: corr[cls],
                shifted: p.logits,
            };
            macro_rules! dispatch {
                ($($c:literal)*; $($f:literal)*) => {
                    dispatch!(@c ($($c)*) ($($f)*))
                };
                (@c ($($c:literal)*) $fs:tt) => {
                    match c {
                        $($c => dispatch!(@f $c $fs),)*
                        _ => class_line_any(lines, image, sp, kc, g, [&mut *dist2, &mut *lin, &mut *tmp, &mut *yg]),
                    }
                };
                (@f $c:literal ($($f:literal)*)) => {
                    match flags {
                        $($f => class_line::<T, FMA, $c, $f>(lines, image, sp, kc, g, [&mut *tmp, &mut *yg]),)*
                        _ => unreachable!("three flag bits"),
                    }
                };
            }
            dispatch!(1 2 3 4; 0 1 2 3 4 5 6 7);
        }
        part[0] += sum(tmp);
        let Some(gr) = grad else { continue };
        let scale = k.scale;
        if p.logits {
            // ∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m). A non-finite g_n (overflow) makes Σ y·g
            // non-finite too (0·∞ is NaN).
            part[2] += check_sum(yg);
            // With logits and a gradient pass 1 cached every row of the block (`k.cache`), so
            // row r's probabilities are there: in the gradient buffer, overwritten in place, or
            // in a buffer of their own.
            debug_assert!(matches!(yr, YRow::Cached(..)), "logits with a gradient are cached");
            for (cls, g) in s.g.chunks_exact(w).enumerate() {
                // SAFETY: row r of this block's sample belongs to this block only, and no
                // reference into it is live (`ys` reads it from the gradient buffer only when
                // it is not `in_place`).
                let out = unsafe { gr.row(p, b, cls, r) };
                if in_place {
                    for ((o, &gv), &mean) in out.iter_mut().zip(g).zip(yg.iter()) {
                        *o = scale * *o * (gv - mean);
                    }
                } else {
                    for (((o, &y), &gv), &mean) in out.iter_mut().zip(ys.line(yr, cls)).zip(g).zip(yg.iter()) {
                        *o = scale * y * (gv - mean);
                    }
                }
            }
        } else {
            tmp.fill(T::zero());
            for (cls, g) in s.g.chunks_exact(w).enumerate() {
                // SAFETY: as above.
                let out = unsafe { gr.row(p, b, cls, r) };
                for ((o, &gv), t) in out.iter_mut().zip(g).zip(tmp.iter_mut()) {
                    let v = scale * gv;
                    *t += v * T::zero();
                    *o = v;
                }
            }
            part[2] += sum(tmp);
        }
    }
    s.cache = None;
}
