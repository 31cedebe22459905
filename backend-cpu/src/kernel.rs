//! The two passes over one block of rows, written once over chunks of [`L`] lanes.
//!
//! Every loop `for l in 0..L` is the scalar form of the maths, one pixel per lane; the ISA
//! copies (see `Isa`) compile it to vector instructions. Sums are kept per lane, in `T` for at
//! most [`GROUP`] chunks and then in `f64`, and the lanes are added in lane order, so the order
//! of every sum is fixed by the shape alone.
//!
//! A row's probabilities live in padded lines (see [`Plan::line`]): a chunk of zeros on each
//! side, so that the neighbours of the first and last pixels read zeros, and their masks too,
//! which removes those pairs. Each pass fills the lines of the rows it needs from the input (the
//! softmax of the logits, or a copy of the probabilities), so nothing a block reads is ever
//! written by another block.

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

/// One thread's scratch lines (see [`Plan::scratch_lines`]) and the rows its ring holds.
#[derive(Debug)]
pub(crate) struct Scratch<T> {
    lines: Vec<T>,
    keys: Vec<usize>,
    /// Pass 1's sums, `N·(1 + C)`.
    sums: Vec<Acc<T>>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self { lines: Vec::new(), keys: Vec::new(), sums: Vec::new() }
    }
}

impl<T: CpuFloat> Scratch<T> {
    /// Grows to `plan`'s needs (allocates only when it must grow).
    pub(crate) fn fit(&mut self, plan: &Plan) {
        let len = plan.scratch_lines() * plan.line;
        if self.lines.len() < len {
            self.lines.resize(len, T::zero());
        }
        if self.keys.len() < plan.ring {
            self.keys.resize(plan.ring, usize::MAX);
        }
        let sums = plan.classes * (1 + plan.channels);
        if self.sums.len() < sums {
            self.sums.resize(sums, Acc::new());
        }
    }
}

/// Where each line starts in the scratch (element offsets).
#[derive(Clone, Copy)]
struct Lines {
    len: usize,
    n: usize,
    x: usize,
    fh: usize,
    fd: usize,
    g: usize,
    gsum: usize,
    /// Sweep 1's fluxes of the row: east, south (H), deep (D).
    fe: usize,
    fs: usize,
    fdn: usize,
    /// The fidelity's terms of a row for one class: `‖u − δ‖²`, `⟨β, u⟩`, `⟨c, u⟩`.
    dist: usize,
    zero: usize,
    ones: usize,
}

impl Lines {
    fn new(p: &Plan) -> Self {
        let len = p.line;
        let x = p.ring * (p.classes + 1) * len;
        let fh = x + p.channels * len;
        let fd = fh + p.classes * len;
        let g = fd + if p.depth > 1 { p.height * p.classes * len } else { 0 };
        let gsum = g + p.classes * len;
        let (fe, fs, fdn, dist) = (gsum + len, gsum + 2 * len, gsum + 3 * len, gsum + 4 * len);
        Self { len, n: p.classes, x, fh, fd, g, gsum, fe, fs, fdn, dist, zero: dist + 3 * len, ones: dist + 4 * len }
    }
    /// Class `n`'s probabilities in ring slot `slot`; `n = N` is the slot's mask.
    fn y(&self, slot: usize, n: usize) -> usize {
        (slot * (self.n + 1) + n) * self.len
    }
    /// Zeros every line (their pads stay zero: fills write rows only) and sets the line of ones.
    fn reset<T: CpuFloat>(&self, plan: &Plan, s: &mut [T]) {
        s[..plan.scratch_lines() * self.len].fill(T::zero());
        s[self.ones + OFF..self.ones + OFF + plan.width].fill(T::one());
    }
    /// The mask of the row in ring slot `slot`: its own, ones without a mask, zeros for a row
    /// that is not there.
    fn mask<T>(&self, p: &Problem<'_, T>, slot: Option<usize>) -> usize {
        match (slot, p.mask) {
            (None, _) => self.zero,
            (Some(_), None) => self.ones,
            (Some(k), Some(_)) => self.y(k, self.n),
        }
    }
}

#[inline(always)]
fn ld<T: Copy + Default>(s: &[T], i: usize) -> V<T> {
    let mut v = [T::default(); L];
    v.copy_from_slice(&s[i..i + L]);
    v
}

#[inline(always)]
fn st<T: Copy>(s: &mut [T], i: usize, v: &V<T>) {
    s[i..i + L].copy_from_slice(v);
}

/// Stores chunk `ci` of a row of `out.len()` pixels (the last chunk may be cut).
#[inline(always)]
fn st_row<T: Copy>(out: &mut [T], ci: usize, v: &V<T>) {
    let j = ci * L;
    if j + L <= out.len() {
        out[j..j + L].copy_from_slice(v);
    } else {
        out[j..].iter_mut().zip(v).for_each(|(o, &v)| *o = v);
    }
}

/// Whether `term(v) == 0` for every `v` of `src`, where `term` is `>= 0` or NaN: the terms are
/// summed in lanes (a sum of such terms is zero only if each is), so the test vectorises.
#[inline(always)]
fn all_zero<T: CpuFloat>(src: &[T], term: impl Fn(T) -> T) -> bool {
    let mut acc = [T::zero(); L];
    let mut chunks = src.chunks_exact(L);
    for chunk in &mut chunks {
        for l in 0..L {
            acc[l] += term(chunk[l]);
        }
    }
    let rest = chunks.remainder().iter().fold(T::zero(), |a, &v| a + term(v));
    acc.iter().fold(rest, |a, &v| a + v) == T::zero()
}

/// Input checks as `all_zero` terms: finite (`v − v` is NaN for ±∞ and NaN), finite and
/// non-negative, and 0 or 1.
#[inline(always)]
fn finite<T: CpuFloat>(v: T) -> T {
    v - v
}
#[inline(always)]
fn probability_ok<T: CpuFloat>(v: T) -> T {
    (v - v) + (v.abs() - v)
}
#[inline(always)]
fn mask_ok<T: CpuFloat>(v: T) -> T {
    (v * (v - T::one())).abs()
}

/// A sum per lane: `T` over groups of at most [`GROUP`] chunks of one row, then `f64`; the
/// lanes are added in lane order at the end of the block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acc<T> {
    part: V<T>,
    wide: [f64; L],
    count: usize,
}

impl<T: CpuFloat> Acc<T> {
    #[inline(always)]
    fn new() -> Self {
        Self { part: [T::zero(); L], wide: [0.0; L], count: 0 }
    }
    #[inline(always)]
    fn add(&mut self, v: &V<T>) {
        for l in 0..L {
            self.part[l] += v[l];
        }
        self.count += 1;
        if self.count == GROUP {
            self.end_row();
        }
    }
    /// Adds the group to the `f64` lanes (at the end of each row, and of each group).
    #[inline(always)]
    fn end_row(&mut self) {
        for l in 0..L {
            self.wide[l] += self.part[l].to_f64_lossless();
            self.part[l] = T::zero();
        }
        self.count = 0;
    }
    /// The lanes' total, in lane order; starts afresh.
    #[inline(always)]
    fn total(&mut self) -> f64 {
        self.end_row();
        let t = self.wide.iter().fold(0.0, |a, &b| a + b);
        *self = Self::new();
        t
    }
}

/// Each pixel's largest logit and reciprocal sum of exponentials, as pass 1 found them: pass 2
/// computes the softmax again from them in one sweep, to the same bits.
pub(crate) enum Stats<'a, T> {
    /// Probabilities input: no softmax.
    None,
    /// Pass 1: the block's rows, `2·chunks·L` values a row (per chunk, the maxima then the
    /// reciprocal sums), written.
    Write(&'a mut [T]),
    /// Pass 2: the sample's rows, read.
    Read(&'a [T]),
}

/// Fills ring slot `slot` with row `q` of sample `b`: each class's probabilities (the softmax of
/// the logits, or the probabilities copied) and the mask. `stats_row` is the row's place in
/// `stats`. With `check`, returns whether a value is invalid.
#[expect(clippy::too_many_arguments, reason = "the row's whole context, passed down once")]
#[inline(always)]
fn fill_row<T: CpuFloat>(
    p: &Problem<'_, T>,
    ln: &Lines,
    s: &mut [T],
    b: usize,
    q: usize,
    slot: usize,
    stats: &mut Stats<'_, T>,
    stats_row: usize,
    check: bool,
) -> bool {
    let (n_cls, w) = (p.plan.classes, p.plan.width);
    let sp = p.plan.rows * w;
    let mut bad = false;
    if let Some(mask) = p.mask {
        let src = &mask[b * sp + q * w..][..w];
        let at = ln.y(slot, n_cls) + OFF;
        s[at..at + w].copy_from_slice(src);
        bad |= check && !all_zero(src, mask_ok);
    }
    for n in 0..n_cls {
        let src = &p.scores[((b * n_cls + n) * p.plan.rows + q) * w..][..w];
        let at = ln.y(slot, n) + OFF;
        s[at..at + w].copy_from_slice(src);
        bad |= check && !if p.logits { all_zero(src, finite) } else { all_zero(src, probability_ok) };
    }
    let y0 = ln.y(slot, 0);
    let stats_at = stats_row * 2 * p.plan.chunks() * L;
    match stats {
        Stats::None => {}
        Stats::Write(out) => {
            for ci in 0..p.plan.chunks() {
                let i = y0 + OFF + ci * L;
                let mut mx = ld(s, i);
                for n in 1..n_cls {
                    let z = ld(s, i + n * ln.len);
                    for l in 0..L {
                        mx[l] = mx[l].max(z[l]);
                    }
                }
                let mut sum = [T::zero(); L];
                for n in 0..n_cls {
                    let mut e = ld(s, i + n * ln.len);
                    for l in 0..L {
                        e[l] = T::exp_nonpos(e[l] - mx[l]);
                        sum[l] += e[l];
                    }
                    st(s, i + n * ln.len, &e);
                }
                let mut inv = [T::zero(); L];
                for l in 0..L {
                    inv[l] = T::one() / sum[l];
                }
                for n in 0..n_cls {
                    let mut y = ld(s, i + n * ln.len);
                    for l in 0..L {
                        y[l] *= inv[l];
                    }
                    st(s, i + n * ln.len, &y);
                }
                st(out, stats_at + 2 * ci * L, &mx);
                st(out, stats_at + (2 * ci + 1) * L, &inv);
            }
        }
        Stats::Read(from) => {
            for n in 0..n_cls {
                for ci in 0..p.plan.chunks() {
                    let i = y0 + n * ln.len + OFF + ci * L;
                    let (mx, inv) = (ld(from, stats_at + 2 * ci * L), ld(from, stats_at + (2 * ci + 1) * L));
                    let mut y = ld(s, i);
                    for l in 0..L {
                        y[l] = T::exp_nonpos(y[l] - mx[l]) * inv[l];
                    }
                    st(s, i, &y);
                }
            }
        }
    }
    bad
}

/// Fills the image lines with row `q` of sample `b`, minus `centre` where given; returns whether
/// a value is not finite.
#[inline(always)]
fn fill_image<T: CpuFloat>(p: &Problem<'_, T>, ln: &Lines, s: &mut [T], b: usize, q: usize, centre: &[T]) -> bool {
    let (c, w) = (p.plan.channels, p.plan.width);
    let mut bad = false;
    for k in 0..c {
        let src = &p.image[((b * c + k) * p.plan.rows + q) * w..][..w];
        let l = &mut s[ln.x + k * ln.len + OFF..][..w];
        l.copy_from_slice(src);
        if let Some(&ck) = centre.get(k) {
            l.iter_mut().for_each(|v| *v -= ck);
        }
        bad |= !all_zero(src, finite);
    }
    bad
}

/// Pass 1 over `rows` of sample `b`: `sums[n·(1 + C)] = Σ m·y_n` and
/// `sums[n·(1 + C) + 1 + k] = Σ m·y_n·x_k`, and the block's softmax [`Stats`] with logits.
/// Returns whether an input value is invalid.
#[inline(always)]
pub(crate) fn pass1<T: CpuFloat>(
    p: &Problem<'_, T>,
    scratch: &mut Scratch<T>,
    b: usize,
    rows: core::ops::Range<usize>,
    sums: &mut [f64],
    stats: Option<&mut [T]>,
) -> bool {
    let ln = Lines::new(&p.plan);
    let Scratch { lines, sums: accs, .. } = scratch;
    let s = &mut lines[..];
    ln.reset(&p.plan, s);
    let (n_cls, c) = (p.plan.classes, p.plan.channels);
    let mut bad = false;
    let mut stats = stats.map_or(Stats::None, Stats::Write);
    let first = rows.start;
    for q in rows {
        bad |= fill_row(p, &ln, s, b, q, 0, &mut stats, q - first, true);
        bad |= fill_image(p, &ln, s, b, q, &[]);
        let mask = ln.mask(p, Some(0)) + OFF;
        for (n, acc) in accs.chunks_mut(1 + c).take(n_cls).enumerate() {
            let y = ln.y(0, n) + OFF;
            let (area, moments) = acc.split_at_mut(1);
            for ci in 0..p.plan.chunks() {
                let (m, yv) = (ld(s, mask + ci * L), ld(s, y + ci * L));
                let mut wy = [T::zero(); L];
                for l in 0..L {
                    wy[l] = m[l] * yv[l];
                }
                area[0].add(&wy);
                let x = ln.x + OFF + ci * L;
                match c {
                    1 => add_moments::<T, 1>(s, &ln, x, &wy, moments),
                    2 => add_moments::<T, 2>(s, &ln, x, &wy, moments),
                    3 => add_moments::<T, 3>(s, &ln, x, &wy, moments),
                    4 => add_moments::<T, 4>(s, &ln, x, &wy, moments),
                    _ => add_moments::<T, 0>(s, &ln, x, &wy, moments),
                }
            }
            acc.iter_mut().for_each(Acc::end_row);
        }
    }
    for (sum, acc) in sums.iter_mut().zip(accs.iter_mut()) {
        *sum = acc.total();
    }
    bad
}

/// `Σ m·y·x_k` of one chunk added to each channel's sum (`x` is channel 0's chunk). The
/// channel count is `C` where it is 1 to 4 (`C = 0`: any, from `moments`): a loop of constant
/// length unrolls, where a loop over a count known only at run time would be vectorised across
/// channels rather than across pixels.
#[inline(always)]
fn add_moments<T: CpuFloat, const C: usize>(s: &[T], ln: &Lines, x: usize, wy: &V<T>, moments: &mut [Acc<T>]) {
    let c = if C == 0 { moments.len() } else { C };
    for (k, moment) in moments.iter_mut().enumerate().take(c) {
        let xk = ld(s, x + k * ln.len);
        let mut t = [T::zero(); L];
        for l in 0..L {
            t[l] = wy[l] * xk[l];
        }
        moment.add(&t);
    }
}

/// `‖u − δ‖²`, `⟨β, u⟩` and `⟨c, u⟩` of one chunk of the image row at `i` (see
/// [`class_consts`] for the class's table `k`), into the lines at `ln.dist`; the channel count
/// as in [`add_moments`].
#[inline(always)]
fn channel_terms<T: CpuFloat, const C: usize>(s: &mut [T], ln: &Lines, i: usize, k: &[T], c: usize) {
    let c = if C == 0 { c } else { C };
    let (mut dist2, mut lin, mut dot) = ([T::zero(); L], [T::zero(); L], [T::zero(); L]);
    for kk in 0..c {
        let u = ld(s, ln.x + kk * ln.len + i);
        let (dk, bk, ck) = (k[3 + kk], k[3 + c + kk], k[3 + 2 * c + kk]);
        for l in 0..L {
            let du = u[l] - dk;
            dist2[l] += du * du;
            lin[l] += bk * u[l];
            dot[l] += ck * u[l];
        }
    }
    // Stored rather than returned: the compiler then keeps each in one vector.
    st(s, ln.dist + i, &dist2);
    st(s, ln.dist + ln.len + i, &lin);
    st(s, ln.dist + 2 * ln.len + i, &dot);
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
    /// of its own sample and block, once per class and row at a time.
    #[expect(clippy::mut_from_ref, reason = "disjoint rows of one buffer, handed to many threads")]
    unsafe fn row(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len), "row within the buffer");
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), len) }
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
    stats: Option<&[T]>,
    b: usize,
    rows: core::ops::Range<usize>,
    grad: Option<&GradOut<'_, T>>,
) -> (f64, f64) {
    let ln = Lines::new(&p.plan);
    let mut stats = stats.map_or(Stats::None, Stats::Read);
    let Scratch { lines, keys, .. } = scratch;
    let s = &mut lines[..];
    keys.fill(usize::MAX);
    ln.reset(&p.plan, s);
    let (n_cls, h) = (p.plan.classes, p.plan.height);
    let fd_lines = if p.plan.depth > 1 { h * n_cls } else { 0 };
    s[ln.fh..ln.fh + (n_cls + fd_lines) * ln.len].fill(T::zero());
    let start = rows.start;
    let back = if p.plan.depth > 1 { h } else { 1 };
    let grad_on = grad.is_some();
    for q in start.saturating_sub(back)..start {
        if grad_on {
            row2(p, &ln, s, keys, &mut stats, consts, b, q, None, Mode::Fluxes, &mut [Acc::new(), Acc::new()]);
        }
    }
    let mut sums = [Acc::new(), Acc::new()];
    for q in rows {
        row2(p, &ln, s, keys, &mut stats, consts, b, q, grad, Mode::Full, &mut sums);
    }
    (sums[0].total(), sums[1].total())
}

/// The ring slot of row `q`, filled if it holds another row.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the row's whole context, passed down once")]
fn slot<T: CpuFloat>(
    p: &Problem<'_, T>,
    ln: &Lines,
    s: &mut [T],
    keys: &mut [usize],
    stats: &mut Stats<'_, T>,
    b: usize,
    q: usize,
) -> usize {
    let k = q % p.plan.ring;
    if keys[k] != q {
        fill_row(p, ln, s, b, q, k, stats, q, false);
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

/// Pass 2 on row `q` of sample `b`, adding its `F` and `Len` to `fid` and `len`.
#[expect(clippy::too_many_arguments, reason = "the row's whole context, passed down once")]
#[inline(always)]
fn row2<T: CpuFloat>(
    p: &Problem<'_, T>,
    ln: &Lines,
    s: &mut [T],
    keys: &mut [usize],
    stats: &mut Stats<'_, T>,
    consts: &[T],
    b: usize,
    q: usize,
    grad: Option<&GradOut<'_, T>>,
    mode: Mode,
    [fid, len]: &mut [Acc<T>; 2],
) {
    let plan = &p.plan;
    let (n_cls, c, w, h) = (plan.classes, plan.channels, plan.width, plan.height);
    let has_d = plan.depth > 1;
    let cur = slot(p, ln, s, keys, stats, b, q);
    // Neighbours along H (same slice) and D; absent ones read the line of zeros, mask included.
    let south = if q % h + 1 < h { Some(slot(p, ln, s, keys, stats, b, q + 1)) } else { None };
    let deep = if has_d && q + h < plan.rows { Some(slot(p, ln, s, keys, stats, b, q + h)) } else { None };
    let line_of = |sl: Option<usize>, n: usize| sl.map_or(ln.zero, |k| ln.y(k, n));
    if mode == Mode::Full {
        fill_image(p, ln, s, b, q, &consts[..c]);
    }
    let full = mode == Mode::Full;
    let want_grad = grad.is_some() || !full;
    let doubt_tol = T::EPS * T::from_f64_lossy((n_cls + 8) as f64);
    let check_doubt = p.logits && p.length == LengthKind::L1 && want_grad;
    let sp = plan.rows * w;
    let tw = consts_len(c);
    let (lambda, weight, delta) = (p.lambda, p.weight, p.delta);
    let delta2 = delta * delta;
    let two = T::one() + T::one();
    for n in 0..n_cls {
        let (y, m) = (ln.y(cur, n), ln.mask(p, Some(cur)));
        let (ys, ms) = (line_of(south, n), ln.mask(p, south));
        let (yd, md) = (line_of(deep, n), ln.mask(p, deep));
        // Sweep 1: the fluxes of the pairs (j, j + 1), (j, south), (j, deep) into lines, and the
        // length's terms.
        for ci in 0..plan.chunks() {
            let i = OFF + ci * L;
            let (y0, m0) = (ld(s, y + i), ld(s, m + i));
            let (ye, me, ysv, msv) = (ld(s, y + i + 1), ld(s, m + i + 1), ld(s, ys + i), ld(s, ms + i));
            // Differences times validity: a missing or masked pair gives 0.
            let (mut de, mut dsv, mut dd) = ([T::zero(); L], [T::zero(); L], [T::zero(); L]);
            for l in 0..L {
                de[l] = (ye[l] - y0[l]) * (m0[l] * me[l]);
                dsv[l] = (ysv[l] - y0[l]) * (m0[l] * msv[l]);
            }
            if has_d {
                let (ydv, mdv) = (ld(s, yd + i), ld(s, md + i));
                for l in 0..L {
                    dd[l] = (ydv[l] - y0[l]) * (m0[l] * mdv[l]);
                }
            }
            let (mut fe, mut fs, mut fdp, mut term) = ([T::zero(); L], [T::zero(); L], [T::zero(); L], [T::zero(); L]);
            match p.length {
                LengthKind::L1 => {
                    for l in 0..L {
                        fe[l] = sign0(de[l]);
                        fs[l] = sign0(dsv[l]);
                        fdp[l] = sign0(dd[l]);
                        term[l] = (de[l].abs() + dsv[l].abs()) + dd[l].abs();
                    }
                }
                LengthKind::L2 => {
                    for l in 0..L {
                        fe[l] = two * de[l];
                        fs[l] = two * dsv[l];
                        fdp[l] = two * dd[l];
                        term[l] = (de[l] * de[l] + dsv[l] * dsv[l]) + dd[l] * dd[l];
                    }
                }
                LengthKind::Charbonnier => {
                    for l in 0..L {
                        let sq = (de[l] * de[l] + dsv[l] * dsv[l]) + dd[l] * dd[l];
                        let r = (sq + delta2).sqrt();
                        fe[l] = de[l] / r;
                        fs[l] = dsv[l] / r;
                        fdp[l] = dd[l] / r;
                        term[l] = sq / (r + delta);
                    }
                }
            }
            if full {
                len.add(&term);
            }
            if want_grad {
                st(s, ln.fe + i, &fe);
                st(s, ln.fs + i, &fs);
                st(s, ln.fdn + i, &fdp);
            }
            if check_doubt {
                // A superset of the doubtful pairs: |d| within tol·(y_a + y_b) of zero.
                let mut doubt = false;
                for l in 0..L {
                    let near = |d: T, b: T, v: T| v != T::zero() && d.abs() <= doubt_tol * (y0[l] + b);
                    doubt |= near(de[l], ye[l], m0[l] * me[l]) | near(dsv[l], ysv[l], m0[l] * msv[l]);
                }
                if has_d {
                    let (ydv, mdv) = (ld(s, yd + i), ld(s, md + i));
                    for l in 0..L {
                        doubt |= mdv[l] * m0[l] != T::zero() && dd[l].abs() <= doubt_tol * (y0[l] + ydv[l]);
                    }
                }
                if doubt {
                    let row = q * w;
                    for (line, step, yv, mv) in [(ln.fe, 1, y + 1, m + 1), (ln.fs, w, ys, ms), (ln.fdn, h * w, yd, md)] {
                        let (yv, mv) = (ld(s, yv + i), ld(s, mv + i));
                        let mut flux = ld(s, line + i);
                        exact_signs(p, b, n, sp, row, ci, &mut flux, step, &m0, &mv, &y0, &yv, doubt_tol);
                        st(s, line + i, &flux);
                    }
                }
            }
        }
        len.end_row();
        if !want_grad && !full {
            continue;
        }
        // Sweep 2: the fidelity, and the gradient: the fluxes gathered (the west pair's is the
        // east flux of the pixel before), the fluxes along H and D kept for the next rows.
        let k = &consts[c + n * tw..c + (n + 1) * tw];
        let fh = ln.fh + n * ln.len;
        let fd = ln.fd + ((q % h) * n_cls + n) * ln.len;
        for ci in 0..plan.chunks() {
            let i = OFF + ci * L;
            if full {
                let (y0, m0) = (ld(s, y + i), ld(s, m + i));
                match c {
                    1 => channel_terms::<T, 1>(s, ln, i, k, c),
                    2 => channel_terms::<T, 2>(s, ln, i, k, c),
                    3 => channel_terms::<T, 3>(s, ln, i, k, c),
                    4 => channel_terms::<T, 4>(s, ln, i, k, c),
                    _ => channel_terms::<T, 0>(s, ln, i, k, c),
                }
                let (dist2, lin, dot) = (ld(s, ln.dist + i), ld(s, ln.dist + ln.len + i), ld(s, ln.dist + 2 * ln.len + i));
                let mut f = [T::zero(); L];
                for l in 0..L {
                    f[l] = m0[l] * y0[l] * dist2[l];
                }
                fid.add(&f);
                if let Some(grad) = grad {
                    let (fw, fe, fho, fs) = (ld(s, ln.fe + i - 1), ld(s, ln.fe + i), ld(s, fh + i), ld(s, ln.fs + i));
                    let mut g = [T::zero(); L];
                    for l in 0..L {
                        g[l] = (fw[l] - fe[l]) + (fho[l] - fs[l]);
                    }
                    if has_d {
                        let (fdo, fdp) = (ld(s, fd + i), ld(s, ln.fdn + i));
                        for l in 0..L {
                            g[l] += fdo[l] - fdp[l];
                        }
                    }
                    let (cd, kappa, a) = (k[0], k[1], k[2]);
                    if p.logits {
                        for l in 0..L {
                            g[l] = weight * m0[l] * (a + lin[l]) + lambda * g[l];
                        }
                        st(s, ln.g + n * ln.len + i, &g);
                        let mut gs = if n == 0 { [T::zero(); L] } else { ld(s, ln.gsum + i) };
                        for l in 0..L {
                            gs[l] += y0[l] * g[l];
                        }
                        st(s, ln.gsum + i, &gs);
                    } else {
                        for l in 0..L {
                            g[l] = p.scale * (weight * m0[l] * (dist2[l] - kappa * (dot[l] - cd)) + lambda * g[l]);
                        }
                        // SAFETY: row q of class n of sample b belongs to this block alone.
                        let out = unsafe { grad.row(((b * n_cls + n) * plan.rows + q) * w, w) };
                        st_row(out, ci, &g);
                    }
                }
            }
            if want_grad {
                let fs = ld(s, ln.fs + i);
                st(s, fh + i, &fs);
                if has_d {
                    let fdp = ld(s, ln.fdn + i);
                    st(s, fd + i, &fdp);
                }
            }
        }
        fid.end_row();
    }
    if let (true, true, Some(grad)) = (full, p.logits, grad) {
        // ∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m).
        for n in 0..n_cls {
            // SAFETY: as above.
            let out = unsafe { grad.row(((b * n_cls + n) * plan.rows + q) * w, w) };
            for ci in 0..plan.chunks() {
                let i = OFF + ci * L;
                let (y0, g, gs) = (ld(s, ln.y(cur, n) + i), ld(s, ln.g + n * ln.len + i), ld(s, ln.gsum + i));
                let mut o = [T::zero(); L];
                for l in 0..L {
                    o[l] = p.scale * (y0[l] * (g[l] - gs[l]));
                }
                st_row(out, ci, &o);
            }
        }
    }
}

/// Replaces, in chunk `ci` of row `row` (a flat pixel offset), each L1 flux whose pair
/// (pixel, pixel + `step`) is valid and whose difference is within `T`'s rounding of zero by
/// the sign of the reference's own difference in `f64`, computed from the logits as it does.
#[expect(clippy::too_many_arguments, reason = "one chunk's pair along one axis")]
#[inline(never)]
#[cold]
fn exact_signs<T: CpuFloat>(
    p: &Problem<'_, T>,
    b: usize,
    n: usize,
    sp: usize,
    row: usize,
    ci: usize,
    flux: &mut V<T>,
    step: usize,
    m0: &V<T>,
    mv: &V<T>,
    y0: &V<T>,
    yv: &V<T>,
    tol: T,
) {
    let n_cls = p.plan.classes;
    let base = b * n_cls * sp;
    let prob = |s: usize| probability(|m| p.scores[base + m * sp + s].to_f64_lossless(), n_cls, n);
    for l in 0..L {
        let j = ci * L + l;
        let d = yv[l] - y0[l];
        if m0[l] * mv[l] != T::zero() && d.abs() <= tol * (y0[l] + yv[l]) {
            let s = row + j;
            flux[l] = sign0(T::from_f64_lossy(prob(s + step) - prob(s)));
        }
    }
}
