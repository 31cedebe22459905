//! The two passes over one block of rows. Pass 1 is written over chunks of [`L`] lanes (each
//! `for l in 0..L` loop is the scalar form of the maths, one pixel per lane, vectorised in each
//! ISA copy); pass 2 over the ISA's registers (`crate::simd`), a register of pixels at a time
//! with every class inside (see [`Row::run`]), so fluxes, fidelity terms and gradient stay in
//! registers. Sums are kept per lane of a chunk, in `T` for at most [`GROUP`] chunks (pass 1) or
//! the classes of one register (pass 2), then in `f64`, and the lanes are added in lane order at
//! the end of a block: the order of every sum is fixed by the shape alone.
//!
//! A row lives in padded lines (see [`Plan::line`]): zeros on each side, so that the neighbours
//! of a row's first and last pixels read zeros, and so do their masks, which removes those
//! pairs. Pass 2 reads its own rows' probabilities back from the gradient buffer, where pass 1
//! left them (logits with a gradient), and computes any other row from the input, so no block
//! reads what another block writes.

#![allow(clippy::needless_range_loop, reason = "lane loops index several arrays by lane: the scalar form of the maths")]

use msloss_core::{LengthKind, Softmax};

use crate::float::CpuFloat;
use crate::plan::{L, Plan};
use crate::simd::{lanes, load, store, values};
use pulp::Simd;

type V<T> = [T; L];

/// Chunks a lane sums in `T` before it is added to the lane's `f64` sum.
const GROUP: usize = 16;
/// Where a row starts in its line.
const OFF: usize = L;

/// What every block reads: the call's inputs and parameters in `T`.
pub(crate) struct Problem<'a, T> {
    pub(crate) plan: Plan,
    pub(crate) scores: &'a [T],
    pub(crate) logits: bool,
    pub(crate) image: &'a [T],
    pub(crate) mask: Option<&'a [T]>,
    pub(crate) length: LengthKind,
    pub(crate) lambda: T,
    pub(crate) weight: T,
    pub(crate) delta: T,
    /// The reduction's factor, applied to the gradient.
    pub(crate) scale: T,
    /// The largest image magnitude and probability accepted (`msloss_core::image_limit`).
    pub(crate) image_limit: T,
    pub(crate) probability_limit: T,
}

/// One thread's scratch: the ring of rows (read by pass 2), the lines the passes write, the
/// rows the ring holds, pass 1's `f64` lane sums, and pass 2's chunk of each class's gradient
/// and west flux (see [`Row`]).
#[derive(Debug, Default)]
pub(crate) struct Scratch<T> {
    ring: Vec<T>,
    work: Vec<T>,
    keys: Vec<usize>,
    wide: Vec<[f64; L]>,
    gbuf: Vec<V<T>>,
    carry: Vec<V<T>>,
    seen: Seen,
}

impl<T: CpuFloat> Scratch<T> {
    /// Grows to `plan`'s needs (allocates only when it must grow).
    pub(crate) fn fit(&mut self, plan: &Plan) {
        let grow = |v: &mut Vec<T>, lines: usize| {
            if v.len() < lines * plan.line {
                v.resize(lines * plan.line, T::zero());
            }
        };
        grow(&mut self.ring, ring_lines(plan));
        grow(&mut self.work, work_lines(plan));
        if self.keys.len() < plan.ring {
            self.keys.resize(plan.ring, usize::MAX);
        }
        let sums = plan.classes * (1 + plan.channels);
        if self.wide.len() < sums {
            self.wide.resize(sums, [0.0; L]);
        }
        self.seen.slots.resize(SEEN, EMPTY);
        if self.carry.len() < plan.classes {
            self.gbuf.resize(plan.classes, [T::zero(); L]);
            self.carry.resize(plan.classes, [T::zero(); L]);
        }
    }
}

/// The ring: `N` lines of probabilities and one of mask per row it holds, a line of zeros (the
/// row and mask of a neighbour that is not there) and a line of ones (the mask when none is given).
fn ring_lines(p: &Plan) -> usize {
    p.ring * (p.classes + 1) + 2
}

/// Lines of each part of [`Work`], in its order.
fn work_parts(p: &Plan) -> [usize; 3] {
    let d_ring = if p.depth > 1 { (p.height + 1) * p.classes } else { 0 };
    [p.channels, p.classes, d_ring]
}

/// The work lines in all.
fn work_lines(p: &Plan) -> usize {
    work_parts(p).iter().sum()
}

/// The lines the sweeps write, carved from the work buffer.
struct Work<'a, T> {
    /// The image row, minus the sample's centre in pass 2 (`C` lines).
    x: &'a mut [T],
    /// The H fluxes of the row before (`N` lines), replaced by this row's as it goes.
    fh: &'a mut [T],
    /// The D fluxes of the last `H + 1` rows (`(H + 1)·N` lines, in 3D).
    fd: &'a mut [T],
}

impl<'a, T> Work<'a, T> {
    fn carve(mut w: &'a mut [T], p: &Plan) -> Self {
        let mut part = work_parts(p).into_iter().map(|lines| {
            let (head, rest) = core::mem::take(&mut w).split_at_mut(lines * p.line);
            w = rest;
            head
        });
        let mut next = || part.next().unwrap_or_default();
        Self { x: next(), fh: next(), fd: next() }
    }
}

/// Line `i` of `lines` (each `len` long).
#[inline(always)]
fn line<T>(lines: &[T], len: usize, i: usize) -> &[T] {
    &lines[i * len..(i + 1) * len]
}

#[inline(always)]
fn line_mut<T>(lines: &mut [T], len: usize, i: usize) -> &mut [T] {
    &mut lines[i * len..(i + 1) * len]
}

/// The `nc` chunks of a line's row.
#[inline(always)]
fn ch<T>(line: &[T], nc: usize) -> &[V<T>] {
    line[OFF..OFF + nc * L].as_chunks::<L>().0
}

/// Adds a group's lane sums to the `f64` lanes.
#[inline(always)]
fn widen<T: CpuFloat>(wide: &mut [f64], part: &[T]) {
    for (w, v) in wide.iter_mut().zip(part) {
        *w += v.to_f64_lossless();
    }
}

/// The lanes' total, in lane order.
fn lanes_total(wide: &[f64; L]) -> f64 {
    wide.iter().fold(0.0, |a, &b| a + b)
}

/// Adds `Σ m·y·x` over the chunks to `sums`, for each line `x` of `xs`, each lane summing
/// [`GROUP`] chunks at a time in `T`: `K` sums in one sweep, in registers, each added in the
/// order a sweep of its own would add it.
#[inline(always)]
fn weighted_sums<T: CpuFloat, const K: usize>(y: &[V<T>], m: &[V<T>], xs: [&[V<T>]; K], sums: &mut [[f64; L]]) {
    let (m, xs) = (&m[..y.len()], xs.map(|x| &x[..y.len()]));
    for g in (0..y.len()).step_by(GROUP) {
        let mut part = [[T::zero(); L]; K];
        for j in g..(g + GROUP).min(y.len()) {
            for l in 0..L {
                let w = m[j][l] * y[j][l];
                for k in 0..K {
                    part[k][l] += w * xs[k][j][l];
                }
            }
        }
        for (sum, part) in sums.iter_mut().zip(&part) {
            widen(sum, part);
        }
    }
}

/// Whether `term(v) == 0` for every `v` of `src`, where `term` is `>= 0` or NaN: the terms are
/// summed in lanes (such a sum is zero only if each term is), so the test vectorises.
#[inline(always)]
fn all_zero<T: CpuFloat>(src: &[T], term: impl Fn(T) -> T) -> bool {
    let (chunks, rest) = src.as_chunks::<L>();
    let mut acc = [T::zero(); L];
    for chunk in chunks {
        for l in 0..L {
            acc[l] += term(chunk[l]);
        }
    }
    let rest = rest.iter().fold(T::zero(), |a, &v| a + term(v));
    acc.iter().fold(rest, |a, &v| a + v) == T::zero()
}

/// Input checks as [`all_zero`] terms: finite (`v·0` is NaN for ±∞ and NaN), finite and
/// non-negative (and within the limit), and 0 or 1.
#[inline(always)]
fn finite<T: CpuFloat>(v: T) -> T {
    v * T::zero()
}
#[inline(always)]
fn probability_ok<T: CpuFloat>(v: T, limit: T) -> T {
    v * T::zero() + (v.abs() - v) + beyond(v, limit)
}
/// `|v| − limit` where positive, else 0.
#[inline(always)]
fn beyond<T: CpuFloat>(v: T, limit: T) -> T {
    let e = v.abs() - limit;
    if e > T::zero() { e } else { T::zero() }
}
#[inline(always)]
fn mask_ok<T: CpuFloat>(v: T) -> T {
    (v * (v - T::one())).abs()
}

/// The gradient buffer as pass 1 left it: the probabilities of rows `rows` of sample `b`, which
/// pass 2 reads back rather than computing the softmax again (it reads each row before it
/// writes that row's gradient).
#[derive(Clone, Copy)]
pub(crate) struct Cache<'a, T> {
    pub(crate) grad: &'a GradOut<'a, T>,
    pub(crate) b: usize,
    pub(crate) rows: (usize, usize),
}

impl<T> Cache<'_, T> {
    /// Whether it holds row `q`.
    fn holds(&self, q: usize) -> bool {
        (self.rows.0..self.rows.1).contains(&q)
    }
}

/// Fills ring slot `slot` with row `q` of sample `b`: each class's probabilities (read back from
/// `cache` where it holds the row, else the softmax of the logits, or the probabilities copied)
/// and the mask. With `check`, returns whether an input value is invalid.
#[inline(always)]
fn fill_row<T: CpuFloat>(
    p: &Problem<'_, T>,
    ring: &mut [T],
    slot: usize,
    b: usize,
    q: usize,
    cache: Option<&Cache<'_, T>>,
    check: bool,
) -> bool {
    let (n_cls, w, len, nc) = (p.plan.classes, p.plan.width, p.plan.line, p.plan.chunks());
    let lines = &mut ring[slot * (n_cls + 1) * len..(slot + 1) * (n_cls + 1) * len];
    let mut bad = false;
    if let Some(mask) = p.mask {
        let src = &mask[p.plan.row_start(b, 1, 0, q)..][..w];
        line_mut(lines, len, n_cls)[OFF..OFF + w].copy_from_slice(src);
        bad |= check && !all_zero(src, mask_ok);
    }
    if let Some(cache) = cache.filter(|c| c.holds(q)) {
        for n in 0..n_cls {
            // SAFETY: the block's own row, read before the block writes its gradient there.
            let src = unsafe { cache.grad.row(p.plan.row_start(cache.b, n_cls, n, q), w) };
            line_mut(lines, len, n)[OFF..OFF + w].copy_from_slice(src);
        }
        return bad;
    }
    for n in 0..n_cls {
        let src = &p.scores[p.plan.row_start(b, n_cls, n, q)..][..w];
        line_mut(lines, len, n)[OFF..OFF + w].copy_from_slice(src);
        bad |= check
            && !if p.logits {
                all_zero(src, finite)
            } else {
                all_zero(src, |v| probability_ok(v, p.probability_limit))
            };
    }
    if p.logits {
        // The softmax, the maximum subtracted, chunk by chunk with the classes inside.
        let lines = &mut lines[..n_cls * len];
        for ci in 0..nc {
            let at = |n: usize| n * len + OFF + ci * L;
            let chunk = |lines: &[T], n: usize| -> V<T> { lines[at(n)..][..L].as_chunks::<L>().0[0] };
            let mut mx = chunk(lines, 0);
            for n in 1..n_cls {
                let z = chunk(lines, n);
                for l in 0..L {
                    mx[l] = if z[l] > mx[l] { z[l] } else { mx[l] };
                }
            }
            let mut sum = [T::zero(); L];
            for n in 0..n_cls {
                let mut e = chunk(lines, n);
                for l in 0..L {
                    e[l] = T::exp_nonpos(e[l] - mx[l]);
                    sum[l] += e[l];
                }
                lines[at(n)..at(n) + L].copy_from_slice(&e);
            }
            let inv = sum.map(|v| T::one() / v);
            for n in 0..n_cls {
                let e = chunk(lines, n);
                lines[at(n)..at(n) + L].copy_from_slice(&core::array::from_fn::<T, L, _>(|l| e[l] * inv[l]));
            }
        }
    }
    bad
}

/// Fills the image lines with row `q` of sample `b`, minus `centre` where given (pass 2); pass 1
/// (no centre) returns whether a value is not finite.
#[inline(always)]
fn fill_image<T: CpuFloat>(p: &Problem<'_, T>, x: &mut [T], b: usize, q: usize, centre: &[T]) -> bool {
    let (c, w, len) = (p.plan.channels, p.plan.width, p.plan.line);
    let mut bad = false;
    for k in 0..c {
        let src = &p.image[p.plan.row_start(b, c, k, q)..][..w];
        let l = &mut line_mut(x, len, k)[OFF..OFF + w];
        l.copy_from_slice(src);
        match centre.get(k) {
            Some(&ck) => l.iter_mut().for_each(|v| *v -= ck),
            None => bad |= !all_zero(src, |v| finite(v) + beyond(v, p.image_limit)),
        }
    }
    bad
}

/// Zeros the scratch a block uses (pads stay zero: fills write rows only) and sets the line of
/// ones.
fn reset<T: CpuFloat>(p: &Plan, ring: &mut [T], work: &mut [T]) {
    let ring = &mut ring[..ring_lines(p) * p.line];
    ring.fill(T::zero());
    let ones = ring_lines(p) - 1;
    line_mut(ring, p.line, ones)[OFF..OFF + p.width].fill(T::one());
    work[..work_lines(p) * p.line].fill(T::zero());
}

/// Asks the CPU to bring row `q` of sample `b` of the `planes` planes at `src` (scores or the
/// gradient: `N`; the image: `C`) into its second-level cache, to be read soon (a hint: nothing
/// is read, any address will do; nothing on targets without a prefetch instruction).
#[inline(always)]
fn prefetch_row<T>(plan: &Plan, src: *const T, planes: usize, b: usize, q: usize) {
    for n in (0..planes).filter(|_| q < plan.rows) {
        let row = src.wrapping_add(plan.row_start(b, planes, n, q));
        for i in (0..plan.width).step_by(64 / size_of::<T>()) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch reads nothing and never faults, whatever the address.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(row.wrapping_add(i).cast())
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = row.wrapping_add(i);
        }
    }
}

/// The ring line of the mask of the row in `slot`: its own, ones without a mask, zeros for a row
/// that is not there.
fn mask_line<T>(p: &Problem<'_, T>, slot: Option<usize>) -> usize {
    let zero = p.plan.ring * (p.plan.classes + 1);
    match (slot, p.mask) {
        (None, _) => zero,
        (Some(_), None) => zero + 1,
        (Some(k), Some(_)) => k * (p.plan.classes + 1) + p.plan.classes,
    }
}

/// Pass 1 over `rows` of sample `b`: `sums[n·(1 + C)] = Σ m·y_n` and
/// `sums[n·(1 + C) + 1 + k] = Σ m·y_n·x_k`, and the block's probabilities in `cache` where
/// given. Returns whether an input value is invalid.
#[inline(always)]
pub(crate) fn pass1<T: CpuFloat>(
    p: &Problem<'_, T>,
    scratch: &mut Scratch<T>,
    b: usize,
    rows: core::ops::Range<usize>,
    sums: &mut [f64],
    cache: Option<&GradOut<'_, T>>,
) -> bool {
    let plan = &p.plan;
    let (n_cls, c, len, nc) = (plan.classes, plan.channels, plan.line, plan.chunks());
    let Scratch { ring, work, wide, .. } = scratch;
    reset(plan, ring, work);
    let wk = Work::carve(work, plan);
    let wide = &mut wide[..n_cls * (1 + c)];
    wide.fill([0.0; L]);
    let mut bad = false;
    for q in rows {
        prefetch_row(plan, p.scores.as_ptr(), n_cls, b, q + 1);
        prefetch_row(plan, p.image.as_ptr(), c, b, q + 1);
        bad |= fill_row(p, ring, 0, b, q, None, true);
        bad |= fill_image(p, wk.x, b, q, &[]);
        if let Some(grad) = cache {
            for n in 0..n_cls {
                // SAFETY: row q of class n of sample b belongs to this block alone.
                let out = unsafe { grad.row(plan.row_start(b, n_cls, n, q), plan.width) };
                out.copy_from_slice(&line(ring, len, n)[OFF..OFF + plan.width]);
            }
        }
        let m = ch(line(ring, len, mask_line(p, Some(0))), nc);
        // Σ m·y is Σ m·y·1 (a product by one is exact): the line of ones leads the channels.
        let ones = ch(line(ring, len, ring_lines(plan) - 1), nc);
        for n in 0..n_cls {
            let y = ch(line(ring, len, n), nc);
            let sums = &mut wide[n * (1 + c)..(n + 1) * (1 + c)];
            for (at, sums) in (0..).step_by(4).zip(sums.chunks_mut(4)) {
                let x = |k: usize| if at + k == 0 { ones } else { ch(line(wk.x, len, at + k - 1), nc) };
                match sums.len() {
                    1 => weighted_sums::<T, 1>(y, m, core::array::from_fn(x), sums),
                    2 => weighted_sums::<T, 2>(y, m, core::array::from_fn(x), sums),
                    3 => weighted_sums::<T, 3>(y, m, core::array::from_fn(x), sums),
                    _ => weighted_sums::<T, 4>(y, m, core::array::from_fn(x), sums),
                }
            }
        }
    }
    for (sum, lanes) in sums.iter_mut().zip(wide.iter()) {
        *sum = lanes_total(lanes);
    }
    bad
}

/// Pass 2's constants of one class, in `T`: `[⟨c, δ⟩, κ, a, δ_0…, β_0…, c_0…]`, with `c` the
/// centroid (`centroid(k)`, `k < C`), `δ = c − c̄` its offset from the sample's centre
/// (`centre(k)`), and `κ = 2·ε_c/(A + ε_c)`.
///
/// Pass 2 reads the image as `u = x − c̄`. The fidelity gradient is then
/// `w·m·(‖u − δ‖² − κ·(⟨c, u⟩ − ⟨c, δ⟩))`; for logits the softmax's Jacobian cancels the
/// `‖u‖²` common to all classes, leaving `w·m·(a + ⟨β, u⟩)` with `a = ‖δ‖² + κ·⟨c, δ⟩` and
/// `β = −2·δ − κ·c`: terms the size of the centroids' spread, not of the image, so near-equal
/// centroids lose no digits.
pub(crate) fn class_consts<T: CpuFloat>(
    centroid: impl Fn(usize) -> f64,
    centre: impl Fn(usize) -> f64,
    area: f64,
    eps: f64,
    out: &mut [T],
) {
    let c = (out.len() - 3) / 3;
    let kappa = 2.0 * eps / (area + eps);
    let delta = |k: usize| centroid(k) - centre(k);
    let dd: f64 = (0..c).map(|k| delta(k) * delta(k)).sum();
    let cd: f64 = (0..c).map(|k| centroid(k) * delta(k)).sum();
    out[0] = T::from_f64_lossy(cd);
    out[1] = T::from_f64_lossy(kappa);
    out[2] = T::from_f64_lossy(dd + kappa * cd);
    for k in 0..c {
        out[3 + k] = T::from_f64_lossy(delta(k));
        out[3 + c + k] = T::from_f64_lossy(-2.0 * delta(k) - kappa * centroid(k));
        out[3 + 2 * c + k] = T::from_f64_lossy(centroid(k));
    }
}

/// The centroid in one class's [`class_consts`] table.
pub(crate) fn centroid<T>(table: &[T]) -> &[T] {
    let c = (table.len() - 3) / 3;
    &table[3 + 2 * c..]
}

/// Length of one class's [`class_consts`] for `c` channels.
pub(crate) fn consts_len(c: usize) -> usize {
    3 + 3 * c
}

/// The caller's gradient buffer, written by many blocks at once, each on rows of its own.
pub(crate) struct GradOut<'a, T> {
    ptr: *mut T,
    len: usize,
    _buf: core::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: a `GradOut` is a `&mut [T]` handed out row by row; `T` is `f32` or `f64`, and the
// rows handed to different threads never overlap (see `GradOut::row`).
unsafe impl<T: Send> Send for GradOut<'_, T> {}
// SAFETY: as above; shared references only give out disjoint rows.
unsafe impl<T: Send> Sync for GradOut<'_, T> {}

impl<'a, T> GradOut<'a, T> {
    pub(crate) fn new(buf: &'a mut [T]) -> Self {
        Self { ptr: buf.as_mut_ptr(), len: buf.len(), _buf: core::marker::PhantomData }
    }

    /// The `len` elements from `start`.
    ///
    /// # Safety
    /// No other reference to those elements may be alive: each block asks only for the rows
    /// of its own sample and block, one class and row at a time.
    #[expect(clippy::mut_from_ref, reason = "disjoint rows of one buffer, handed to many threads")]
    unsafe fn row(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len), "row within the buffer");
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Pass 2 over `rows` of sample `b`: returns `(F, Len)` (sums before weights and reduction) and
/// whether every gradient value it wrote (where `grad` is given) is finite. `consts` holds the
/// sample's centre `c̄` (`C` values), then its [`class_consts`] tables, one per class.
#[inline(always)]
pub(crate) fn pass2<T: CpuFloat, S: Simd>(
    s: S,
    p: &Problem<'_, T>,
    scratch: &mut Scratch<T>,
    consts: &[T],
    b: usize,
    rows: core::ops::Range<usize>,
    grad: Option<&GradOut<'_, T>>,
) -> (f64, f64, bool) {
    let plan = &p.plan;
    let Scratch { ring, work, keys, gbuf, carry, seen, .. } = scratch;
    reset(plan, ring, work);
    let mut wk = Work::carve(work, plan);
    keys.fill(usize::MAX);
    if core::mem::take(&mut seen.used) {
        seen.slots.fill(EMPTY);
    }
    // With logits and a gradient, pass 1 left the block's probabilities in the gradient buffer.
    let cache = grad.filter(|_| plan.cache).map(|grad| Cache { grad, b, rows: (rows.start, rows.end) });
    let mut ctx = Row { p, ring, wk: &mut wk, keys, gbuf, carry, seen, cache: cache.as_ref(), consts, b, grad };
    let start = rows.start;
    let back = if plan.depth > 1 { plan.height } else { 1 };
    let mut sums = [[0.0; L]; 2];
    // With a gradient, the fluxes of the rows before the block come first: its first rows'
    // gradients gather them.
    let first = if grad.is_some() { start.saturating_sub(back) } else { start };
    let mut finite = true;
    for q in first..rows.end {
        let (full, sums) = (q >= start, &mut sums);
        finite &= match (p.length, plan.depth > 1) {
            (LengthKind::L1, false) => ctx.run::<S, L1, false>(s, q, full, sums),
            (LengthKind::L1, true) => ctx.run::<S, L1, true>(s, q, full, sums),
            (LengthKind::L2, false) => ctx.run::<S, L2, false>(s, q, full, sums),
            (LengthKind::L2, true) => ctx.run::<S, L2, true>(s, q, full, sums),
            (LengthKind::Charbonnier, false) => ctx.run::<S, CHARBONNIER, false>(s, q, full, sums),
            (LengthKind::Charbonnier, true) => ctx.run::<S, CHARBONNIER, true>(s, q, full, sums),
        };
    }
    (lanes_total(&sums[0]), lanes_total(&sums[1]), finite)
}

/// The ring slot of row `q`, filled if it holds another row.
#[inline(always)]
fn slot<T: CpuFloat>(
    p: &Problem<'_, T>,
    ring: &mut [T],
    keys: &mut [usize],
    cache: Option<&Cache<'_, T>>,
    b: usize,
    q: usize,
) -> usize {
    let k = q % p.plan.ring;
    if keys[k] != q {
        fill_row(p, ring, k, b, q, cache, false);
        keys[k] = q;
    }
    k
}

/// `sign(d)` with `sign(0) = 0`.
#[inline(always)]
fn sign0<T: CpuFloat>(d: T) -> T {
    if d > T::zero() {
        T::one()
    } else if d < T::zero() {
        -T::one()
    } else {
        T::zero()
    }
}

/// One class's register of pixels and its neighbours, as values: probabilities `y` and masks
/// `m` of the pixels, of their east neighbours, of the rows south (H) and deep (D), and of their
/// west neighbours, in that order.
struct Around<T> {
    y: [V<T>; 5],
    m: [V<T>; 5],
}

/// The pixels [`Doubt`] met in a block, pixel `s` in slot `s % SEEN` (two rows fit up to width
/// `SEEN / 2`): index, the reference's softmax, the class last asked for and its probability.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    slots: Vec<(usize, Softmax, usize, f64)>,
    used: bool,
}
const SEEN: usize = 2048;
const EMPTY: (usize, Softmax, usize, f64) = (usize::MAX, Softmax::EMPTY, 0, 0.0);

/// Where L1 signs of logits' softmax are checked: row `q` of sample `b`, the tolerance, and the
/// pixels met (one doubtful for a class and pair is often doubtful for others).
struct Doubt<'a, T> {
    p: &'a Problem<'a, T>,
    b: usize,
    q: usize,
    tol: T,
    seen: &'a mut Seen,
}

impl<T: CpuFloat> Doubt<'_, T> {
    /// Class `n`'s east, south, (in a volume) deep and west fluxes `f` of the `lanes` pixels from
    /// `px`, each replaced where its pair with that neighbour of [`Around`] is valid and its
    /// difference within `T`'s rounding of zero by the sign of the reference's own difference in
    /// `f64`, computed from the logits as it does.
    #[inline(never)]
    #[cold]
    fn fix(&mut self, a: &Around<T>, n: usize, (px, lanes): (usize, usize), f: &mut [V<T>; 4], volume: bool) {
        let Self { p, b, q, tol, seen } = self;
        let (plan, y0, m0) = (&p.plan, &a.y[0], &a.m[0]);
        let (base, sp) = (plan.row_start(*b, plan.classes, 0, 0), plan.rows * plan.width);
        let z = |i: usize| p.scores.get(i).map_or(0.0, |v| v.to_f64_lossless());
        let mut prob = |s: usize| {
            let slot = &mut seen.slots[s % SEEN];
            if slot.0 != s {
                seen.used = true;
                *slot = (s, Softmax::new(|m| z(base + m * sp + s), plan.classes), usize::MAX, 0.0);
            }
            if slot.2 != n {
                (slot.2, slot.3) = (n, slot.1.probability(z(base + n * sp + s)));
            }
            slot.3
        };
        for (flux, i) in f.iter_mut().zip(1..).filter(|&(_, i)| i != 3 || volume) {
            let (yv, mv) = (&a.y[i], &a.m[i]);
            for l in 0..lanes {
                let d = yv[l] - y0[l];
                if m0[l] * mv[l] == T::one() && d.abs() < *tol * (y0[l] + yv[l]) {
                    // The pair's forward difference: from its first pixel to its second.
                    let s = *q * plan.width + px + l;
                    let (first, second) = match i {
                        1 => (s, s + 1),
                        2 => (s, s + plan.width),
                        3 => (s, s + plan.height * plan.width),
                        _ => (s - 1, s),
                    };
                    flux[l] = sign0(T::from_f64_lossy(prob(second) - prob(first)));
                }
            }
        }
    }
}

/// The length kinds as constants of [`Row::run`].
const L1: u8 = 0;
const L2: u8 = 1;
const CHARBONNIER: u8 = 2;

/// What pass 2 keeps across the rows of a block.
struct Row<'s, 'w, T> {
    p: &'s Problem<'s, T>,
    ring: &'s mut [T],
    wk: &'s mut Work<'w, T>,
    keys: &'s mut [usize],
    /// Each class's gradient of the register's pixels, before the softmax's Jacobian (logits).
    gbuf: &'s mut [V<T>],
    /// Each class's east fluxes of the register before (Charbonnier).
    carry: &'s mut [V<T>],
    seen: &'s mut Seen,
    cache: Option<&'s Cache<'s, T>>,
    consts: &'s [T],
    b: usize,
    grad: Option<&'s GradOut<'s, T>>,
}

/// Pass 2 of one block as pulp's operation: [`pass2`] in the registers of the instruction set
/// that `Arch::dispatch` picks.
pub(crate) struct Pass2<'a, T> {
    pub(crate) p: &'a Problem<'a, T>,
    pub(crate) scratch: &'a mut Scratch<T>,
    pub(crate) consts: &'a [T],
    pub(crate) b: usize,
    pub(crate) rows: core::ops::Range<usize>,
    pub(crate) grad: Option<&'a GradOut<'a, T>>,
}

impl<T: CpuFloat> pulp::WithSimd for Pass2<'_, T> {
    type Output = (f64, f64, bool);

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> (f64, f64, bool) {
        pass2(s, self.p, self.scratch, self.consts, self.b, self.rows, self.grad)
    }
}

/// Stores register `v` as the pixels from `px` of the gradient row that starts at `start`
/// (`w` pixels long; the last register may be cut).
#[inline(always)]
fn store_grad<T: CpuFloat, S: Simd>(s: S, grad: &GradOut<'_, T>, (start, w): (usize, usize), px: usize, v: T::R<S>) {
    let n = lanes::<T, S>(s).min(w - px);
    // SAFETY: pixels of a row of this block's own sample and rows (see `GradOut::row`).
    let out = unsafe { grad.row(start + px, n) };
    if n == lanes::<T, S>(s) {
        store(s, out, v);
    } else {
        out.copy_from_slice(&values::<T, S>(&v)[..n]);
    }
}

/// The lanes of `v` in a chunk's array (the rest zero).
#[inline(always)]
fn to_array<T: CpuFloat, S: Simd>(v: &T::R<S>) -> V<T> {
    let mut out = [T::zero(); L];
    let lanes = values::<T, S>(v);
    out[..lanes.len()].copy_from_slice(lanes);
    out
}

impl<T: CpuFloat> Row<'_, '_, T> {
    /// Pass 2 on row `q`, a register of pixels at a time with every class inside: the fluxes
    /// of each class's pairs (j, j + 1), (j, south) and (j, deep), the length's and (`full`) the
    /// fidelity's terms added to `sums`, and (a gradient, `full`) the row's gradient; returns
    /// whether its values are all finite. With a gradient and not `full` (a row before the
    /// block), only the fluxes the next rows gather. A register holds `W` of a chunk's `L` lanes
    /// (`L/W` registers a chunk), and its sums go to those lanes.
    #[inline(always)]
    fn run<S: Simd, const KIND: u8, const D: bool>(
        &mut self,
        s: S,
        q: usize,
        full: bool,
        sums: &mut [[f64; L]; 2],
    ) -> bool {
        let (p, grad_on) = (self.p, self.grad.is_some());
        let plan = &p.plan;
        let (n_cls, c, w, h, len) = (plan.classes, plan.channels, plan.width, plan.height, plan.line);
        let (b, cache) = (self.b, self.cache);
        // The rows the next row fills: its image, and the probabilities of the row south of it.
        prefetch_row(plan, p.image.as_ptr(), c, b, q + 1);
        let south_src = cache.filter(|c| c.holds(q + 2));
        prefetch_row(plan, south_src.map_or(p.scores.as_ptr(), |c| c.grad.ptr.cast_const()), n_cls, b, q + 2);
        let cur = slot(p, self.ring, self.keys, cache, b, q);
        // Neighbours along H (same slice) and D; absent ones read the line of zeros, mask included.
        let south = if q % h + 1 < h { Some(slot(p, self.ring, self.keys, cache, b, q + 1)) } else { None };
        let deep = if D && q + h < plan.rows { Some(slot(p, self.ring, self.keys, cache, b, q + h)) } else { None };
        if full {
            fill_image(p, self.wk.x, b, q, &self.consts[..c]);
        }
        let (ring, x) = (&*self.ring, &*self.wk.x);
        let zero = plan.ring * (n_cls + 1);
        let lanes = lanes::<T, S>(s);
        // Where a line starts in the ring, and its register at pixel `px` shifted by `shift − 1`.
        let class_line = |sl: Option<usize>, n: usize| sl.map_or(zero, |k| k * (n_cls + 1) + n) * len;
        let at = |start: usize, px: usize, shift: usize| load::<T, S>(s, &ring[start + OFF - 1 + shift + px..]);
        let (m0_line, ms_line) = (mask_line(p, Some(cur)) * len, mask_line(p, south) * len);
        let md_line = mask_line(p, deep) * len;
        let tw = consts_len(c);
        let mut doubt = Doubt { p, b, q, tol: T::EPS * T::from_f64_lossy((n_cls + 8) as f64), seen: &mut *self.seen };
        let check_doubt = grad_on && p.logits && p.length == LengthKind::L1;
        // The D fluxes in a ring of H + 1 rows: this row's, and those of the row a slice before.
        let d_slot = |r: usize| (r % (h + 1)) * n_cls;
        let (fd_new, fd_old) = (d_slot(q), if q >= h { d_slot(q - h) } else { d_slot(q + 1) });
        let logits_out = grad_on && full && p.logits;
        // The second term of the fidelity: `⟨β, u⟩` (logits) or `⟨c, u⟩` (probabilities).
        let t2_at = if p.logits { 3 + c } else { 3 + 2 * c };
        let k = |v: T| T::vsplat(s, v);
        let (zr, one, two) = (k(T::zero()), k(T::one()), k(T::one() + T::one()));
        let (delta, delta2, tol) = (k(p.delta), k(p.delta * p.delta), k(doubt.tol));
        let (weight, lambda, scale) = (k(p.weight), k(p.lambda), k(p.scale));
        let (add, sub, mul) = (|a, b| T::vadd(s, a, b), |a, b| T::vsub(s, a, b), |a, b| T::vmul(s, a, b));
        let sign = |d| sub(T::vselect(s, T::vgt(s, d, zr), one, zr), T::vselect(s, T::vlt(s, d, zr), one, zr));
        // The west pair's flux is the east flux of the pixel before: recomputed where that is
        // cheap (L1, L2), else shifted across lanes (Charbonnier).
        let west = grad_on && KIND != CHARBONNIER;
        let first_lane =
            T::vlt(s, load::<T, S>(s, &core::array::from_fn::<T, L, _>(|i| T::from_f64_lossy(i as f64))), k(T::one()));
        self.carry[..n_cls].fill([T::zero(); L]);
        // `Σ g·0` over the gradient written: 0, or NaN where a value is not finite.
        let mut nonfinite = zr;
        let [fid, len_sum] = sums;
        for px in (0..w).step_by(lanes) {
            let (m0, me, ms) = (at(m0_line, px, 1), at(m0_line, px, 2), at(ms_line, px, 1));
            let md = if D { at(md_line, px, 1) } else { zr };
            let mw = if west { at(m0_line, px, 0) } else { zr };
            // The validity of each pair: a missing or masked pair gives 0.
            let (ve, vs, vd, vw) = (mul(m0, me), mul(m0, ms), mul(m0, md), mul(mw, m0));
            let (mut part_len, mut part_fid, mut gsum) = (zr, zr, zr);
            for n in 0..n_cls {
                let own = class_line(Some(cur), n);
                let (y0, ye, ys) = (at(own, px, 1), at(own, px, 2), at(class_line(south, n), px, 1));
                let yd = if D { at(class_line(deep, n), px, 1) } else { zr };
                let yw = if west { at(own, px, 0) } else { zr };
                let (de, ds) = (mul(sub(ye, y0), ve), mul(sub(ys, y0), vs));
                let dd = if D { mul(sub(yd, y0), vd) } else { zr };
                let dw = if west { mul(sub(y0, yw), vw) } else { zr };
                let (mut e, mut sf, mut df, mut fw, term) = match KIND {
                    L1 => {
                        let abs = |d| T::vabs(s, d);
                        (sign(de), sign(ds), sign(dd), sign(dw), add(add(abs(de), abs(ds)), abs(dd)))
                    }
                    L2 => {
                        let sq = add(add(mul(de, de), mul(ds, ds)), mul(dd, dd));
                        (mul(two, de), mul(two, ds), mul(two, dd), mul(two, dw), sq)
                    }
                    _ => {
                        let sq = add(add(mul(de, de), mul(ds, ds)), mul(dd, dd));
                        let r = T::vsqrt(s, add(sq, delta2));
                        let div = |a| T::vdiv(s, a, r);
                        (div(de), div(ds), div(dd), zr, T::vdiv(s, sq, add(r, delta)))
                    }
                };
                part_len = add(part_len, term);
                let (mut fho, mut fdo) = (zr, zr);
                if grad_on {
                    if check_doubt {
                        // A pair is doubtful where |d| is within tol·(y_a + y_b) of zero (d is 0 for a
                        // pair that is not there, whose validity is 0: `<` leaves it out).
                        let near = |d, yb, v| T::vlt(s, T::vabs(s, d), mul(mul(tol, add(y0, yb)), v));
                        let mut any = T::vor(s, near(de, ye, ve), near(ds, ys, vs));
                        if D {
                            any = T::vor(s, any, near(dd, yd, vd));
                        }
                        if T::vany(s, T::vor(s, any, near(dw, yw, vw))) {
                            let arr = |v: T::R<S>| to_array::<T, S>(&v);
                            let a = Around { y: [y0, ye, ys, yd, yw].map(arr), m: [m0, me, ms, md, mw].map(arr) };
                            let mut f = [e, sf, df, fw].map(arr);
                            doubt.fix(&a, n, (px, lanes), &mut f, D);
                            [e, sf, df, fw] = f.map(|v| load::<T, S>(s, &v));
                        }
                    }
                    if !west {
                        // Each lane takes the lane before: the first from the register before.
                        let (before, now) = (T::vshift(s, load::<T, S>(s, &self.carry[n])), T::vshift(s, e));
                        fw = T::vselect(s, first_lane, before, now);
                        store(s, &mut self.carry[n], e);
                    }
                    // The north and the back pairs' fluxes are the south and deep fluxes of the
                    // rows before, replaced here.
                    let fh = &mut line_mut(self.wk.fh, len, n)[OFF + px..];
                    fho = load::<T, S>(s, fh);
                    store(s, fh, sf);
                    if D {
                        fdo = load::<T, S>(s, &line(self.wk.fd, len, fd_old + n)[OFF + px..]);
                        store(s, &mut line_mut(self.wk.fd, len, fd_new + n)[OFF + px..], df);
                    }
                }
                if !full {
                    continue;
                }
                // The fidelity: `‖u − δ‖²` and the second term (see `class_consts`).
                let kn = &self.consts[c + n * tw..c + (n + 1) * tw];
                let (mut d2, mut t2) = (zr, zr);
                for kk in 0..c {
                    let u = load::<T, S>(s, &line(x, len, kk)[OFF + px..]);
                    let du = sub(u, k(kn[3 + kk]));
                    d2 = add(d2, mul(du, du));
                    t2 = add(t2, mul(k(kn[t2_at + kk]), u));
                }
                part_fid = add(part_fid, mul(mul(m0, y0), d2));
                if !grad_on {
                    continue;
                }
                // The gradient: the fidelity's, and the length's fluxes gathered.
                let (cd, kappa, ak) = (k(kn[0]), k(kn[1]), k(kn[2]));
                let mut gl = add(sub(fw, e), sub(fho, sf));
                if D {
                    gl = add(gl, sub(fdo, df));
                }
                let wm = mul(weight, m0);
                if p.logits {
                    let g = add(mul(wm, add(ak, t2)), mul(lambda, gl));
                    store(s, &mut self.gbuf[n], g);
                    gsum = add(gsum, mul(y0, g));
                } else if let Some(grad) = self.grad {
                    let g = mul(scale, add(mul(wm, sub(d2, mul(kappa, sub(t2, cd)))), mul(lambda, gl)));
                    store_grad(s, grad, (plan.row_start(b, n_cls, n, q), w), px, g);
                    nonfinite = add(nonfinite, mul(g, zr));
                }
            }
            if full {
                let lane = px % L;
                widen(&mut len_sum[lane..lane + lanes], values::<T, S>(&part_len));
                widen(&mut fid[lane..lane + lanes], values::<T, S>(&part_fid));
            }
            if let Some(grad) = self.grad.filter(|_| logits_out) {
                // ∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m).
                for n in 0..n_cls {
                    let (y0, g) = (at(class_line(Some(cur), n), px, 1), load::<T, S>(s, &self.gbuf[n]));
                    let o = mul(scale, mul(y0, sub(g, gsum)));
                    store_grad(s, grad, (plan.row_start(b, n_cls, n, q), w), px, o);
                    nonfinite = add(nonfinite, mul(o, zr));
                }
            }
        }
        values::<T, S>(&nonfinite).iter().all(|&v| v == T::zero())
    }
}
