//! The two passes over one block of rows, written once over chunks of [`L`] lanes.
//!
//! Every loop `for l in 0..L` is the scalar form of the maths, one pixel per lane; the ISA
//! copies (see `Isa`) compile it to vector instructions. Sums are kept per lane, in `T` for at
//! most [`GROUP`] chunks of a row and then in `f64`, and the lanes are added in lane order at the
//! end of a block, so the order of every sum is fixed by the shape alone.
//!
//! A row lives in padded lines (see [`Plan::line`]): a chunk of zeros on each side, so that the
//! neighbours of a row's first and last pixels read zeros, and so do their masks, which removes
//! those pairs. Each pass fills the lines of the rows it needs: pass 2 reads its own rows'
//! probabilities back from the gradient buffer, where pass 1 left them (logits with a gradient),
//! and computes any other row from the input (the softmax of the logits, or the probabilities
//! copied), so no block reads what another block writes.

#![allow(clippy::needless_range_loop, reason = "lane loops index several arrays by lane: the scalar form of the maths")]

use msloss_core::{LengthKind, probability};

use crate::float::CpuFloat;
use crate::plan::{L, Plan};

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
}

/// One thread's scratch: the ring of rows (read by the sweeps), the lines the sweeps write,
/// the rows the ring holds, and pass 1's `f64` lane sums.
#[derive(Debug)]
pub(crate) struct Scratch<T> {
    ring: Vec<T>,
    work: Vec<T>,
    keys: Vec<usize>,
    wide: Vec<[f64; L]>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self { ring: Vec::new(), work: Vec::new(), keys: Vec::new(), wide: Vec::new() }
    }
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
    }
}

/// The ring: `N` lines of probabilities and one of mask per row it holds, a line of zeros (the
/// row and mask of a neighbour that is not there) and a line of ones (the mask when none is given).
fn ring_lines(p: &Plan) -> usize {
    p.ring * (p.classes + 1) + 2
}

/// Lines of each part of [`Work`], in its order.
fn work_parts(p: &Plan) -> [usize; 8] {
    let d_ring = if p.depth > 1 { (p.height + 1) * p.classes } else { 0 };
    [p.channels, 2 * p.classes, d_ring, p.classes, 1, 1, 1, 3]
}

/// The work lines in all.
fn work_lines(p: &Plan) -> usize {
    work_parts(p).iter().sum()
}

/// The lines the sweeps write, carved from the work buffer.
struct Work<'a, T> {
    /// The image row, minus the sample's centre in pass 2 (`C` lines).
    x: &'a mut [T],
    /// The H fluxes of two rows (`2N` lines: the row before's and this row's, by parity).
    fh: &'a mut [T],
    /// The D fluxes of the last `H + 1` rows (`(H + 1)·N` lines, in 3D).
    fd: &'a mut [T],
    /// Each class's fidelity-and-length gradient (`N` lines) and `Σ_n y_n·g_n`.
    g: &'a mut [T],
    gsum: &'a mut [T],
    /// The row's east fluxes of one class (pass 2).
    fe: &'a mut [T],
    /// `m·y` of one class (pass 1).
    tmp: &'a mut [T],
    /// `‖u − δ‖²`, `⟨β, u⟩`, `⟨c, u⟩` of one class (3 lines).
    dist: &'a mut [T],
}

impl<'a, T> Work<'a, T> {
    fn carve(mut w: &'a mut [T], p: &Plan) -> Self {
        let mut part = work_parts(p).into_iter().map(|lines| {
            let (head, rest) = core::mem::take(&mut w).split_at_mut(lines * p.line);
            w = rest;
            head
        });
        let mut next = || part.next().unwrap_or_default();
        Self { x: next(), fh: next(), fd: next(), g: next(), gsum: next(), fe: next(), tmp: next(), dist: next() }
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

/// The `nc` chunks of a line's row, shifted by `shift` pixels (−1, 0 or 1).
#[inline(always)]
fn ch<T>(line: &[T], shift: isize, nc: usize) -> &[V<T>] {
    let start = OFF.wrapping_add_signed(shift);
    line[start..start + nc * L].as_chunks::<L>().0
}

#[inline(always)]
fn ch_mut<T>(line: &mut [T], nc: usize) -> &mut [V<T>] {
    line[OFF..OFF + nc * L].as_chunks_mut::<L>().0
}

/// Adds a group's lane sums to the `f64` lanes.
#[inline(always)]
fn widen<T: CpuFloat>(wide: &mut [f64; L], part: &V<T>) {
    for l in 0..L {
        wide[l] += part[l].to_f64_lossless();
    }
}

/// The lanes' total, in lane order.
fn lanes_total(wide: &[f64; L]) -> f64 {
    wide.iter().fold(0.0, |a, &b| a + b)
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
/// non-negative, and 0 or 1.
#[inline(always)]
fn finite<T: CpuFloat>(v: T) -> T {
    v * T::zero()
}
#[inline(always)]
fn probability_ok<T: CpuFloat>(v: T) -> T {
    v * T::zero() + (v.abs() - v)
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
    if let Some(cache) = cache.filter(|c| (c.rows.0..c.rows.1).contains(&q)) {
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
        bad |= check && !if p.logits { all_zero(src, finite) } else { all_zero(src, probability_ok) };
    }
    if p.logits {
        // The softmax, the maximum subtracted, chunk by chunk with the classes inside.
        let lines = &mut lines[..n_cls * len];
        for ci in 0..nc {
            let at = |n: usize| n * len + OFF + ci * L;
            let chunk =
                |lines: &[T], n: usize| -> V<T> { lines[at(n)..at(n) + L].try_into().unwrap_or([T::zero(); L]) };
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
            let mut inv = [T::zero(); L];
            for l in 0..L {
                inv[l] = T::one() / sum[l];
            }
            for n in 0..n_cls {
                let mut y = chunk(lines, n);
                for l in 0..L {
                    y[l] *= inv[l];
                }
                lines[at(n)..at(n) + L].copy_from_slice(&y);
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
            None => bad |= !all_zero(src, finite),
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
        bad |= fill_row(p, ring, 0, b, q, None, true);
        bad |= fill_image(p, wk.x, b, q, &[]);
        if let Some(grad) = cache {
            for n in 0..n_cls {
                // SAFETY: row q of class n of sample b belongs to this block alone.
                let out = unsafe { grad.row(plan.row_start(b, n_cls, n, q), plan.width) };
                out.copy_from_slice(&line(ring, len, n)[OFF..OFF + plan.width]);
            }
        }
        let m = ch(line(ring, len, mask_line(p, Some(0))), 0, nc);
        for n in 0..n_cls {
            let y = ch(line(ring, len, n), 0, nc);
            let wy = ch_mut(wk.tmp, nc);
            let sums = &mut wide[n * (1 + c)..(n + 1) * (1 + c)];
            for ((wg, yg), mg) in wy.chunks_mut(GROUP).zip(y.chunks(GROUP)).zip(m.chunks(GROUP)) {
                let mut part = [T::zero(); L];
                for ((w, y), m) in wg.iter_mut().zip(yg).zip(mg) {
                    for l in 0..L {
                        w[l] = m[l] * y[l];
                        part[l] += w[l];
                    }
                }
                widen(&mut sums[0], &part);
            }
            let wy = ch(wk.tmp, 0, nc);
            for (k, sum) in sums[1..].iter_mut().enumerate() {
                let x = ch(line(wk.x, len, k), 0, nc);
                for (wg, xg) in wy.chunks(GROUP).zip(x.chunks(GROUP)) {
                    let mut part = [T::zero(); L];
                    for (w, x) in wg.iter().zip(xg) {
                        for l in 0..L {
                            part[l] += w[l] * x[l];
                        }
                    }
                    widen(sum, &part);
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

/// Stores chunk `ci` of a row of `out.len()` pixels (the last chunk may be cut).
#[inline(always)]
fn st_row<T: Copy>(full: &mut [V<T>], rest: &mut [T], ci: usize, v: &V<T>) {
    match full.get_mut(ci) {
        Some(o) => *o = *v,
        None => rest.iter_mut().zip(v).for_each(|(o, &v)| *o = v),
    }
}

/// What pass 2 does with a row: everything, or (the rows before a block) only the fluxes the
/// block's first rows need.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Fluxes,
}

/// Pass 2 over `rows` of sample `b`: returns `(F, Len)` (the sums before weights and
/// reduction) and writes the gradient where `grad` is given. `consts` holds the sample's
/// centre `c̄` (`C` values), then its [`class_consts`] tables, one per class.
#[inline(always)]
pub(crate) fn pass2<T: CpuFloat>(
    p: &Problem<'_, T>,
    scratch: &mut Scratch<T>,
    consts: &[T],
    b: usize,
    rows: core::ops::Range<usize>,
    grad: Option<&GradOut<'_, T>>,
) -> (f64, f64) {
    let plan = &p.plan;
    let Scratch { ring, work, keys, .. } = scratch;
    reset(plan, ring, work);
    let mut wk = Work::carve(work, plan);
    keys.fill(usize::MAX);
    // With logits and a gradient, pass 1 left the block's probabilities in the gradient buffer.
    let cache = grad.filter(|_| plan.cache).map(|grad| Cache { grad, b, rows: (rows.start, rows.end) });
    let cache = cache.as_ref();
    let start = rows.start;
    let back = if plan.depth > 1 { plan.height } else { 1 };
    let mut sums = [[0.0; L]; 2];
    if grad.is_some() {
        for q in start.saturating_sub(back)..start {
            row2(p, ring, &mut wk, keys, cache, consts, b, q, None, Mode::Fluxes, &mut [[0.0; L]; 2]);
        }
    }
    for q in rows {
        row2(p, ring, &mut wk, keys, cache, consts, b, q, grad, Mode::Full, &mut sums);
    }
    (lanes_total(&sums[0]), lanes_total(&sums[1]))
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

/// `‖u − δ‖²`, `⟨β, u⟩` and `⟨c, u⟩` of a row (see [`class_consts`] for the class's table `k`),
/// into `dist`. The channel count is `C` where it is 1 to 4 (`C = 0`: any): a loop of constant
/// length unrolls, where a loop over a count known only at run time would be vectorised across
/// channels rather than across pixels.
#[inline(always)]
fn channel_terms<T: CpuFloat, const C: usize>(x: &[T], dist: &mut [T], len: usize, nc: usize, k: &[T], c: usize) {
    let c = if C == 0 { c } else { C };
    let (d2, rest) = dist.split_at_mut(len);
    let (lin, dot) = rest.split_at_mut(len);
    let (d2, lin, dot) = (ch_mut(d2, nc), ch_mut(lin, nc), ch_mut(&mut dot[..len], nc));
    for ci in 0..nc {
        let (mut a, mut bl, mut cl) = ([T::zero(); L], [T::zero(); L], [T::zero(); L]);
        for kk in 0..c {
            let u = &ch(line(x, len, kk), 0, nc)[ci];
            let (dk, bk, ck) = (k[3 + kk], k[3 + c + kk], k[3 + 2 * c + kk]);
            for l in 0..L {
                let du = u[l] - dk;
                a[l] += du * du;
                bl[l] += bk * u[l];
                cl[l] += ck * u[l];
            }
        }
        (d2[ci], lin[ci], dot[ci]) = (a, bl, cl);
    }
}

/// One class's row and its neighbours, as chunks: probabilities and masks of the row, of its
/// east neighbours (shifted by one pixel), and of the rows south (H) and deep (D).
struct Around<'a, T> {
    y0: &'a [V<T>],
    ye: &'a [V<T>],
    ys: &'a [V<T>],
    yd: &'a [V<T>],
    m0: &'a [V<T>],
    me: &'a [V<T>],
    ms: &'a [V<T>],
    md: &'a [V<T>],
}

/// Where L1 signs of logits' softmax are checked: row `q` of class `n` of sample `b`, and the
/// tolerance.
struct Doubt<'a, T> {
    p: &'a Problem<'a, T>,
    b: usize,
    n: usize,
    q: usize,
    tol: T,
}

impl<T: CpuFloat> Doubt<'_, T> {
    /// Chunk `ci`'s east, south and (in a volume) deep fluxes with exact signs where in doubt.
    #[inline(never)]
    #[cold]
    fn fix(&self, a: &Around<'_, T>, ci: usize, [fe, fs]: [&mut V<T>; 2], fd: Option<&mut V<T>>) {
        let (w, h) = (self.p.plan.width, self.p.plan.height);
        self.exact_signs(a, ci, fe, 1, (&a.me[ci], &a.ye[ci]));
        self.exact_signs(a, ci, fs, w, (&a.ms[ci], &a.ys[ci]));
        if let Some(fd) = fd {
            self.exact_signs(a, ci, fd, h * w, (&a.md[ci], &a.yd[ci]));
        }
    }

    /// Replaces in `flux` each L1 flux of chunk `ci` whose pair (pixel, pixel + `step`), with
    /// the other pixel's mask and probability `(mv, yv)`, is valid and whose difference is within
    /// `T`'s rounding of zero, by the sign of the reference's own difference in `f64`, computed
    /// from the logits as it does.
    fn exact_signs(&self, a: &Around<'_, T>, ci: usize, flux: &mut V<T>, step: usize, (mv, yv): (&V<T>, &V<T>)) {
        let (plan, (y0, m0)) = (&self.p.plan, (&a.y0[ci], &a.m0[ci]));
        let (base, sp) = (plan.row_start(self.b, plan.classes, 0, 0), plan.rows * plan.width);
        let z = |i: usize| self.p.scores.get(i).map_or(0.0, |v| v.to_f64_lossless());
        let prob = |s: usize| probability(|m| z(base + m * sp + s), plan.classes, self.n);
        for l in 0..L {
            let d = yv[l] - y0[l];
            if m0[l] * mv[l] == T::one() && d.abs() < self.tol * (y0[l] + yv[l]) {
                let s = self.q * plan.width + ci * L + l;
                flux[l] = sign0(T::from_f64_lossy(prob(s + step) - prob(s)));
            }
        }
    }
}

/// The length kinds as constants of [`sweep1`].
const L1: u8 = 0;
const L2: u8 = 1;
const CHARBONNIER: u8 = 2;

/// Sweep 1 of one class's row: the fluxes of the pairs (j, j + 1), (j, south) and (j, deep)
/// into `fe`, `fs` and `fd` (`D`: a volume), and the length's terms added to `len_sum`.
/// Every loop is straight-line code (the length kind `KIND` is a constant), so it vectorises.
#[inline(always)]
fn sweep1<T: CpuFloat, const KIND: u8, const D: bool>(
    a: &Around<'_, T>,
    [fe, fs, fd]: [&mut [V<T>]; 3],
    delta: T,
    len_sum: &mut [f64; L],
    doubt: Option<&Doubt<'_, T>>,
) {
    let nc = a.y0.len();
    let (two, delta2) = (T::one() + T::one(), delta * delta);
    for g0 in (0..nc).step_by(GROUP) {
        let mut part = [T::zero(); L];
        for ci in g0..(g0 + GROUP).min(nc) {
            let (y0, m0) = (&a.y0[ci], &a.m0[ci]);
            let (mut de, mut ds, mut dd) = ([T::zero(); L], [T::zero(); L], [T::zero(); L]);
            // Differences times validity: a missing or masked pair gives 0.
            for l in 0..L {
                de[l] = (a.ye[ci][l] - y0[l]) * (m0[l] * a.me[ci][l]);
                ds[l] = (a.ys[ci][l] - y0[l]) * (m0[l] * a.ms[ci][l]);
                if D {
                    dd[l] = (a.yd[ci][l] - y0[l]) * (m0[l] * a.md[ci][l]);
                }
            }
            let (mut e, mut s, mut d) = ([T::zero(); L], [T::zero(); L], [T::zero(); L]);
            for l in 0..L {
                let (flux, term) = match KIND {
                    L1 => ((sign0(de[l]), sign0(ds[l]), sign0(dd[l])), (de[l].abs() + ds[l].abs()) + dd[l].abs()),
                    L2 => ((two * de[l], two * ds[l], two * dd[l]), (de[l] * de[l] + ds[l] * ds[l]) + dd[l] * dd[l]),
                    _ => {
                        let sq = (de[l] * de[l] + ds[l] * ds[l]) + dd[l] * dd[l];
                        let r = (sq + delta2).sqrt();
                        ((de[l] / r, ds[l] / r, dd[l] / r), sq / (r + delta))
                    }
                };
                (e[l], s[l], d[l]) = flux;
                part[l] += term;
            }
            fe[ci] = e;
            fs[ci] = s;
            if D {
                fd[ci] = d;
            }
            if let Some(dz) = doubt {
                // A pair is doubtful where |d| is within tol·(y_a + y_b) of zero (d is 0 for a pair
                // that is not there, whose validity m_a·m_b is 0: `<` leaves it out).
                let mut any = false;
                for l in 0..L {
                    let near = |d: T, yb: T, mb: T| d.abs() < dz.tol * (y0[l] + yb) * (m0[l] * mb);
                    any |= near(de[l], a.ye[ci][l], a.me[ci][l]) | near(ds[l], a.ys[ci][l], a.ms[ci][l]);
                    if D {
                        any |= near(dd[l], a.yd[ci][l], a.md[ci][l]);
                    }
                }
                if any {
                    dz.fix(a, ci, [&mut fe[ci], &mut fs[ci]], if D { Some(&mut fd[ci]) } else { None });
                }
            }
        }
        widen(len_sum, &part);
    }
}

/// Sweep 2 of one class's row: `g = w·m·(fidelity term) + λ·(gathered fluxes)`, into `g`
/// (logits: the Jacobian comes once every class is done, and `Σ y·g` is added to `gsum`) or,
/// times the reduction's `scale`, into the gradient row `out` (probabilities).
#[expect(clippy::too_many_arguments, reason = "the sweep's lines, each a slice")]
#[inline(always)]
fn sweep2<T: CpuFloat, const LOGITS: bool, const D: bool>(
    p: &Problem<'_, T>,
    a: &Around<'_, T>,
    [fw, fe, fho, fhn, fdo, fdn]: [&[V<T>]; 6],
    [d2, lin, dot]: [&[V<T>]; 3],
    k: &[T],
    g: &mut [V<T>],
    gsum: &mut [V<T>],
    (out_full, out_rest): (&mut [V<T>], &mut [T]),
) {
    let (cd, kappa, ak) = (k[0], k[1], k[2]);
    let (weight, lambda, scale) = (p.weight, p.lambda, p.scale);
    for ci in 0..a.y0.len() {
        let (m0, y0) = (&a.m0[ci], &a.y0[ci]);
        let mut gv = [T::zero(); L];
        for l in 0..L {
            let mut gl = (fw[ci][l] - fe[ci][l]) + (fho[ci][l] - fhn[ci][l]);
            if D {
                gl += fdo[ci][l] - fdn[ci][l];
            }
            gv[l] = if LOGITS {
                weight * m0[l] * (ak + lin[ci][l]) + lambda * gl
            } else {
                scale * (weight * m0[l] * (d2[ci][l] - kappa * (dot[ci][l] - cd)) + lambda * gl)
            };
        }
        if LOGITS {
            g[ci] = gv;
            for l in 0..L {
                gsum[ci][l] += y0[l] * gv[l];
            }
        } else {
            st_row(out_full, out_rest, ci, &gv);
        }
    }
}

/// Pass 2 on row `q` of sample `b`, adding its `F` and `Len` lanes to `sums`.
#[expect(clippy::too_many_arguments, reason = "the row's whole context, passed down once")]
#[inline(always)]
fn row2<T: CpuFloat>(
    p: &Problem<'_, T>,
    ring: &mut [T],
    wk: &mut Work<'_, T>,
    keys: &mut [usize],
    cache: Option<&Cache<'_, T>>,
    consts: &[T],
    b: usize,
    q: usize,
    grad: Option<&GradOut<'_, T>>,
    mode: Mode,
    [fid, len_sum]: &mut [[f64; L]; 2],
) {
    let plan = &p.plan;
    let (n_cls, c, w, h, len, nc) = (plan.classes, plan.channels, plan.width, plan.height, plan.line, plan.chunks());
    let has_d = plan.depth > 1;
    let cur = slot(p, ring, keys, cache, b, q);
    // Neighbours along H (same slice) and D; absent ones read the line of zeros, mask included.
    let south = if q % h + 1 < h { Some(slot(p, ring, keys, cache, b, q + 1)) } else { None };
    let deep = if has_d && q + h < plan.rows { Some(slot(p, ring, keys, cache, b, q + h)) } else { None };
    let zero = plan.ring * (n_cls + 1);
    let class_line = |sl: Option<usize>, n: usize| sl.map_or(zero, |k| k * (n_cls + 1) + n);
    let full = mode == Mode::Full;
    if full {
        fill_image(p, wk.x, b, q, &consts[..c]);
    }
    let ring = &*ring;
    let want_grad = grad.is_some() || !full;
    let doubt_tol = T::EPS * T::from_f64_lossy((n_cls + 8) as f64);
    let check_doubt = p.logits && p.length == LengthKind::L1 && want_grad;
    let tw = consts_len(c);
    let m_line = |sl, shift| ch(line(ring, len, mask_line(p, sl)), shift, nc);
    // The H fluxes by row parity; the D fluxes in a ring of H + 1 rows.
    let (fh_old, fh_new) = wk.fh.split_at_mut(n_cls * len);
    let (fh_old, fh_new) = if q.is_multiple_of(2) { (fh_old, fh_new) } else { (fh_new, fh_old) };
    let d_slot = |r: usize| (r % (h + 1)) * n_cls;
    wk.gsum.fill(T::zero());
    let mut no_len = [0.0; L];
    for n in 0..n_cls {
        let y = line(ring, len, class_line(Some(cur), n));
        let a = Around {
            y0: ch(y, 0, nc),
            ye: ch(y, 1, nc),
            ys: ch(line(ring, len, class_line(south, n)), 0, nc),
            yd: ch(line(ring, len, class_line(deep, n)), 0, nc),
            m0: m_line(Some(cur), 0),
            me: m_line(Some(cur), 1),
            ms: m_line(south, 0),
            md: m_line(deep, 0),
        };
        // Sweep 1: the fluxes; an L1 sign within rounding of zero is taken from the reference.
        let dz = Doubt { p, b, n, q, tol: doubt_tol };
        let doubt = check_doubt.then_some(&dz);
        let fd_line = if has_d { d_slot(q) + n } else { 0 };
        let mut none: [V<T>; 0] = [];
        let fds = if has_d { ch_mut(line_mut(wk.fd, len, fd_line), nc) } else { &mut none[..] };
        let fluxes = [ch_mut(wk.fe, nc), ch_mut(line_mut(fh_new, len, n), nc), fds];
        let len_sum = if full { &mut *len_sum } else { &mut no_len };
        match (p.length, has_d) {
            (LengthKind::L1, false) => sweep1::<T, L1, false>(&a, fluxes, p.delta, len_sum, doubt),
            (LengthKind::L1, true) => sweep1::<T, L1, true>(&a, fluxes, p.delta, len_sum, doubt),
            (LengthKind::L2, false) => sweep1::<T, L2, false>(&a, fluxes, p.delta, len_sum, doubt),
            (LengthKind::L2, true) => sweep1::<T, L2, true>(&a, fluxes, p.delta, len_sum, doubt),
            (LengthKind::Charbonnier, false) => sweep1::<T, CHARBONNIER, false>(&a, fluxes, p.delta, len_sum, doubt),
            (LengthKind::Charbonnier, true) => sweep1::<T, CHARBONNIER, true>(&a, fluxes, p.delta, len_sum, doubt),
        }
        if !full {
            continue;
        }
        // Sweep 2: the fidelity and the gradient, the fluxes gathered (the west pair's is the
        // east flux of the pixel before).
        let k = &consts[c + n * tw..c + (n + 1) * tw];
        match c {
            1 => channel_terms::<T, 1>(wk.x, wk.dist, len, nc, k, c),
            2 => channel_terms::<T, 2>(wk.x, wk.dist, len, nc, k, c),
            3 => channel_terms::<T, 3>(wk.x, wk.dist, len, nc, k, c),
            4 => channel_terms::<T, 4>(wk.x, wk.dist, len, nc, k, c),
            _ => channel_terms::<T, 0>(wk.x, wk.dist, len, nc, k, c),
        }
        let terms = [0, 1, 2].map(|i| ch(line(wk.dist, len, i), 0, nc));
        for g0 in (0..nc).step_by(GROUP) {
            let mut part = [T::zero(); L];
            for ci in g0..(g0 + GROUP).min(nc) {
                for l in 0..L {
                    part[l] += a.m0[ci][l] * a.y0[ci][l] * terms[0][ci][l];
                }
            }
            widen(fid, &part);
        }
        let Some(grad) = grad else { continue };
        let fe = ch(wk.fe, 0, nc);
        let (fdo, fdn) = if has_d {
            let old = if q >= h { d_slot(q - h) + n } else { d_slot(q + 1) + n };
            (ch(line(wk.fd, len, old), 0, nc), ch(line(wk.fd, len, fd_line), 0, nc))
        } else {
            (fe, fe)
        };
        let fluxes =
            [ch(wk.fe, -1, nc), fe, ch(line(fh_old, len, n), 0, nc), ch(line(fh_new, len, n), 0, nc), fdo, fdn];
        let (g, gsum) = (ch_mut(line_mut(wk.g, len, n), nc), ch_mut(wk.gsum, nc));
        let out = if p.logits {
            (&mut [][..], &mut [][..]) // the Jacobian below writes the row, once every class is done
        } else {
            // SAFETY: row q of class n of sample b belongs to this block alone.
            unsafe { grad.row(plan.row_start(b, n_cls, n, q), w) }.as_chunks_mut::<L>()
        };
        match (p.logits, has_d) {
            (true, false) => sweep2::<T, true, false>(p, &a, fluxes, terms, k, g, gsum, out),
            (true, true) => sweep2::<T, true, true>(p, &a, fluxes, terms, k, g, gsum, out),
            (false, false) => sweep2::<T, false, false>(p, &a, fluxes, terms, k, g, gsum, out),
            (false, true) => sweep2::<T, false, true>(p, &a, fluxes, terms, k, g, gsum, out),
        }
    }
    let Some(grad) = grad.filter(|_| full && p.logits) else { return };
    // ∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m).
    let gsum = ch(wk.gsum, 0, nc);
    for n in 0..n_cls {
        // SAFETY: as above.
        let out = unsafe { grad.row(plan.row_start(b, n_cls, n, q), w) };
        let (out_full, out_rest) = out.as_chunks_mut::<L>();
        let y0s = ch(line(ring, len, class_line(Some(cur), n)), 0, nc);
        for (ci, (y, g)) in y0s.iter().zip(ch(line(wk.g, len, n), 0, nc)).enumerate() {
            let mut o = [T::zero(); L];
            for l in 0..L {
                o[l] = p.scale * (y[l] * (g[l] - gsum[ci][l]));
            }
            st_row(out_full, out_rest, ci, &o);
        }
    }
}
