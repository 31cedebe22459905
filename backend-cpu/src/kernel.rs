//! The per-block kernels of the two fused passes.
//!
//! Work is split into blocks of whole rows (a row is one line along `W`, indexed by `(d, h)`)
//! of one sample. Every quantity is computed in `f64` on rows converted from `T` — the data
//! stay in `T` in memory, so the traffic is that of `T`, while the softmax, the signs of the L1
//! differences and every sum are as accurate as the `f64` reference's. Inner loops run over
//! whole rows with no branches, so the compiler vectorises them; sums use [`LANES`] independent
//! accumulators (the compiler may not reorder a floating-point sum, but it vectorises one that
//! is already split into lanes).
//!
//! Pass 1 ([`pass1`]) computes the softmax of each row and the block's partial sums of
//! `A_n = Σ m·y_n` and `M_nk = Σ m·y_n·x_k`, and flags invalid values. Pass 2 ([`pass2`])
//! recomputes the softmax of the rows it needs (rather than caching `B·N·D·H·W` probabilities,
//! which would double the memory traffic), then computes the fidelity, the length, and the
//! gradient row by row: the length's contribution to a pixel comes from the "fluxes"
//! `φ_a = λ·∂ℓ/∂d_a` of its own forward differences and of its backward neighbours', so a row
//! needs the fluxes of the row above and (in 3D) of the row in the previous slice, which a
//! small keyed cache of rows keeps from being recomputed.

use msloss_core::{LengthKind, Real};

use crate::exp::exp_nonpos;

/// Independent accumulators per sum.
pub(crate) const LANES: usize = 8;
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
}

impl<T> Problem<'_, T> {
    /// Pixels of one sample.
    #[inline(always)]
    pub(crate) fn sp(&self) -> usize {
        self.d * self.h * self.w
    }
}

/// The constants of pass 2.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pass2<'a> {
    /// Centroids `[B, N, C]`.
    pub(crate) centroids: &'a [f64],
    /// `2·ε_c/(A_bn + ε_c)`, `[B, N]`.
    pub(crate) corr: &'a [f64],
    pub(crate) fidelity_weight: f64,
    pub(crate) lambda: f64,
    pub(crate) delta: f64,
    pub(crate) length: LengthKind,
    /// The reduction's factor applied to the gradient.
    pub(crate) scale: f64,
}

/// One block: rows `r0..r1` of sample `b`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    pub(crate) b: usize,
    pub(crate) r0: usize,
    pub(crate) r1: usize,
}

/// A gradient buffer that blocks write disjoint rows of, from several threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GradRows<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: `GradRows` is only a pointer to a `&mut [T]` that outlives the parallel section; the
// block partition guarantees that no two threads write the same element (see `row`).
unsafe impl<T: Send> Send for GradRows<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for GradRows<T> {}

impl<T> GradRows<T> {
    /// Wraps the caller's gradient buffer; it must stay mutably borrowed for as long as this is used.
    pub(crate) fn new(grad: &mut [T]) -> Self {
        Self { ptr: grad.as_mut_ptr(), len: grad.len() }
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
}

/// One thread's scratch: cached rows of probabilities and fluxes, and row temporaries.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    n: usize,
    c: usize,
    w: usize,
    /// `Y_SLOTS` rows of `[y_0, …, y_{N−1}, m]`, each `W` long.
    y: Vec<f64>,
    y_key: [usize; Y_SLOTS],
    y_stamp: [u64; Y_SLOTS],
    /// `F_SLOTS` rows of `[φ_W, φ_H, φ_D]` per class, each `W` long.
    flux: Vec<f64>,
    f_key: [usize; F_SLOTS],
    f_stamp: [u64; F_SLOTS],
    /// The length summed over a flux row's own forward differences.
    f_value: [f64; F_SLOTS],
    clock: u64,
    /// Image rows `[C, W]`.
    x: Vec<f64>,
    /// `∂E/∂y` of one row, `[N, W]`.
    g: Vec<f64>,
    t1: Vec<f64>,
    t2: Vec<f64>,
    t3: Vec<f64>,
    zero: Vec<f64>,
}

impl Scratch {
    /// Sizes the buffers for a shape (allocates only when they grow) and forgets cached rows.
    pub(crate) fn prepare(&mut self, n: usize, c: usize, w: usize) {
        self.n = n;
        self.c = c;
        self.w = w;
        self.y.resize(Y_SLOTS * (n + 1) * w, 0.0);
        self.flux.resize(F_SLOTS * 3 * n * w, 0.0);
        self.x.resize(c * w, 0.0);
        self.g.resize(n * w, 0.0);
        for t in [&mut self.t1, &mut self.t2, &mut self.t3] {
            t.resize(w, 0.0);
        }
        self.zero.clear();
        self.zero.resize(w, 0.0);
        self.forget();
    }

    /// Forgets every cached row and its age (a new block, or new inputs, begins).
    fn forget(&mut self) {
        self.y_key = [NO_ROW; Y_SLOTS];
        self.f_key = [NO_ROW; F_SLOTS];
        self.y_stamp = [0; Y_SLOTS];
        self.f_stamp = [0; F_SLOTS];
        self.clock = 0;
    }

    /// The slot of probability row `r` of sample `b`, computing it if absent. Slots used since
    /// the clock last ticked are never evicted.
    #[inline(always)]
    fn y_slot<T: Real>(&mut self, p: &Problem<'_, T>, b: usize, r: usize) -> usize {
        if let Some(i) = self.y_key.iter().position(|&k| k == r) {
            self.y_stamp[i] = self.clock;
            return i;
        }
        let i = lru(&self.y_stamp, self.clock);
        self.y_key[i] = r;
        self.y_stamp[i] = self.clock;
        let len = (self.n + 1) * self.w;
        let dst = &mut self.y[i * len..(i + 1) * len];
        load_probs(p, b, r, dst, &mut self.t1, &mut self.t2);
        i
    }

    /// The slot of flux row `r` of sample `b`, computing it if absent.
    #[inline(always)]
    fn flux_slot<T: Real>(&mut self, p: &Problem<'_, T>, k: &Pass2<'_>, b: usize, r: usize, fclock: u64) -> usize {
        if let Some(i) = self.f_key.iter().position(|&key| key == r) {
            self.f_stamp[i] = fclock;
            return i;
        }
        let fi = lru(&self.f_stamp, fclock);
        self.f_key[fi] = r;
        self.f_stamp[fi] = fclock;
        // The probability rows this flux row needs, pinned together.
        self.clock += 1;
        let (dd, hh) = (r / p.h, r % p.h);
        let y0 = self.y_slot(p, b, r);
        let yh = (hh + 1 < p.h).then(|| self.y_slot(p, b, r + 1));
        let yd = (dd + 1 < p.d).then(|| self.y_slot(p, b, r + p.h));
        let (n, w) = (self.n, self.w);
        let ylen = (n + 1) * w;
        let row = |s: usize, cls: usize| &self.y[s * ylen + cls * w..s * ylen + (cls + 1) * w];
        let flen = 3 * n * w;
        let mut value = 0.0;
        let out = &mut self.flux[fi * flen..(fi + 1) * flen];
        for cls in 0..n {
            let (fw, rest) = out[cls * 3 * w..(cls + 1) * 3 * w].split_at_mut(w);
            let (fh, fd) = rest.split_at_mut(w);
            value += flux_row(
                k,
                (row(y0, cls), row(y0, n)),
                yh.map(|s| (row(s, cls), row(s, n))),
                yd.map(|s| (row(s, cls), row(s, n))),
                [fw, fh, fd],
                &mut self.t3,
            );
        }
        self.f_value[fi] = value;
        fi
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

/// Loads row `r` of sample `b` as `[y_0, …, y_{N−1}, m]` in `f64`: the softmax of the logits
/// (stable: the maximum is subtracted first) or the probabilities as given, and the mask row
/// (ones without a mask).
#[inline(always)]
fn load_probs<T: Real>(p: &Problem<'_, T>, b: usize, r: usize, dst: &mut [f64], mx: &mut [f64], sum: &mut [f64]) {
    let (n, w, sp) = (p.n, p.w, p.sp());
    let (ys, m) = dst.split_at_mut(n * w);
    for (cls, y) in ys.chunks_exact_mut(w).enumerate() {
        let src = &p.scores[(b * n + cls) * sp + r * w..][..w];
        widen(y, src);
    }
    match p.mask {
        Some(mask) => widen(m, &mask[b * sp + r * w..][..w]),
        None => m.fill(1.0),
    }
    if !p.logits {
        return;
    }
    mx.copy_from_slice(&ys[..w]);
    for y in ys.chunks_exact(w).skip(1) {
        for (a, &v) in mx.iter_mut().zip(y) {
            *a = if v > *a { v } else { *a };
        }
    }
    sum.fill(0.0);
    for y in ys.chunks_exact_mut(w) {
        for ((v, &a), s) in y.iter_mut().zip(mx.iter()).zip(sum.iter_mut()) {
            let e = exp_nonpos(*v - a);
            *v = e;
            *s += e;
        }
    }
    for s in sum.iter_mut() {
        *s = 1.0 / *s;
    }
    for y in ys.chunks_exact_mut(w) {
        for (v, &inv) in y.iter_mut().zip(sum.iter()) {
            *v *= inv;
        }
    }
}

/// `dst = src` converted to `f64`.
#[inline(always)]
fn widen<T: Real>(dst: &mut [f64], src: &[T]) {
    for (o, v) in dst.iter_mut().zip(src) {
        *o = v.to_f64_lossless();
    }
}

/// `Σ a` in [`LANES`] lanes, lanes added in a fixed order.
#[inline(always)]
pub(crate) fn sum(a: &[f64]) -> f64 {
    let mut acc = [0.0; LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for l in 0..LANES {
            acc[l] += ch[l];
        }
    }
    for (l, v) in rest.iter().enumerate() {
        acc[l] += v;
    }
    fold(acc)
}

/// `Σ a·b` in [`LANES`] lanes.
#[inline(always)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    fold(acc)
}

/// Pairwise sum of the lanes.
#[inline(always)]
fn fold(acc: [f64; LANES]) -> f64 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Marks values that fail the input checks: returns a non-finite number if `src` holds a
/// non-finite value (`v·0` is NaN exactly then), and the smallest value seen in `min`.
#[inline(always)]
fn check_values<T: Real>(src: &[T], min: &mut f64) -> f64 {
    let mut acc = [0.0; LANES];
    let mut lo = [*min; LANES];
    let chunks = src.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for l in 0..LANES {
            let v = ch[l].to_f64_lossless();
            acc[l] += v * 0.0;
            lo[l] = if v < lo[l] { v } else { lo[l] };
        }
    }
    for (l, v) in rest.iter().enumerate() {
        let v = v.to_f64_lossless();
        acc[l] += v * 0.0;
        lo[l] = if v < lo[l] { v } else { lo[l] };
    }
    *min = lo.iter().fold(*min, |m, &v| if v < m { v } else { m });
    fold(acc)
}

/// Pass 1 over one block: fills `part` with `[P1_HEAD checks and count, A_0..A_{N−1},
/// M_00..M_{N−1,C−1}]` of the block.
#[inline(always)]
pub(crate) fn pass1<T: Real>(p: &Problem<'_, T>, blk: Block, s: &mut Scratch, part: &mut [f64]) {
    part.fill(0.0);
    let (n, c, w, sp) = (p.n, p.c, p.w, p.sp());
    let b = blk.b;
    let mut min_prob = 0.0;
    let mut ignored = 0.0;
    for r in blk.r0..blk.r1 {
        // Checks on the raw inputs (fused here instead of a separate validation pass).
        let scores = &p.scores[b * n * sp..(b + 1) * n * sp];
        for cls in 0..n {
            part[0] += check_values(&scores[cls * sp + r * w..][..w], &mut min_prob);
        }
        for k in 0..c {
            part[2] += check_values(&p.image[(b * c + k) * sp + r * w..][..w], &mut ignored);
        }
        let len = (n + 1) * w;
        load_probs(p, b, r, &mut s.y[..len], &mut s.t1, &mut s.t2);
        let (ys, m) = s.y[..len].split_at(n * w);
        if p.mask.is_some() {
            for (t, &v) in s.t3.iter_mut().zip(m) {
                *t = (v * (1.0 - v)).abs();
            }
            part[3] += sum(&s.t3);
            part[4] += sum(m);
        } else {
            part[4] += w as f64;
        }
        for k in 0..c {
            widen(&mut s.x[k * w..(k + 1) * w], &p.image[(b * c + k) * sp + r * w..][..w]);
        }
        for (cls, y) in ys.chunks_exact(w).enumerate() {
            for ((t, &v), &mv) in s.t1.iter_mut().zip(y).zip(m) {
                *t = mv * v;
            }
            part[P1_HEAD + cls] += sum(&s.t1);
            for k in 0..c {
                part[P1_HEAD + n + cls * c + k] += dot(&s.t1, &s.x[k * w..(k + 1) * w]);
            }
        }
    }
    part[1] = if p.logits { 0.0 } else { min_prob };
}

/// The fluxes `φ_a = λ·∂ℓ/∂d_a` of one class's row along W, H and D, given the row and its
/// mask, and the next rows along H and D (with their masks) where they exist; returns the
/// length `Σ ℓ` over the row's own forward differences (before `λ`).
#[inline(always)]
fn flux_row(
    k: &Pass2<'_>,
    (y0, m0): (&[f64], &[f64]),
    next_h: Option<(&[f64], &[f64])>,
    next_d: Option<(&[f64], &[f64])>,
    [fw, fh, fd]: [&mut [f64]; 3],
    t: &mut [f64],
) -> f64 {
    let w = y0.len();
    let lam = k.lambda;
    // Masked differences first: d = (y_t − y_s)·m_s·m_t, zero where the pair is missing.
    for i in 0..w - 1 {
        fw[i] = (y0[i + 1] - y0[i]) * (m0[i] * m0[i + 1]);
    }
    fw[w - 1] = 0.0;
    let diff = |out: &mut [f64], next: Option<(&[f64], &[f64])>| match next {
        Some((y1, m1)) => {
            for i in 0..w {
                out[i] = (y1[i] - y0[i]) * (m0[i] * m1[i]);
            }
        }
        None => out.fill(0.0),
    };
    diff(fh, next_h);
    diff(fd, next_d);
    match k.length {
        LengthKind::L1 => {
            let mut total = 0.0;
            for f in [fw, fh, fd] {
                for (v, o) in t.iter_mut().zip(f.iter_mut()) {
                    let d = *o;
                    *v = d.abs();
                    *o = if d > 0.0 {
                        lam
                    } else if d < 0.0 {
                        -lam
                    } else {
                        0.0
                    };
                }
                total += sum(t);
            }
            total
        }
        LengthKind::L2 => {
            let mut total = 0.0;
            for f in [fw, fh, fd] {
                for (v, o) in t.iter_mut().zip(f.iter_mut()) {
                    let d = *o;
                    *v = d * d;
                    *o = 2.0 * lam * d;
                }
                total += sum(t);
            }
            total
        }
        LengthKind::Charbonnier => {
            let d2 = k.delta * k.delta;
            for i in 0..w {
                let r = (fw[i] * fw[i] + fh[i] * fh[i] + fd[i] * fd[i] + d2).sqrt();
                t[i] = r - k.delta;
                let q = lam / r;
                fw[i] *= q;
                fh[i] *= q;
                fd[i] *= q;
            }
            sum(t)
        }
    }
}

/// Pass 2 over one block: fidelity, length and (where `grad` is given) the gradient of its
/// rows; fills `part` with `[fidelity, length, gradient check]` (before weights and reduction).
#[inline(always)]
pub(crate) fn pass2<T: Real>(
    p: &Problem<'_, T>,
    k: &Pass2<'_>,
    blk: Block,
    s: &mut Scratch,
    grad: Option<GradRows<T>>,
    part: &mut [f64],
) {
    part.fill(0.0);
    s.forget();
    let (n, c, w, sp) = (p.n, p.c, p.w, p.sp());
    let b = blk.b;
    let cent = &k.centroids[b * n * c..(b + 1) * n * c];
    let corr = &k.corr[b * n..(b + 1) * n];
    let mut fclock = 0;
    for r in blk.r0..blk.r1 {
        let (dd, hh) = (r / p.h, r % p.h);
        fclock += 1;
        let f_cur = s.flux_slot(p, k, b, r, fclock);
        part[1] += s.f_value[f_cur];
        let f_up = (grad.is_some() && hh > 0).then(|| s.flux_slot(p, k, b, r - 1, fclock));
        let f_back = (grad.is_some() && dd > 0).then(|| s.flux_slot(p, k, b, r - p.h, fclock));
        s.clock += 1;
        let yi = s.y_slot(p, b, r);
        for kk in 0..c {
            widen(&mut s.x[kk * w..(kk + 1) * w], &p.image[(b * c + kk) * sp + r * w..][..w]);
        }
        let ylen = (n + 1) * w;
        let flen = 3 * n * w;
        let yrow = &s.y[yi * ylen..(yi + 1) * ylen];
        let m = &yrow[n * w..];
        let (dist2, dot_c, tmp) = (&mut s.t1, &mut s.t2, &mut s.t3);
        for cls in 0..n {
            let y = &yrow[cls * w..(cls + 1) * w];
            dist2.fill(0.0);
            dot_c.fill(0.0);
            for kk in 0..c {
                let ck = cent[cls * c + kk];
                for ((d2, dc), &xv) in dist2.iter_mut().zip(dot_c.iter_mut()).zip(&s.x[kk * w..(kk + 1) * w]) {
                    let e = xv - ck;
                    *d2 += e * e;
                    *dc += ck * e;
                }
            }
            for (((t, &d2), &yv), &mv) in tmp.iter_mut().zip(dist2.iter()).zip(y).zip(m) {
                *t = mv * yv * d2;
            }
            part[0] += sum(tmp);
            if grad.is_none() {
                continue;
            }
            let g = &mut s.g[cls * w..(cls + 1) * w];
            let (wf, cr) = (k.fidelity_weight, corr[cls]);
            for i in 0..w {
                g[i] = wf * m[i] * (dist2[i] - cr * dot_c[i]);
            }
            // Length: Σ_a (φ_a(s − e_a) − φ_a(s)).
            let fl = |slot: usize, axis: usize| {
                let o = slot * flen + cls * 3 * w + axis * w;
                &s.flux[o..o + w]
            };
            let (fw, fh, fd) = (fl(f_cur, 0), fl(f_cur, 1), fl(f_cur, 2));
            g[0] -= fw[0];
            for i in 1..w {
                g[i] += fw[i - 1] - fw[i];
            }
            let up = f_up.map_or(&s.zero[..w], |f| fl(f, 1));
            for i in 0..w {
                g[i] += up[i] - fh[i];
            }
            if p.d > 1 {
                let back = f_back.map_or(&s.zero[..w], |f| fl(f, 2));
                for i in 0..w {
                    g[i] += back[i] - fd[i];
                }
            }
        }
        let Some(gr) = grad else { continue };
        let scale = k.scale;
        let ys = &yrow[..n * w];
        if p.logits {
            // ∂E/∂z_n = y_n·(g_n − Σ_m y_m·g_m).
            dist2.fill(0.0);
            for (y, g) in ys.chunks_exact(w).zip(s.g.chunks_exact(w)) {
                for ((t, &yv), &gv) in dist2.iter_mut().zip(y).zip(g) {
                    *t += yv * gv;
                }
            }
            for (cls, (y, g)) in ys.chunks_exact(w).zip(s.g.chunks_exact(w)).enumerate() {
                // SAFETY: row r of this block's sample belongs to this block only.
                let out = unsafe { gr.row(p, b, cls, r) };
                for (((o, &yv), &gv), (t, &mean)) in out.iter_mut().zip(y).zip(g).zip(tmp.iter_mut().zip(dist2.iter()))
                {
                    let v = T::from_f64_lossy(scale * yv * (gv - mean));
                    *t = v.to_f64_lossless() * 0.0;
                    *o = v;
                }
                part[2] += sum(tmp);
            }
        } else {
            for (cls, g) in s.g.chunks_exact(w).enumerate() {
                // SAFETY: as above.
                let out = unsafe { gr.row(p, b, cls, r) };
                for ((o, &gv), t) in out.iter_mut().zip(g).zip(tmp.iter_mut()) {
                    let v = T::from_f64_lossy(scale * gv);
                    *t = v.to_f64_lossless() * 0.0;
                    *o = v;
                }
                part[2] += sum(tmp);
            }
        }
    }
}
