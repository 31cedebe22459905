//! # msloss-cpu
//!
//! The fused, multithreaded CPU backend of msloss: [`CpuBackend`] implements
//! [`msloss_core::Backend`] for `f32` and `f64` with exactly the core's definition — every
//! length kind, both reductions, masks, 3D volumes, logits or probabilities, the centroids and
//! the exact `ε_c` gradient correction.
//!
//! ## How
//! Two passes over each sample instead of the ten or so of an autograd implementation, both in
//! blocks of whole rows (see `plan.rs`), each sample's pass 2 right after its pass 1 while its
//! data are still in cache:
//! 1. the softmax of each row and the sums `A_n = Σ m·y_n` and `Σ m·y_n·x_k`, with the input
//!    checks fused in; with logits and a gradient, the probabilities are left in the gradient
//!    buffer; then each sample's centroids and the constants of its gradient;
//! 2. row by row, in a small ring of rows (a row and its neighbours along H, or along D in a
//!    volume), the probabilities read back from the gradient buffer (or computed: rows of other
//!    blocks, probabilities input, energy alone), then the fidelity, the length and the gradient
//!    of each row, every class of a register of pixels at a time, with the length's fluxes in
//!    gather form (below); each row's gradient overwrites its probabilities after they are read.
//!
//! No block reads what another block writes. The kernels (`kernel.rs`) are compiled for each
//! [`Isa`] through [pulp](https://docs.rs/pulp)'s safe dispatch. Every operation rounds the same
//! way in each (no multiply-add is fused) and every sum runs in the same lanes and order, fixed
//! by the shape, so results are bitwise identical whatever the ISA, the thread count or the run.
//!
//! ## The length term in gather form
//! The reference scatters each pair's derivative to both of its pixels. Here each pixel `s`
//! gathers it: with `φ_a(s)` the derivative of the length with respect to the forward
//! difference `d_a(s) = y(s + e_a) − y(s)` (0 for a missing or masked pair; `sign d` for L1,
//! `2d` for L2, `d/√(Σ_a d_a² + δ²)` for Charbonnier), `∂Len/∂y(s) = Σ_a φ_a(s − e_a) − φ_a(s)`.
//! A row keeps `φ_H` of the row before and, in a volume, `φ_D` of the slice before.
//!
//! ## Accuracy
//! `f32` results stay within about `1e-6` of the `f64` reference: sums run in lanes of `T` over
//! at most 16 chunks and then in `f64`; the logit gradient leaves out the fidelity gradient's
//! part common to all classes, which the softmax Jacobian would cancel; and where the L1
//! subgradient jumps, at a difference of softmax outputs within `T`'s rounding of zero, its sign
//! is the reference's ([`msloss_core::Softmax`], kept per pixel across classes and pairs).
//!
//! ## Errors
//! The reference's typed errors: parameters and output lengths first, then the input values
//! (checked inside pass 1; on a bad value the core's own check names the first offending
//! element), an empty mask under the mean reduction, and [`Error::NonFiniteResult`] when the
//! energy or a gradient value overflows `T` (pass 2 checks each gradient value as it writes it).
//! On an error the gradient buffer holds no meaningful values.
//!
//! ## Memory
//! A [`CpuWorkspace`] holds per-thread scratch (the ring of rows: two rows of every class in
//! 2D, a slice and a row in 3D, and as many lines of fluxes) and the per-block sums; after the
//! first call with a given shape, calls allocate nothing.
//!
//! ## Example
//! ```
//! use msloss_core::{Backend, Input, Params, Scores, Shape};
//! use msloss_cpu::CpuBackend;
//!
//! let shape = Shape::new_2d(1, 2, 1, 2, 2)?;
//! let logits = [2.0f32, 2.0, -2.0, -2.0, /* class 1 */ -2.0, -2.0, 2.0, 2.0];
//! let image = [0.1f32, 0.1, 0.9, 0.9];
//! let input = Input::new(shape, Scores::Logits(&logits), &image, None)?;
//! let backend = CpuBackend::with_threads(2);
//! let mut ws = backend.workspace();
//! let mut grad = [0.0f32; 8];
//! let e = backend.energy_and_grad(&input, &Params::default(), &mut grad, &mut ws)?;
//! assert!(e.total > 0.0);
//! # Ok::<(), msloss_core::Error>(())
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use msloss_core::{Backend, Energy, Error, Fidelity, Gaussian, Input, Outputs, Params, Reduction};
use rayon::prelude::*;

mod float;
mod kernel;
mod local;
mod plan;
mod simd;

pub use float::CpuFloat;
use kernel::{GradOut, Problem, Scratch};
use plan::Plan;

/// The instruction set the kernels run with. All give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// The target's baseline (SSE2 on x86-64).
    Scalar,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F, VL, DQ, BW, CD (x86-64-v4).
    Avx512,
    /// NEON (AArch64).
    Neon,
}

impl Isa {
    /// Every instruction set, best last.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// The best instruction set this CPU has.
    pub fn detect() -> Isa {
        Isa::ALL.into_iter().rev().find(|isa| isa.arch().is_some()).unwrap_or(Isa::Scalar)
    }

    /// Whether this CPU has it.
    pub fn is_available(self) -> bool {
        self.arch().is_some()
    }

    /// `"scalar"`, `"avx2"`, `"avx512"` or `"neon"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// pulp's token for it, where this CPU has it.
    fn arch(self) -> Option<pulp::Arch> {
        match self {
            Isa::Scalar => Some(pulp::Arch::Scalar),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2 => pulp::x86::V3::try_new().map(pulp::Arch::V3),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx512 => pulp::x86::V4::try_new().map(pulp::Arch::V4),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => pulp::aarch64::Neon::try_new().map(pulp::Arch::Neon),
            #[allow(unreachable_patterns, reason = "the ISAs of other targets")]
            _ => None,
        }
    }
}

/// The most threads [`CpuBackend::with_threads`] starts (more are refused, not started: a count
/// from user input must not spawn threads without bound).
pub const MAX_THREADS: usize = 1024;

/// The backend's settings: all a user may choose. Results never depend on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CpuOptions {
    /// Threads of a pool of the backend's own; `None` runs in rayon's current (by default
    /// global) pool.
    pub threads: Option<usize>,
    /// The instruction set; `None` takes the best this CPU has ([`Isa::detect`]).
    pub isa: Option<Isa>,
}

/// The fused multithreaded CPU backend (see the crate docs).
#[derive(Debug, Clone)]
pub struct CpuBackend {
    threads: Option<usize>,
    /// Our own pool; `None` runs in rayon's current pool.
    pool: Option<Arc<rayon::ThreadPool>>,
    /// Why building the requested pool failed, reported by every evaluation.
    pool_error: Option<&'static str>,
    isa: Isa,
    arch: pulp::Arch,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend on rayon's current pool with the best instruction set of this CPU.
    pub fn new() -> Self {
        let isa = Isa::detect();
        Self { threads: None, pool: None, pool_error: None, isa, arch: isa.arch().unwrap_or(pulp::Arch::Scalar) }
    }

    /// A backend with a pool of `threads` threads of its own (`0` is taken as `1`).
    ///
    /// If `threads` is over [`MAX_THREADS`], or the operating system refuses the threads, every
    /// evaluation returns [`Error::Unsupported`] saying so.
    pub fn with_threads(threads: usize) -> Self {
        let threads = threads.max(1);
        if threads > MAX_THREADS {
            let pool_error = Some("more than MAX_THREADS (1024) threads");
            return Self { threads: Some(threads), pool: None, pool_error, ..Self::new() };
        }
        let built =
            rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("msloss-cpu-{i}")).build();
        let (pool, pool_error) = match built {
            Ok(p) => {
                // Start every worker now, so that thread start-up (and its allocations) is not
                // part of the first evaluations.
                p.broadcast(|_| ());
                (Some(Arc::new(p)), None)
            }
            Err(_) => (None, Some("a thread pool of the requested size (the system refused the threads)")),
        };
        Self { threads: Some(threads), pool, pool_error, ..Self::new() }
    }

    /// A backend with `options`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when this CPU lacks the instruction set asked for.
    pub fn with_options(options: CpuOptions) -> Result<Self, Error> {
        let cpu = options.threads.map_or_else(Self::new, Self::with_threads);
        match options.isa {
            Some(isa) => cpu.with_isa(isa),
            None => Ok(cpu),
        }
    }

    /// The same backend on instruction set `isa`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when this CPU lacks it.
    pub fn with_isa(self, isa: Isa) -> Result<Self, Error> {
        match isa.arch() {
            Some(arch) => Ok(Self { isa, arch, ..self }),
            None => Err(Error::Unsupported { backend: "cpu", what: "an instruction set this CPU lacks" }),
        }
    }

    /// The thread count asked for, if any (`None`: rayon's pool).
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }

    /// The instruction set the kernels run with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// A fresh workspace (the same as [`Backend::workspace`], the type inferred).
    pub fn workspace<T: CpuFloat>(&self) -> CpuWorkspace<T> {
        CpuWorkspace::default()
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

/// Reusable scratch of [`CpuBackend`]: per-thread rows and per-block sums, in `T`.
///
/// Grows to the largest shape seen; calls with a shape it already fits allocate nothing.
#[derive(Debug)]
pub struct CpuWorkspace<T> {
    scratch: Vec<Mutex<Scratch<T>>>,
    /// Pass 1's sums per sample and block, `[B, blocks, N·(1 + C) + 1]` (the last: a bad value).
    part1: Vec<f64>,
    /// Pass 2's `(F, Len)` per sample and block.
    part2: Vec<f64>,
    /// Each sample's pass-2 constants: its centre and its classes' tables (see `kernel`).
    consts: Vec<T>,
    /// The local fidelity's scratch and its Gaussian (with its σ).
    local: local::LocalScratch,
    gaussian: Option<(f64, Gaussian)>,
}

impl<T> Default for CpuWorkspace<T> {
    fn default() -> Self {
        Self {
            scratch: Vec::new(),
            part1: Vec::new(),
            part2: Vec::new(),
            consts: Vec::new(),
            local: local::LocalScratch::default(),
            gaussian: None,
        }
    }
}

impl<T: CpuFloat> Backend<T> for CpuBackend {
    type Workspace = CpuWorkspace<T>;
    type Error = Error;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn workspace(&self) -> CpuWorkspace<T> {
        CpuWorkspace::default()
    }

    fn evaluate(
        &self,
        input: &Input<'_, T>,
        params: &Params,
        out: Outputs<'_, T>,
        ws: &mut CpuWorkspace<T>,
    ) -> Result<Energy<T>, Error> {
        T::evaluate(self, input, params, out, ws)
    }
}

/// Makes one scratch slot per thread of the current pool and readies each with `fit`, before a
/// parallel region: which slot a job takes there depends on timing, so a slot grown inside could
/// allocate in any later call.
pub(crate) fn fit_slots<S: Default>(slots: &mut Vec<Mutex<S>>, fit: impl Fn(&mut S)) {
    let threads = rayon::current_num_threads();
    if slots.len() < threads {
        slots.resize_with(threads, Mutex::default);
    }
    for s in slots.iter_mut() {
        fit(s.get_mut().unwrap_or_else(PoisonError::into_inner));
    }
}

/// A free scratch slot: the calling thread's own, else any free one.
pub(crate) fn take<S>(slots: &[Mutex<S>]) -> MutexGuard<'_, S> {
    let first = rayon::current_thread_index().unwrap_or(0);
    for i in 0..slots.len() {
        match slots[(first + i) % slots.len()].try_lock() {
            Ok(g) => return g,
            Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
    }
    slots[first % slots.len()].lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`Backend::evaluate`] in `T`; instantiated by [`CpuFloat::evaluate`] for `f32` and `f64`, so
/// the kernels are compiled once, in this crate.
pub(crate) fn evaluate<T: CpuFloat>(
    cpu: &CpuBackend,
    input: &Input<'_, T>,
    params: &Params,
    mut out: Outputs<'_, T>,
    ws: &mut CpuWorkspace<T>,
) -> Result<Energy<T>, Error> {
    if let Some(what) = cpu.pool_error {
        return Err(Error::Unsupported { backend: "cpu", what });
    }
    let shape = input.shape();
    params.validate_for(shape)?;
    out.check(shape)?;
    if let Fidelity::Local { sigma } = params.fidelity {
        return evaluate_local(cpu, input, params, sigma, out, ws);
    }
    let plan = Plan::new(shape, input.scores().is_logits(), out.grad.is_some());
    let (bsz, n_cls, c) = (shape.batch(), plan.classes, plan.channels);
    let mean = params.reduction == Reduction::Mean;
    let valid = match (mean, input.mask()) {
        (false, _) => 1,
        (true, None) => bsz * plan.rows * plan.width,
        (true, Some(m)) => m.iter().filter(|&&v| v == T::one()).count(),
    };
    if valid == 0 {
        input.validate_values()?;
        return Err(Error::EmptyMask);
    }
    let scale = 1.0 / valid as f64;
    let p = Problem {
        plan,
        scores: input.scores().data(),
        logits: input.scores().is_logits(),
        image: input.image(),
        mask: input.mask(),
        length: params.length,
        lambda: T::from_f64_lossy(params.lambda),
        weight: T::from_f64_lossy(params.fidelity_weight),
        delta: T::from_f64_lossy(params.delta),
        scale: T::from_f64_lossy(scale),
        image_limit: T::from_f64_lossy(msloss_core::image_limit::<T>(c)),
        probability_limit: T::from_f64_lossy(msloss_core::probability_limit::<T>()),
    };
    let (p1, tw) = (n_cls * (1 + c) + 1, kernel::consts_len(c));
    let blocks = plan.blocks;
    let CpuWorkspace { scratch, part1, part2, consts, .. } = ws;
    part1.resize(bsz * blocks * p1, 0.0);
    part2.resize(bsz * blocks * 3, 0.0);
    let per_sample = c + n_cls * tw;
    consts.resize(bsz * per_sample, T::zero());
    let grad = out.grad.as_deref_mut().map(GradOut::new);
    let (arch, eps) = (cpu.arch, params.centroid_eps);
    cpu.run(|| {
        fit_slots(scratch, |s| s.fit(&plan));
        let (scratch, p, grad) = (&scratch[..], &p, grad.as_ref());
        let samples = part1.par_chunks_mut(blocks * p1).zip(part2.par_chunks_mut(blocks * 3));
        samples.zip(consts.par_chunks_mut(per_sample)).enumerate().for_each(|(b, ((sums1, sums2), consts))| {
            sums1.par_chunks_mut(p1).enumerate().for_each(|(k, part)| {
                let mut s = take(scratch);
                let rows = plan.block_rows(k);
                let (sums, flag) = part.split_at_mut(p1 - 1);
                let bad = arch.dispatch(
                    #[inline(always)]
                    || kernel::pass1(p, &mut s, b, rows, sums, grad.filter(|_| plan.cache)),
                );
                flag[0] = if bad { 1.0 } else { 0.0 };
            });
            // The centre c̄ = Σ_n Σ m·y_n·x / (Σ_n Σ m·y_n + ε_c), the image's mean over valid pixels.
            let total = |n: usize, i: usize| sums1.chunks(p1).fold(0.0, |a, part| a + part[n * (1 + c) + i]);
            let all = |i: usize| (0..n_cls).fold(0.0, |a, n| a + total(n, i));
            let all_area = all(0);
            let centre = |k: usize| all(1 + k) / (all_area + eps);
            let (head, tables) = consts.split_at_mut(c);
            for (k, v) in head.iter_mut().enumerate() {
                *v = T::from_f64_lossy(centre(k));
            }
            for (n, table) in tables.chunks_mut(tw).enumerate() {
                let area = total(n, 0);
                let centroid = |k: usize| total(n, 1 + k) / (area + eps);
                kernel::class_consts(centroid, |k| head[k].to_f64_lossless(), area, eps, table);
            }
            let consts = &*consts;
            sums2.par_chunks_mut(3).enumerate().for_each(|(k, part)| {
                let mut s = take(scratch);
                let rows = plan.block_rows(k);
                let (f, l, finite) = arch.dispatch(kernel::Pass2 { p, scratch: &mut s, consts, b, rows, grad });
                part.copy_from_slice(&[f, l, if finite { 0.0 } else { 1.0 }]);
            });
        });
    });
    if part1.chunks(p1).any(|part| part[p1 - 1] != 0.0) {
        input.validate_values()?;
    }
    if let Some(cs) = out.centroids.as_deref_mut() {
        // Each class's table holds its centroid, in `T` (see `kernel::class_consts`).
        for (cs, consts) in cs.chunks_mut(n_cls * c).zip(consts.chunks(per_sample)) {
            for (cn, table) in cs.chunks_mut(c).zip(consts[c..].chunks(tw)) {
                cn.copy_from_slice(kernel::centroid(table));
            }
        }
    }
    let (fid, len) = part2.chunks(3).fold((0.0, 0.0), |(f, l), part| (f + part[0], l + part[1]));
    let (fidelity, length) = params.weigh(fid, len, scale);
    let grad_finite = part2.chunks(3).all(|part| part[2] == 0.0);
    finish(fidelity, length, grad_finite, out.grad.as_deref())
}

/// The energy in `T` from its weighed parts, or [`Error::NonFiniteResult`] for a non-finite
/// energy, else for a gradient that was not all finite (naming its first such value).
fn finish<T: CpuFloat>(fidelity: f64, length: f64, grad_finite: bool, grad: Option<&[T]>) -> Result<Energy<T>, Error> {
    let e = Energy {
        fidelity: T::from_f64_lossy(fidelity),
        length: T::from_f64_lossy(length),
        total: T::from_f64_lossy(fidelity + length),
    };
    if !e.total.is_finite() {
        return Err(Error::NonFiniteResult { what: "energy", value: e.total.to_f64_lossless() });
    }
    if !grad_finite {
        let value = grad.and_then(|g| g.iter().find(|v| !v.is_finite()));
        return Err(Error::NonFiniteResult {
            what: "gradient",
            value: value.map_or(f64::NAN, |v| v.to_f64_lossless()),
        });
    }
    Ok(e)
}

/// The local fidelity: the fused kernels give the length term (and the centroids, checks and
/// errors) with the fidelity switched off; [`local::add`] then adds the fidelity and its gradient.
fn evaluate_local<T: CpuFloat>(
    cpu: &CpuBackend,
    input: &Input<'_, T>,
    params: &Params,
    sigma: f64,
    mut out: Outputs<'_, T>,
    ws: &mut CpuWorkspace<T>,
) -> Result<Energy<T>, Error> {
    let global = Params { fidelity: Fidelity::Global, fidelity_weight: 0.0, ..*params };
    let reborrow = Outputs { grad: out.grad.as_deref_mut(), centroids: out.centroids.as_deref_mut() };
    let e = evaluate(cpu, input, &global, reborrow, ws)?;
    let scale = match params.reduction {
        Reduction::Sum => 1.0,
        Reduction::Mean => 1.0 / input.valid_count() as f64,
    };
    let CpuWorkspace { local: scratch, gaussian, .. } = ws;
    if gaussian.as_ref().is_none_or(|(s, _)| *s != sigma) {
        *gaussian = None;
    }
    let (_, gaussian) = gaussian.get_or_insert_with(|| (sigma, Gaussian::new(sigma)));
    let local =
        local::Local { gaussian, eps: params.centroid_eps, factor: params.fidelity_weight * scale, arch: cpu.arch };
    let (f, finite) = cpu.run(|| local::add(input, &local, out.grad.as_deref_mut(), scratch));
    let (fidelity, _) = params.weigh(f, 0.0, scale);
    finish(fidelity, e.length.to_f64_lossless(), finite, out.grad.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_isa_is_a_value_of_the_backend() {
        let best = Isa::detect();
        assert!(best.is_available() && Isa::Scalar.is_available());
        assert_eq!(CpuBackend::new().isa(), best);
        let cpu = CpuBackend::with_options(CpuOptions { threads: Some(2), isa: Some(Isa::Scalar) });
        let cpu = cpu.expect("scalar runs everywhere");
        assert_eq!((cpu.isa(), cpu.threads()), (Isa::Scalar, Some(2)));
        // Too many threads are refused at evaluation, and none is started.
        let huge = CpuBackend::with_threads(1 << 40);
        let (shape, z, x) = (msloss_core::Shape::new_2d(1, 2, 1, 1, 2).expect("valid"), [0.0f32; 4], [0.5f32; 2]);
        let input = Input::new(shape, msloss_core::Scores::Logits(&z), &x, None).expect("fits");
        let got = huge.energy(&input, &Params::default(), &mut huge.workspace());
        assert!(matches!(got, Err(Error::Unsupported { backend: "cpu", .. })), "{got:?}");
        // An instruction set this CPU lacks is refused, not emulated.
        for isa in Isa::ALL.into_iter().filter(|isa| !isa.is_available()) {
            let got = CpuBackend::new().with_isa(isa);
            assert!(matches!(got, Err(Error::Unsupported { backend: "cpu", .. })), "{isa:?}: {got:?}");
        }
    }
}
