//! # msloss-cpu
//!
//! The fused, multithreaded CPU backend of msloss: [`CpuBackend`] implements
//! [`msloss_core::Backend`] for every [`Real`] type (`f32`, `f64`) with exactly the core's
//! definition — every length kind, both reductions, masks, 3D volumes, logits or probabilities,
//! the centroids, and the exact `ε_c` gradient correction.
//!
//! ## How
//! Two passes over the data instead of the ten or so of an autograd implementation:
//! 1. the softmax of each pixel and the per-block sums `A_bn = Σ m·y` and `Σ m·y·x_k`, with the
//!    input checks fused in;
//! 2. the fidelity, the length and the gradient of each row in one sweep. With logits and a
//!    gradient requested, pass 1 stores the probabilities and pass 2 reads its block's rows back:
//!    from a buffer of the sample's own where a sample's probabilities take at most
//!    [`DEFAULT_SAMPLE_CACHE_BYTES`] ([`CpuBackend::with_sample_cache_bytes`]; one buffer per
//!    thread, reused by sample after sample, so it stays in the core's caches, and the gradient
//!    is written once), else from the gradient buffer (an output, overwritten row by row in pass
//!    2: each row's gradient overwrites its probabilities). Rows it needs from other blocks, and
//!    rows already overwritten, get their softmax recomputed (the same code, so the same bits).
//!    Otherwise pass 2 recomputes the softmax.
//!
//! In the AVX-512 copy, for 2D images and 3D volumes, an L1 or L2 length and 1 to 4 channels,
//! pass 2 is one sweep per row in chunks of one register's pixels (16 of `f32`, 8 of `f64`)
//! with the classes inside, written with AVX-512 intrinsics: the sums over classes stay in
//! registers and each class's fluxes go straight into its gradient (`kernel/fused.rs`). Everything else takes the
//! row-line kernels, which loop over each row once per class; `MSLOSS_CPU_PASS2=rows` in the
//! environment makes every case take them, to compare the two.
//!
//! Pass 1 runs over tiles of columns (a tile of every class fits the first-level cache; see
//! [`CpuBackend::with_tile_width`]) and, with logits and a gradient, stores the probabilities
//! in the cache, with plain stores. A sample's own buffer (S2, S3: a sample's logits,
//! image and probabilities overflow a core's second-level cache, but its probabilities take at
//! most 4 MiB) saves pass 1 reading the gradient buffer's old contents from memory while it
//! reads the logits: pass 2 reads the gradient's lines instead, asking for them two rows ahead,
//! and writes them once (with non-temporal stores above the streaming size). S2 went about a
//! tenth faster in `f32` and `f64`. Smaller samples (S1) keep the gradient buffer, where the
//! whole sample stays in the second-level cache. For larger samples the cache is the gradient
//! buffer too: even when it is larger than the last-level cache, part of it is still there when
//! pass 2 reads it back, and pass 2's gradient then overwrites lines it has just read
//! (non-temporal stores made S4 a third slower); a buffer of their own measured slower there
//! (S4 about a quarter). For large `f32` buffers the chunked pass 2 computes the softmax again
//! instead, and writes the gradient once ([`SoftmaxCache`]). Where the chunked pass 2 computes
//! the softmax again (that, or energy alone), the chunked pass 1 keeps each pixel's largest
//! logit and reciprocal sum of exponentials (`2·B·H·W` values, at most what a cache of the
//! probabilities takes), and pass 2
//! computes a row's probabilities from them in one sweep, `e^(z − max)·(1/Σ e)`, the same bits
//! as the full softmax without its copy, maximum and sum. With probabilities input nothing is
//! cached, and pass 2 writes a gradient buffer too large to stay in cache with non-temporal stores
//! ([`CpuBackend::with_stream_bytes`]). For logits in the AVX-512 copy (`f32` and `f64`, 1 to 4
//! channels) each tile is done in three sweeps with the classes inside its chunks of one
//! register's pixels instead of one per step and class (`kernel/fused/pass1.rs`);
//! `MSLOSS_CPU_PASS1=tiles` keeps the tiled kernel, to compare. Both passes prefetch the next
//! rows' inputs in software: one memory stream per class is more than the hardware prefetcher
//! follows. The chunked kernels ask for the logits' next row a line at a time, as they
//! copy each line of the current row, rather than a whole row at once: a burst of a row's
//! requests fills the core's queue of misses and stalls it (pass 1 keeps the burst where a row
//! of every class is at most 16 KiB of logits: it measured faster there). For `f32` logits the
//! sweeps that compute ask for them instead, a column of every class at a time: pass 1's third
//! sweep for the next row, pass 2's chunk loop for the row after next.
//!
//! The work is split into blocks of whole rows of one sample, fixed by the shape alone, and run in
//! parallel with [rayon](https://docs.rs/rayon) (its work stealing balances the blocks when other
//! processes share the cores). Samples run in parallel too, each on its own: its pass 1, its
//! centroids and constants, then its pass 2 at once, while its data are still in cache (a sample of
//! S2 is 1.3 MiB of logits, against 2 MiB of second-level cache per core on the development
//! machine; pass 1 over every sample before any pass 2 read them back from further away). Pass 2
//! scales the gradient by the reduction's factor, so under the mean reduction with a mask the
//! mask's ones are counted first. Each block's partial sums go into their own slot and are added in
//! block order, so results are bitwise identical for any thread count and from run to run.
//! Arithmetic is in `T` (eight `f32` lanes per AVX2 vector); the inner loops are branch-free over
//! rows and vectorise (the softmax uses its own vectorisable `exp`), and on x86-64 a copy compiled
//! for AVX-512 (F, VL, DQ, BW) or for AVX2 and FMA is picked at run time where the CPU has them
//! (the environment variable `MSLOSS_CPU_ISA=generic|avx2|avx512` caps the choice;
//! [`CpuBackend::isa`] says which runs). The copies for AVX2 and AVX-512 fuse the multiply-adds of
//! the softmax's `exp` and of pass 2's per-pixel gradient (one rounding instead of two); sums are
//! never fused (it would lengthen their dependency chains).
//!
//! ## Accuracy
//! `f32` results stay within about `1e-6` of the `f64` reference (relative to the energy and to
//! the largest gradient component, also at 2048²) because:
//! - sums run in lanes of `T` over chunks of 256 elements, and the chunks are added in `f64`;
//! - the logit gradient leaves out the part of the fidelity gradient common to all classes,
//!   which the softmax Jacobian would cancel, so near-equal centroids lose no digits;
//! - the sign of an L1 difference of softmax outputs within `T`'s rounding of zero is
//!   recomputed from the logits exactly as the reference computes it (rare), since the
//!   subgradient jumps there.
//!
//! ## Errors
//! The same typed errors as the reference ([`msloss_core::check_request`]): parameters and
//! output lengths first, then the input values (checked inside pass 1; on a bad value the
//! core's own check names the first offending element), an empty mask under the mean
//! reduction, and [`Error::NonFiniteResult`] when the energy or gradient overflows `T`.
//!
//! ## Memory
//! A [`CpuWorkspace`] holds per-thread row scratch (a few rows of `N·W` values; for 3D volumes
//! also the length's fluxes along D of one slice, `(H + 1)·N·W` values, which the next slice
//! needs, and a padded row of every class of the next slice), the partial sums (`O(B·N·C)` per block) and, where pass 1 caches samples'
//! probabilities in buffers of their own, one sample's worth per thread (at most the batch's,
//! and at most [`DEFAULT_SAMPLE_CACHE_BYTES`] each by default); after the first call with a
//! given shape, calls allocate nothing.
//! On an error found after the passes (an invalid input value: each sample's pass 2 runs before
//! the checks of all samples are added up), the gradient buffer holds no meaningful values
//! (probabilities, or gradients of invalid inputs).
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

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex, PoisonError};

use msloss_core::{Backend, Energy, Error, Input, Outputs, Params, Real, Reduction};
use rayon::prelude::*;

/// A workspace slot holding one typed part (see `typed`), locked by whoever uses it.
type Slot = Mutex<Option<Box<dyn Any + Send>>>;

mod exp;
mod kernel;

use kernel::{Block, GradRows, P1_HEAD, P2_LEN, Pass2, Problem, Scratch, Stats};

/// The default number of pixels per block (rounded to whole rows).
pub const DEFAULT_BLOCK_PIXELS: usize = 16_384;
/// By default an input of fewer than this many [`DEFAULT_BLOCK_PIXELS`] blocks is cut into this
/// many smaller ones (of at least [`SMALL_BLOCK_PIXELS`]), so that threads still share it.
pub const SMALL_INPUT_BLOCKS: usize = 4;
/// The smallest default block (see [`SMALL_INPUT_BLOCKS`]).
pub const SMALL_BLOCK_PIXELS: usize = 4096;
/// The fewest slices of a 3D volume in a block unless a block size is set: a block recomputes
/// about one slice's worth of rows at each end (64³, one thread: 5.8 ms with 4 slices, 5.0 with
/// 8, 4.4 with one block).
pub const DEFAULT_BLOCK_SLICES: usize = 8;

/// The mask values each task counts when the mean reduction's divisor is counted up front.
const MASK_CHUNK: usize = 1 << 16;

/// The default size in bytes above which a gradient buffer is written with non-temporal stores
/// when nothing is cached in it (see [`CpuBackend::with_stream_bytes`]).
pub const DEFAULT_STREAM_BYTES: usize = 24 << 20;

/// The default size in bytes up to which a sample's probabilities are cached in a buffer of
/// their own rather than in the gradient buffer (see [`CpuBackend::with_sample_cache_bytes`]).
pub const DEFAULT_SAMPLE_CACHE_BYTES: usize = 4 << 20;

/// The default size in bytes of a sample's logits, image and probabilities together up to
/// which its probabilities stay in the gradient buffer (see
/// [`CpuBackend::with_sample_cache_from`]): pass 1 and pass 2 then run on a sample that stays
/// in a core's second-level cache (2 MiB on the development machine), and a buffer of its own
/// would only add to it (S1, 1.75 MiB a sample: 0.66 ms in place against 0.98 in its own
/// buffer, two threads, 12 alternations).
pub const DEFAULT_SAMPLE_CACHE_FROM_BYTES: usize = 2 << 20;

/// The fused multithreaded CPU backend.
///
/// Results depend on the block size (it fixes the summation order) but never on the thread
/// count. It computes in `f32` and `f64`; any other [`Real`] type gets
/// [`Error::Unsupported`].
#[derive(Debug, Clone)]
pub struct CpuBackend {
    threads: Option<usize>,
    /// Our own pool; `None` runs in rayon's current (by default global) pool.
    pool: Option<Arc<rayon::ThreadPool>>,
    /// Why building the requested pool failed, reported by every evaluation.
    pool_error: Option<&'static str>,
    /// `None`: chosen from the shape (see `Plan::for_shape`).
    block_pixels: Option<usize>,
    /// Columns per tile of pass 1 (`None`: chosen from the class count).
    tile_width: Option<usize>,
    stream_bytes: usize,
    sample_cache_bytes: usize,
    sample_cache_from: usize,
    softmax_cache: SoftmaxCache,
}

/// Where the gradient pass gets the probabilities from, with logits input and a gradient.
///
/// Pass 1 computes the softmax for the classes' moments. It can store the probabilities for
/// pass 2 to read back (the cache), or pass 2 can compute them again from the logits (read
/// twice, the gradient written once, with non-temporal stores when large). The cache is a buffer
/// of the sample's own where a sample's probabilities are small enough
/// ([`CpuBackend::with_sample_cache_bytes`]), else the gradient buffer, which pass 2 overwrites
/// in place (read once more and written twice). Results are the same bits either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SoftmaxCache {
    /// Cache in a sample's own buffer where it is small enough; else recompute in `f32` where
    /// the gradient buffer is larger than the streaming threshold
    /// ([`CpuBackend::with_stream_bytes`]) and the chunked gradient kernel runs on a 2D image
    /// (AVX-512, L1 or L2 length, 1 to 4 channels); else cache. Measured on S4 (2,21,3,512²),
    /// two threads: `f32` about a tenth faster recomputed, `f64` (whose exponential costs more
    /// than twice as much a value) about a twentieth slower. A volume's pass 2 would compute each
    /// row's softmax twice (as the next row, and as the next slice's row): 1×4×3×128³ `f32`
    /// took 23.7 ms recomputed against 20.0 cached on two threads, 39.4 against 32.9 on one
    /// (BENCHMARKS.md).
    #[default]
    Auto,
    /// Always cache (the only choice of the other kernels).
    Always,
    /// Recompute wherever the chunked gradient kernel runs, at any size and in either type.
    Never,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend using rayon's global pool (all cores), or the pool it is called from.
    pub fn new() -> Self {
        Self {
            threads: None,
            pool: None,
            pool_error: None,
            block_pixels: None,
            tile_width: None,
            stream_bytes: DEFAULT_STREAM_BYTES,
            sample_cache_bytes: DEFAULT_SAMPLE_CACHE_BYTES,
            sample_cache_from: DEFAULT_SAMPLE_CACHE_FROM_BYTES,
            softmax_cache: SoftmaxCache::Auto,
        }
    }

    /// A backend using its own pool of `threads` threads (`0` is taken as `1`).
    ///
    /// If the operating system refuses the threads, every evaluation returns
    /// [`Error::Unsupported`] saying so.
    pub fn with_threads(threads: usize) -> Self {
        let threads = threads.max(1);
        let built =
            rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("msloss-cpu-{i}")).build();
        let (pool, pool_error) = match built {
            Ok(p) => {
                // Wait until every worker has started, so that thread start-up (and its
                // allocations) happens here and not inside the first evaluations.
                p.broadcast(|_| ());
                (Some(Arc::new(p)), None)
            }
            Err(_) => (None, Some("a thread pool of the requested size (the system refused the threads)")),
        };
        Self {
            threads: Some(threads),
            pool,
            pool_error,
            block_pixels: None,
            tile_width: None,
            stream_bytes: DEFAULT_STREAM_BYTES,
            sample_cache_bytes: DEFAULT_SAMPLE_CACHE_BYTES,
            sample_cache_from: DEFAULT_SAMPLE_CACHE_FROM_BYTES,
            softmax_cache: SoftmaxCache::Auto,
        }
    }

    /// The thread count requested, if any (`None`: rayon's pool).
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }

    /// Which compiled copy of the kernels runs in this process: `"avx512"`, `"avx2"` or
    /// `"generic"` (see the crate docs on `MSLOSS_CPU_ISA`).
    pub fn isa(&self) -> &'static str {
        Isa::get().name()
    }

    /// The same backend with blocks of about `pixels` pixels (whole rows, at least one).
    ///
    /// Blocks are the unit of parallel work and of summation: smaller blocks balance better
    /// across threads, larger ones recompute fewer boundary rows. Results are bitwise identical
    /// for any thread count at a given block size.
    pub fn with_block_pixels(mut self, pixels: usize) -> Self {
        self.block_pixels = Some(pixels.max(1));
        self
    }

    /// The same backend with tiles of `columns` columns (at least one) in the softmax pass
    /// instead of the default, which keeps a tile of every class in the first-level cache.
    ///
    /// Like the block size, the tile width fixes a summation order: results are bitwise
    /// identical for any thread count at a given tile width.
    pub fn with_tile_width(mut self, columns: usize) -> Self {
        self.tile_width = Some(columns.max(1));
        self
    }

    /// The same backend with non-temporal stores for gradient buffers larger than `bytes`
    /// (default [`DEFAULT_STREAM_BYTES`]) that nothing is cached in: with probabilities input,
    /// or with logits where the probabilities are not cached ([`SoftmaxCache`]), the gradient
    /// pass writes the buffer without reading it, and non-temporal stores save reading its old
    /// contents from memory first. Where the softmax pass caches the probabilities in the
    /// buffer, the gradient pass overwrites the lines it has just read back, which plain stores
    /// do best. The same size is where [`SoftmaxCache::Auto`] stops caching. Results are the
    /// same either way.
    pub fn with_stream_bytes(mut self, bytes: usize) -> Self {
        self.stream_bytes = bytes;
        self
    }

    /// The same backend with each sample's probabilities cached in a buffer of their own (one
    /// per thread, reused from sample to sample, so it stays in the cores' caches) where a
    /// sample's take at most `bytes` (default [`DEFAULT_SAMPLE_CACHE_BYTES`]); `0` never does.
    /// Pass 1 then stores them there instead of in the gradient buffer, and pass 2 reads them
    /// there and writes the gradient once, with non-temporal stores above the streaming size
    /// ([`CpuBackend::with_stream_bytes`]). Samples too small to gain are left out
    /// ([`CpuBackend::with_sample_cache_from`]). Results are the same bits either way.
    pub fn with_sample_cache_bytes(mut self, bytes: usize) -> Self {
        self.sample_cache_bytes = bytes;
        self
    }

    /// The same backend that caches a sample's probabilities in a buffer of their own (see
    /// [`CpuBackend::with_sample_cache_bytes`]) only where its logits, image and probabilities
    /// together take more than `bytes` (default [`DEFAULT_SAMPLE_CACHE_FROM_BYTES`]); smaller
    /// samples stay in a core's second-level cache with the probabilities in the gradient
    /// buffer. Results are the same bits either way.
    pub fn with_sample_cache_from(mut self, bytes: usize) -> Self {
        self.sample_cache_from = bytes;
        self
    }

    /// The same backend with the probabilities cached or recomputed as `cache` says (default
    /// [`SoftmaxCache::Auto`]). Results are the same bits either way.
    pub fn with_softmax_cache(mut self, cache: SoftmaxCache) -> Self {
        self.softmax_cache = cache;
        self
    }

    /// A fresh workspace (the same as [`Backend::workspace`], without naming the float type).
    pub fn workspace(&self) -> CpuWorkspace {
        CpuWorkspace::default()
    }

    /// The block size in pixels that was set, else [`DEFAULT_BLOCK_PIXELS`]. (With the default,
    /// inputs of fewer than [`SMALL_INPUT_BLOCKS`] such blocks get smaller ones, down to
    /// [`SMALL_BLOCK_PIXELS`], and 3D blocks span at least [`DEFAULT_BLOCK_SLICES`] slices.)
    pub fn block_pixels(&self) -> usize {
        self.block_pixels.unwrap_or(DEFAULT_BLOCK_PIXELS)
    }

    fn run<R: Send>(&self, f: impl FnOnce(usize) -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(|| f(rayon::current_num_threads())),
            None => f(rayon::current_num_threads()),
        }
    }
}

/// Reusable scratch of [`CpuBackend`]: per-thread rows and per-block partial sums.
///
/// Grows to the largest shape seen; calls with a shape it already fits allocate nothing.
#[derive(Default)]
pub struct CpuWorkspace {
    /// One `Scratch<T>` per thread, typed by the last call's float type.
    scratch: Vec<Slot>,
    part1: Vec<f64>,
    part2: Vec<f64>,
    /// Per-sample totals of pass 1, `[B, N·(1 + C)]`.
    sums: Vec<f64>,
    /// `[B, N, C]`.
    centroids: Vec<f64>,
    /// Pass 2's constants in the call's float type (`Consts<T>`).
    consts: Option<Box<dyn Any + Send>>,
    /// Buffers for one sample's probabilities each (`Vec<T>`; see
    /// [`CpuBackend::with_sample_cache_bytes`]), taken by a sample for both its passes.
    samples: Vec<Slot>,
}

impl core::fmt::Debug for CpuWorkspace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuWorkspace")
            .field("threads", &self.scratch.len())
            .field("part1", &self.part1.len())
            .field("part2", &self.part2.len())
            .finish_non_exhaustive()
    }
}

/// The workspace's scratch of one thread as `Scratch<T>`, replacing it if it held another type.
/// What `slot` holds as an `S`, after replacing anything else it held with a fresh one (the
/// workspace's typed parts follow the call's float type).
fn typed<S: Any + Send + Default>(slot: &mut Option<Box<dyn Any + Send>>) -> &mut S {
    if !slot.as_ref().is_some_and(|b| b.is::<S>()) {
        *slot = Some(Box::new(S::default()));
    }
    match slot.as_mut().and_then(|b| b.downcast_mut::<S>()) {
        Some(s) => s,
        None => unreachable!("the slot was just given one"),
    }
}

/// How a shape is cut into blocks.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rows_per_block: usize,
    blocks_per_sample: usize,
    rows: usize,
}

impl Plan {
    /// The plan for `bsz` samples of `[d, h, w]` with the block size set (or `None`).
    ///
    /// By default, inputs of fewer than `SMALL_INPUT_BLOCKS` default blocks get smaller blocks
    /// (down to `SMALL_BLOCK_PIXELS`), so that threads still share them (chosen from the shape alone, so
    /// results do not depend on the thread count). A 3D block recomputes about one slice of rows
    /// at each end (the neighbours along D of its first and last slices), so by default it spans
    /// several slices.
    fn for_shape(bsz: usize, [d, h, w]: [usize; 3], block_pixels: Option<usize>) -> Self {
        let (block_pixels, min_rows) = match block_pixels {
            Some(px) => (px, 1),
            None => (
                (bsz * d * h * w / SMALL_INPUT_BLOCKS).clamp(SMALL_BLOCK_PIXELS, DEFAULT_BLOCK_PIXELS),
                if d > 1 { DEFAULT_BLOCK_SLICES * h } else { 1 },
            ),
        };
        Plan::new(d * h, w, block_pixels, min_rows)
    }

    /// Blocks of about `block_pixels` pixels and at least `min_rows` rows.
    fn new(rows: usize, w: usize, block_pixels: usize, min_rows: usize) -> Self {
        let rows_per_block = block_pixels.div_ceil(w).max(min_rows).clamp(1, rows);
        Self { rows_per_block, blocks_per_sample: rows.div_ceil(rows_per_block), rows }
    }
    fn block(&self, i: usize) -> Block {
        let b = i / self.blocks_per_sample;
        let r0 = (i % self.blocks_per_sample) * self.rows_per_block;
        Block { b, r0, r1: (r0 + self.rows_per_block).min(self.rows) }
    }
}

/// Whether pass 1 and pass 2 take their chunked kernels where they apply (in the AVX-512 copy;
/// see `kernel::fused`), read once per process: the environment variables
/// `MSLOSS_CPU_PASS1=tiles` and `MSLOSS_CPU_PASS2=rows` keep the tiled pass 1 and the row-line
/// pass 2 everywhere, to compare; any other value is ignored.
fn chunked_passes() -> (bool, bool) {
    static CHUNKED: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();
    *CHUNKED.get_or_init(|| {
        let keep = |var: &str, old: &str| std::env::var(var).is_ok_and(|v| v.trim().eq_ignore_ascii_case(old));
        (!keep("MSLOSS_CPU_PASS1", "tiles"), !keep("MSLOSS_CPU_PASS2", "rows"))
    })
}

/// Which compiled copy of the kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The best copy this CPU runs, detected once per process. The environment variable
    /// `MSLOSS_CPU_ISA` (read before the first evaluation) caps the choice: `generic`, `avx2` or
    /// `avx512` (the best copy the CPU runs at or below it; any case), for comparisons and for
    /// testing every copy on one machine; any other value is ignored.
    fn get() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = std::env::var("MSLOSS_CPU_ISA").ok().map(|v| v.trim().to_ascii_lowercase());
            Isa::detect(cap.as_deref())
        })
    }

    /// The copy that runs under the cap `cap` (see [`Isa::get`]).
    fn detect(cap: Option<&str>) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let (allow_avx2, allow_avx512) = match cap {
                Some("generic") => (false, false),
                Some("avx2") => (true, false),
                _ => (true, true),
            };
            if allow_avx512
                && has!("avx512f")
                && has!("avx512vl")
                && has!("avx512dq")
                && has!("avx512bw")
                && has!("avx2")
                && has!("fma")
            {
                return Isa::Avx512;
            }
            if allow_avx2 && has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = cap;
        Isa::Generic
    }

    /// The copy's name, as `MSLOSS_CPU_ISA` spells it.
    fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
        }
    }
}

/// Whether the kernels without target features may fuse multiply-adds: only where the
/// baseline target has the instruction (otherwise `mul_add` is a call into the maths library).
const GENERIC_FMA: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

/// Pass 1 over one block; `stats` only where the chunked pass 1 runs (`keep_stats` in `evaluate`).
fn pass1_dispatch<T: Real>(
    (isa, chunked): (Isa, bool),
    p: &Problem<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    (cache, stats): (Option<GradRows<T>>, Option<Stats<T>>),
    part: &mut [f64],
) {
    #[cfg(target_arch = "x86_64")]
    if chunked && kernel::fused::pass1::usable(isa, p) {
        // SAFETY: `usable` holds, which includes the AVX-512 copy: the CPU has its features.
        // `stats`, made by `evaluate`, holds every row, and blocks partition the rows.
        unsafe { kernel::fused::pass1::pass1(p, blk, s, (cache, stats), part) };
        return;
    }
    debug_assert!(stats.is_none(), "only the chunked pass 1 keeps statistics");
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (chunked, stats);
    match isa {
        Isa::Generic => kernel::pass1::<T, GENERIC_FMA>(p, blk, s, cache, part),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU reports AVX2 and FMA.
        Isa::Avx2 => unsafe { pass1_avx2(p, blk, s, cache, part) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only chosen when the CPU reports these AVX-512 subsets.
        Isa::Avx512 => unsafe { pass1_avx512(p, blk, s, cache, part) },
    }
}

fn pass2_dispatch<T: Real>(
    isa: Isa,
    p: &Problem<'_, T>,
    k: &Pass2<'_, T>,
    blk: Block,
    s: &mut Scratch<T>,
    grad: Option<GradRows<T>>,
    part: &mut [f64],
) {
    #[cfg(target_arch = "x86_64")]
    if k.fused && kernel::fused::usable(isa, p, k.length) {
        // SAFETY: `usable` holds, which includes the AVX-512 copy: the CPU has its features.
        unsafe { kernel::fused::pass2(p, k, blk, s, grad, part) };
        return;
    }
    match isa {
        Isa::Generic => kernel::pass2::<T, GENERIC_FMA>(p, k, blk, s, grad, part),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `pass1_dispatch`.
        Isa::Avx2 => unsafe { pass2_avx2(p, k, blk, s, grad, part) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512 => unsafe { pass2_avx512(p, k, blk, s, grad, part) },
    }
}

/// The kernels compiled once more with `features` enabled (each includes FMA): `pass1` and
/// `pass2` wrappers that the dispatchers call only when the CPU reports those features.
macro_rules! isa_copies {
    ($pass1:ident, $pass2:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $pass1<T: Real>(
            p: &Problem<'_, T>,
            blk: Block,
            s: &mut Scratch<T>,
            cache: Option<GradRows<T>>,
            part: &mut [f64],
        ) {
            kernel::pass1::<T, true>(p, blk, s, cache, part);
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $pass2<T: Real>(
            p: &Problem<'_, T>,
            k: &Pass2<'_, T>,
            blk: Block,
            s: &mut Scratch<T>,
            grad: Option<GradRows<T>>,
            part: &mut [f64],
        ) {
            kernel::pass2::<T, true>(p, k, blk, s, grad, part);
        }
    };
}

isa_copies!(pass1_avx2, pass2_avx2, "avx2,fma");
isa_copies!(pass1_avx512, pass2_avx512, "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma");

/// Runs `f` in parallel on the blocks of one sample, one per slot of `parts` (`stride` values
/// each), each with its thread's scratch.
fn for_blocks<T: Real>(
    parts: &mut [f64],
    stride: usize,
    scratch: &[Slot],
    plan: Plan,
    f: impl Fn(Block, &mut Scratch<T>, &mut [f64]) + Sync,
) {
    parts.par_chunks_mut(stride).enumerate().for_each(|(i, part)| {
        let slot = rayon::current_thread_index().unwrap_or(0) % scratch.len();
        let mut s = scratch[slot].lock().unwrap_or_else(PoisonError::into_inner);
        f(plan.block(i), typed::<Scratch<T>>(&mut s), part);
    });
}

/// A free one of `slots`, the thread's own first (`None` if all are taken).
fn take_slot(slots: &[Slot]) -> Option<std::sync::MutexGuard<'_, Option<Box<dyn Any + Send>>>> {
    let first = rayon::current_thread_index().unwrap_or(0);
    (0..slots.len()).find_map(|i| match slots[(first + i) % slots.len()].try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    })
}

impl<T: Real> Backend<T> for CpuBackend {
    type Workspace = CpuWorkspace;
    type Error = Error;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn workspace(&self) -> CpuWorkspace {
        CpuWorkspace::default()
    }

    fn evaluate(
        &self,
        input: &Input<'_, T>,
        params: &Params,
        out: Outputs<'_, T>,
        ws: &mut CpuWorkspace,
    ) -> Result<Energy<T>, Error> {
        if let Some(what) = self.pool_error {
            return Err(Error::Unsupported { backend: "cpu", what });
        }
        params.validate()?;
        out.check(input.shape())?;
        // The kernels run in the copies compiled in this crate, one per type (see `evaluate_as`).
        if TypeId::of::<T>() == TypeId::of::<f32>() {
            evaluate_as(self, input, params, out, ws, evaluate_f32)
        } else if TypeId::of::<T>() == TypeId::of::<f64>() {
            evaluate_as(self, input, params, out, ws, evaluate_f64)
        } else {
            Err(Error::Unsupported { backend: "cpu", what: "float types other than f32 and f64" })
        }
    }
}

/// The call of [`Backend::evaluate`] for `T`, made by `f` on the type `U` that `T` is (asserted:
/// anything else panics).
///
/// The kernels are generic over the float type, and a generic function is compiled in the
/// crate that names its type: called as `evaluate::<T>`, every crate that evaluates with this
/// backend (the CLI, each test and bench binary, a user's trainer) would compile all of them
/// again, which takes minutes in a release build. `evaluate_f32` and `evaluate_f64` are not
/// generic, so they and the kernels are compiled here, once.
fn evaluate_as<T: Real, U: Real>(
    cfg: &CpuBackend,
    input: &Input<'_, T>,
    params: &Params,
    out: Outputs<'_, T>,
    ws: &mut CpuWorkspace,
    f: EvaluateIn<U>,
) -> Result<Energy<T>, Error> {
    assert!(TypeId::of::<T>() == TypeId::of::<U>(), "a type named as itself");
    let slice = |v: &mut [T]| {
        // SAFETY: `T` is `U` (asserted): the same slice, its type named as what it is.
        unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<U>(), v.len()) }
    };
    let out = Outputs { grad: out.grad.map(slice), centroids: out.centroids.map(slice) };
    // SAFETY: as above, for the input and the energy.
    unsafe {
        let input = &*core::ptr::from_ref(input).cast::<Input<'_, U>>();
        let e = f(cfg, input, params, out, ws)?;
        Ok(core::ptr::from_ref(&e).cast::<Energy<T>>().read())
    }
}

/// [`Backend::evaluate`] in `U`, as `evaluate_f32` and `evaluate_f64` do it.
type EvaluateIn<U> =
    fn(&CpuBackend, &Input<'_, U>, &Params, Outputs<'_, U>, &mut CpuWorkspace) -> Result<Energy<U>, Error>;

/// `fn $name`: [`Backend::evaluate`] in `$t`, not generic (see [`evaluate_as`]).
macro_rules! evaluate_in {
    ($name:ident, $t:ty) => {
        #[doc = concat!("[`Backend::evaluate`] in `", stringify!($t), "` (see [`evaluate_as`]).")]
        fn $name(
            cfg: &CpuBackend,
            input: &Input<'_, $t>,
            params: &Params,
            out: Outputs<'_, $t>,
            ws: &mut CpuWorkspace,
        ) -> Result<Energy<$t>, Error> {
            cfg.run(|threads| evaluate(cfg, threads, input, params, out, ws))
        }
    };
}

evaluate_in!(evaluate_f32, f32);
evaluate_in!(evaluate_f64, f64);

/// The pass-2 constants in `T`, and pass 1's softmax statistics, kept in the workspace between
/// calls.
#[derive(Debug, Default)]
struct Consts<T> {
    /// Each sample's constants (see `sample_consts`), `[B, table_len(N, C)]`.
    table: Vec<T>,
    /// See `kernel::Stats` (grows to the largest shape that kept them).
    stats: Vec<T>,
}

fn evaluate<T: Real>(
    cfg: &CpuBackend,
    threads: usize,
    input: &Input<'_, T>,
    params: &Params,
    out: Outputs<'_, T>,
    ws: &mut CpuWorkspace,
) -> Result<Energy<T>, Error> {
    let shape = input.shape();
    let (bsz, n, c) = (shape.batch(), shape.classes(), shape.channels());
    let [d, h, w] = shape.spatial_dims();
    let p = Problem {
        scores: input.scores().data(),
        logits: input.scores().is_logits(),
        image: input.image(),
        mask: input.mask(),
        n,
        c,
        d,
        h,
        w,
        tile: cfg.tile_width.unwrap_or_else(|| kernel::tile_width(n, w, core::mem::size_of::<T>())).clamp(1, w),
        stream: false,
    };
    let plan = Plan::for_shape(bsz, [d, h, w], cfg.block_pixels);
    let blocks = bsz * plan.blocks_per_sample;
    let isa = Isa::get();
    let chunked = chunked_passes();
    // Large gradient buffers: with probabilities input, and with logits where pass 1 does not
    // cache the probabilities there, the buffer is written once, with non-temporal stores.
    let large = out.grad.as_ref().is_some_and(|g| core::mem::size_of_val(&**g) > cfg.stream_bytes);
    // Whether pass 2 recomputes the softmax instead of reading pass 1's cached probabilities
    // (only where its chunked kernel runs; see `SoftmaxCache`).
    #[cfg(target_arch = "x86_64")]
    let fused2 = chunked.1 && kernel::fused::usable(isa, &p, params.length);
    #[cfg(not(target_arch = "x86_64"))]
    let fused2 = false;
    // Whether pass 1 may cache each sample's probabilities in a buffer of their own: where they
    // fit `sample_cache_bytes`, and the sample's logits, image and probabilities together take
    // more than `sample_cache_from`.
    let sp = d * h * w;
    let elem = core::mem::size_of::<T>();
    let own = p.logits
        && out.grad.is_some()
        && cfg.softmax_cache != SoftmaxCache::Never
        && n * sp * elem <= cfg.sample_cache_bytes
        && (2 * n + c) * sp * elem > cfg.sample_cache_from;
    let recompute = p.logits
        && out.grad.is_some()
        && fused2
        && match cfg.softmax_cache {
            SoftmaxCache::Always => false,
            SoftmaxCache::Never => true,
            SoftmaxCache::Auto => !own && large && d == 1 && TypeId::of::<T>() == TypeId::of::<f32>(),
        };
    let own = own && !recompute;
    let p = Problem { stream: large && (!p.logits || recompute), ..p };

    // Where pass 2 computes the probabilities again from the logits, pass 1 keeps its softmax
    // statistics for it (see `Stats`), where it runs chunked and they take at most what a cache
    // of the probabilities would.
    #[cfg(target_arch = "x86_64")]
    let keep_stats = p.logits
        && fused2
        && (recompute || out.grad.is_none())
        && n >= 2
        && chunked.0
        && kernel::fused::pass1::usable(isa, &p);
    #[cfg(not(target_arch = "x86_64"))]
    let keep_stats = false;

    // The mean reduction's divisor, known before pass 1 since pass 2 scales the gradient by it.
    // The count of ones is the divisor `Σ m` of a mask of zeros and ones, in any order (pass 1's
    // checks fail any other mask).
    let valid = match p.mask {
        Some(m) if params.reduction == Reduction::Mean => {
            m.par_chunks(MASK_CHUNK).map(|m| m.iter().filter(|&&v| v == T::one()).count()).sum::<usize>()
        }
        _ => bsz * d * h * w,
    };
    if valid == 0 && params.reduction == Reduction::Mean {
        // A bad value is reported first, as by the reference.
        input.validate_values()?;
        return Err(Error::EmptyMask);
    }
    let scale = match params.reduction {
        Reduction::Sum => 1.0,
        Reduction::Mean => 1.0 / valid as f64,
    };

    // Workspace: one scratch per thread, partials per block, totals and constants per sample.
    let threads = threads.max(1);
    if ws.scratch.len() < threads {
        ws.scratch.resize_with(threads, || Mutex::new(None));
    }
    for s in &mut ws.scratch {
        typed::<Scratch<T>>(s.get_mut().unwrap_or_else(PoisonError::into_inner)).prepare(n, d, h, w);
    }
    let bps = plan.blocks_per_sample;
    let (stride1, sn, tn) = (P1_HEAD + n * (1 + c), n * (1 + c), table_len(n, c));
    ws.part1.resize(blocks * stride1, 0.0);
    ws.part2.resize(blocks * P2_LEN, 0.0);
    ws.sums.resize(bsz * sn, 0.0);
    ws.centroids.resize(bsz * n * c, 0.0);
    let consts = typed::<Consts<T>>(&mut ws.consts);
    consts.table.resize(bsz * tn, T::zero());
    // As many sample buffers as samples can run at once, which is at most one cache of all the
    // probabilities.
    let slots = if own { threads.min(bsz) } else { 0 };
    if ws.samples.len() < slots {
        ws.samples.resize_with(slots, || Mutex::new(None));
    }
    for slot in &mut ws.samples[..slots] {
        let buf = typed::<Vec<T>>(slot.get_mut().unwrap_or_else(PoisonError::into_inner));
        if buf.len() < n * sp {
            buf.resize(n * sp, T::zero());
        }
    }

    // With logits and a gradient requested, pass 1 also stores the probabilities in the gradient
    // buffer (an output, overwritten in pass 2 anyway), so that pass 2 reads them back instead
    // of recomputing the softmax, unless pass 2 is to recompute them.
    let mut out = out;
    let grad = out.grad.as_deref_mut().map(GradRows::new);
    let cache = if recompute { None } else { grad.filter(|_| p.logits) };
    let stats = keep_stats.then(|| {
        let len = Stats::len(&p, bsz);
        if consts.stats.len() < len {
            consts.stats.resize(len, T::zero());
        }
        Stats::new(&mut consts.stats[..len])
    });
    // What pass 2 takes besides a sample's constants.
    let common = Pass2 {
        centroids: &[],
        corr: &[],
        center: &[],
        weights: &[],
        base: &[],
        fidelity_weight: T::from_f64_lossy(params.fidelity_weight),
        lambda: T::from_f64_lossy(params.lambda),
        delta: T::from_f64_lossy(params.delta),
        length: params.length,
        scale: T::from_f64_lossy(scale),
        cache: None,
        stats: None,
        fused: chunked.1,
    };

    // Sample by sample (samples in parallel, and each pass's blocks in parallel): pass 1, the
    // sample's totals and constants, and pass 2 right after, while the sample's data are still
    // in cache. Every sum is in block order, so results do not depend on the thread count. The
    // kernels see each sample as a problem of its own.
    let scratch = &ws.scratch[..threads];
    let samples = &ws.samples[..slots];
    ws.part1[..blocks * stride1]
        .par_chunks_mut(bps * stride1)
        .zip(ws.part2[..blocks * P2_LEN].par_chunks_mut(bps * P2_LEN))
        .zip(ws.sums[..bsz * sn].par_chunks_mut(sn))
        .zip(ws.centroids[..bsz * n * c].par_chunks_mut(n * c))
        .zip(consts.table[..bsz * tn].par_chunks_mut(tn))
        .enumerate()
        .for_each(|(b, ((((part1, part2), sums), cent), table))| {
            let grad = grad.map(|g| g.part(b, n * sp));
            let stats = stats.map(|st| st.sample(&p, b));
            // A buffer of the sample's own for its probabilities where one is free (a thread
            // that starts a sample while waiting on another's blocks finds its own taken), else
            // the gradient buffer.
            let mut slot = take_slot(samples);
            let (p, cache) = match slot.as_deref_mut() {
                Some(buf) => {
                    let own = GradRows::new(&mut typed::<Vec<T>>(buf)[..n * sp]);
                    (Problem { stream: large, ..p.sample(b) }, Some(own))
                }
                None => (p.sample(b), cache.and(grad)),
            };
            let common = Pass2 { cache, stats, ..common };
            for_blocks(part1, stride1, scratch, plan, |blk, s, part| {
                pass1_dispatch((isa, chunked.0), &p, blk, s, (cache, stats), part);
            });
            sums.fill(0.0);
            for part in part1.chunks_exact(stride1) {
                for (acc, v) in sums.iter_mut().zip(&part[P1_HEAD..]) {
                    *acc += v;
                }
            }
            let k = sample_consts(sums, (n, c), params, cent, table, &common);
            for_blocks(part2, P2_LEN, scratch, plan, |blk, s, part| {
                pass2_dispatch(isa, &p, &k, blk, s, grad, part);
            });
            drop(slot);
        });

    // The checks and counts of every block, in order.
    let mut head = [0.0; P1_HEAD];
    for part in ws.part1[..blocks * stride1].chunks_exact(stride1) {
        head[0] += part[0];
        head[1] = head[1].min(part[1]);
        head[2] += part[2];
        head[3] += part[3];
        head[4] += part[4];
    }
    if !head[0].is_finite() || head[1] < 0.0 || !head[2].is_finite() || head[3] != 0.0 {
        // Some value is invalid: the core's own check names the first one, as the reference does.
        input.validate_values()?;
    }
    debug_assert!(
        params.reduction == Reduction::Sum || head[4] == valid as f64,
        "pass 1 counts {} valid pixels, the divisor is {valid}",
        head[4]
    );
    if let Some(cs) = out.centroids.as_deref_mut() {
        for (o, v) in cs.iter_mut().zip(&ws.centroids) {
            *o = T::from_f64_lossy(*v);
        }
    }
    let mut tot = [0.0; P2_LEN];
    for part in ws.part2[..blocks * P2_LEN].chunks_exact(P2_LEN) {
        for (t, v) in tot.iter_mut().zip(part) {
            *t += v;
        }
    }
    let fidelity = params.fidelity_weight * tot[0] * scale;
    let length = params.lambda * tot[1] * scale;
    let e = Energy::new(T::from_f64_lossy(fidelity), T::from_f64_lossy(length));
    if !e.total.is_finite() {
        return Err(Error::NonFiniteResult { what: "energy", value: e.total.to_f64_lossless() });
    }
    if !tot[2].is_finite() {
        return Err(Error::NonFiniteResult { what: "gradient", value: tot[2] });
    }
    Ok(e)
}

/// The values of one sample's pass-2 constants in `T` (see `sample_consts`).
fn table_len(n: usize, c: usize) -> usize {
    2 * n * c + 2 * n + c
}

/// One sample's centroids (`cent`, `[N, C]`, in `f64`) from its pass-1 totals `sums` (`A_n`,
/// then `M_nk`), and pass 2's constants for it: `common` with the sample's constants, in `table`
/// (`table_len` values).
fn sample_consts<'a, T: Real>(
    sums: &[f64],
    (n, c): (usize, usize),
    params: &Params,
    cent: &mut [f64],
    table: &'a mut [T],
    common: &Pass2<'static, T>,
) -> Pass2<'a, T> {
    let (eps, wf) = (params.centroid_eps, params.fidelity_weight);
    let lossy = T::from_f64_lossy;
    let (centroids, rest) = table.split_at_mut(n * c);
    let (corr, rest) = rest.split_at_mut(n);
    let (center, rest) = rest.split_at_mut(c);
    let (weights, base) = rest.split_at_mut(n * c);
    for cls in 0..n {
        let area = sums[cls];
        for k in 0..c {
            cent[cls * c + k] = sums[n + cls * c + k] / (area + eps);
            centroids[cls * c + k] = lossy(cent[cls * c + k]);
        }
    }
    // The common centre of the centroids (their mean), and the constants of the logits'
    // fidelity part: `g_n`'s is `m·(β_n − ⟨x − ĉ, v_n⟩)` (see the kernel's `ClassConsts`), from
    // the offsets `δ_n = c_n − ĉ` to the centre as rounded to `T`.
    for (k, h) in center.iter_mut().enumerate() {
        *h = lossy((0..n).map(|cls| cent[cls * c + k]).sum::<f64>() / n as f64);
    }
    for cls in 0..n {
        let cr = 2.0 * eps / (sums[cls] + eps);
        corr[cls] = lossy(cr);
        let (mut kappa, mut cd) = (0.0, 0.0);
        for k in 0..c {
            let ck = cent[cls * c + k];
            let d = ck - center[k].to_f64_lossless();
            weights[cls * c + k] = lossy(wf * (2.0 * d + cr * ck));
            kappa += d * d;
            cd += ck * d;
        }
        base[cls] = lossy(wf * (kappa + cr * cd));
    }
    Pass2 { centroids, corr, center, weights, base, ..*common }
}

#[cfg(test)]
mod tests {
    use super::Plan;

    /// `(blocks per sample, rows per block)` of the plan.
    fn plan(bsz: usize, dhw: [usize; 3], px: Option<usize>) -> (usize, usize) {
        let p = Plan::for_shape(bsz, dhw, px);
        (p.blocks_per_sample, p.rows_per_block)
    }

    #[test]
    fn default_blocks_follow_the_shape() {
        // Large inputs: 16384-pixel blocks (S2, S4).
        assert_eq!(plan(8, [1, 128, 128], None), (1, 128));
        assert_eq!(plan(2, [1, 512, 512], None), (16, 32));
        // Small inputs: four blocks, down to 4096 pixels; the smallest stay whole.
        assert_eq!(plan(1, [1, 128, 128], None), (4, 32));
        assert_eq!(plan(1, [1, 64, 96], None), (2, 43));
        assert_eq!(plan(1, [1, 64, 64], None), (1, 64));
        // 3D: at least 8 slices per block.
        assert_eq!(plan(1, [64, 64, 64], None), (8, 512));
        // A size that was set is kept, also in 3D.
        assert_eq!(plan(1, [1, 128, 128], Some(16384)), (1, 128));
        assert_eq!(plan(1, [64, 64, 64], Some(4096)), (64, 64));
    }
}
