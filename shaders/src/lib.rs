//! # msloss-shaders
//!
//! The WGSL compute shaders of msloss's GPU backend (`msloss-wgpu`), one file per entry point
//! under `shader/`, with the shared code (`shader/common.wgsl`: constants, the [`Dims`] uniform
//! block, helpers) prepended to each, and the local fidelity's shared functions
//! (`shader/local_sample.wgsl`, `shader/local_centre.wgsl`, `shader/local_coverage.wgsl`), the
//! softmax's (`shader/softmax.wgsl`) and the workgroup sums' (`shader/tree.wgsl`) to the kernels
//! that use them. Every kernel is described by a
//! [`Kernel`]: its source, entry point, workgroup size and binding table, which the backend turns
//! into bind group layouts. The crate's tests parse every shader with naga, validate it, and
//! check the workgroup sizes, the bindings and the uniform structs' layouts against this file, so
//! the Rust side and the WGSL cannot drift apart.
//!
//! ## The pipeline
//! For one evaluation (`S = D·H·W`, `WG` = [`WORKGROUP_SIZE`], `TILE` = [`TILE`]):
//! 1. [`Kernel::ClassSums`] — per (sample, tile), eight pixels per invocation: input checks into a
//!    status word, and the tile's `Σ m·y`, `Σ m·y·x_k` and `Σ m` of every class row, summed over
//!    the workgroup (`shader/tree.wgsl`). Or [`Kernel::ClassSumsStrided`], with no barrier: `G`
//!    workgroups a sample take every `G`-th tile, each invocation adding its pixels' share into
//!    partials of its own (for devices that emulate a GPU on CPU cores). Both share
//!    `shader/class_pixels.wgsl`.
//! 2. [`Kernel::Reduce`] — repeated: row sums over tiles of partials until one value per row.
//! 3. [`Kernel::Centroids`] — per (b, n, k): centroids, the ε-correction, the reduction scale.
//! 4. [`Kernel::LossGrad`] — one pixel and all its classes per invocation: energy terms
//!    (tree-summed per workgroup) and the gradient, `∂E/∂z` for logits (the softmax backward
//!    fused in) or `∂E/∂y`, written once; then [`Kernel::Reduce`] again over the energy partials.
//! 5. [`Kernel::Finalize`] — weights, reduction, the energy record and its status word.
//!
//! No probability is stored: for logits, the kernels that need `y` recompute a pixel's softmax
//! from the logits (`shader/softmax.wgsl`), once per pixel and invocation.
//!
//! With the local fidelity ([`flags::LOCAL`]), `LossGrad` leaves the fidelity out, and before it
//! (after the centroids) the local fidelity is added by separable convolutions,
//! one sample after another over one sample's scratch, `2·N·(C+1)` planes of `S` values (two
//! buffers of `N·(C+1)` planes): for each sample, [`Kernel::LocalProducts`] (`m·y`, `m·y·x'`,
//! the image centred on a class-weighted mean `x̄`), [`Kernel::LocalConv`] once per axis of
//! extent > 1, [`Kernel::LocalTerms`] (the local means, the per-pixel energy, reduced by
//! [`Kernel::Reduce`] into the sample's share, and the maps `U`, `W` of the gradient),
//! [`Kernel::LocalConv`] again and [`Kernel::LocalGrad`], which writes its gradient `∂F/∂y` for
//! `LossGrad` to add to the length's before the softmax backward; the samples' shares are reduced
//! into the fidelity total after `LossGrad`'s own sums. The per-sample kernels read their sample
//! from a [`SampleParams`] block bound with a dynamic offset ([`Binding::UniformDynamic`]).
//!
//! No loop in any invocation grows with the image size (a pixel is visited by a bounded number
//! of invocations, sums are multi-level trees; a convolution's window is at most
//! [`MAX_WINDOW`] taps); the loops over a pixel's classes and channels are bounded by the
//! backend's limits on `N` and `N·(C+1)`, which keeps every invocation below the
//! 65,535-iteration budget of Mesa's lavapipe, and every sum is taken in a fixed order.
#![no_std]

use Binding::{StorageReadWrite as Rw, Uniform as U, UniformDynamic as Ud};

/// Invocations per workgroup of every kernel except [`Kernel::Finalize`] (which runs one).
pub const WORKGROUP_SIZE: u32 = 256;

/// Pixels (elements) one invocation of [`Kernel::ClassSums`] ([`Kernel::Reduce`]) sums (strided by
/// the workgroup size, added as a fixed pairwise tree) before the workgroup's tree.
pub const PER_INVOCATION: u32 = 8;

/// Pixels (elements) one workgroup sums in [`Kernel::ClassSums`] ([`Kernel::Reduce`]).
pub const TILE: u32 = PER_INVOCATION * WORKGROUP_SIZE;

/// Bytes of workgroup memory a kernel needs at most (`shader/tree.wgsl`'s arrays, in the kernels
/// that sum over a workgroup); the device limit `max_compute_workgroup_storage_size` must reach it.
pub const WORKGROUP_STORAGE: u32 = (8 * WORKGROUP_SIZE + WORKGROUP_SIZE + 32) * 4;
// Within WebGPU's default limit, which every device offers.
const _: () = assert!(WORKGROUP_STORAGE <= 16_384);

/// Bits of [`Dims::flags`].
pub mod flags {
    /// The scores are logits (softmax applied); otherwise probabilities.
    pub const LOGITS: u32 = 1;
    /// A mask buffer is bound; otherwise every pixel is valid.
    pub const MASK: u32 = 2;
    /// The gradient is written.
    pub const GRAD: u32 = 4;
    /// The mean reduction (divide by the valid-pixel count); otherwise the sum.
    pub const MEAN: u32 = 8;
    /// The local fidelity: [`Kernel::LossGrad`](super::Kernel) leaves the fidelity out and the
    /// `Local*` kernels add it.
    pub const LOCAL: u32 = 16;
}

/// The longest window one invocation of [`Kernel::LocalConv`] sums: `min(2·⌈3σ⌉ + 1, extent)`
/// along any axis of the local fidelity must not exceed it (the backend refuses larger ones with
/// a typed error), which keeps the loop far below lavapipe's 65,535 iterations.
pub const MAX_WINDOW: u32 = 4096;

/// Values of [`Kernel::LossGrad`]'s `LENGTH_KIND` constant ([`LossGradSpec::constants`]).
pub mod length_kind {
    /// `Σ |d|`.
    pub const L1: u32 = 0;
    /// `Σ d²`.
    pub const L2: u32 = 1;
    /// `Σ (sqrt(Σ_a d_a² + δ²) − δ)`.
    pub const CHARBONNIER: u32 = 2;
}

/// Bits of the status word (the fourth word of the energy record).
pub mod status {
    /// A score is NaN or infinite.
    pub const SCORES_NONFINITE: u32 = 1;
    /// A probability is negative.
    pub const NEGATIVE_PROBABILITY: u32 = 2;
    /// An image value is NaN or infinite.
    pub const IMAGE_NONFINITE: u32 = 4;
    /// A mask value is neither 0 nor 1.
    pub const BAD_MASK: u32 = 8;
    /// The mean reduction over a mask with no valid pixel.
    pub const EMPTY_MASK: u32 = 16;
    /// The energy came out non-finite.
    pub const RESULT_NONFINITE: u32 = 32;
    /// An image value beyond `msloss_core::image_limit::<f32>(C)`.
    pub const IMAGE_RANGE: u32 = 64;
    /// A probability beyond `msloss_core::probability_limit::<f32>()`.
    pub const PROBABILITY_RANGE: u32 = 128;
    /// A gradient value came out non-finite (set where [`Kernel::LossGrad`](super::Kernel) and
    /// [`Kernel::LocalGrad`](super::Kernel) write it).
    pub const GRADIENT_NONFINITE: u32 = 256;
}

/// The uniform block every kernel but [`Kernel::Reduce`] reads (`struct Dims` in
/// `common.wgsl`; the tests check the two layouts agree).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Dims {
    /// `B`.
    pub batch: u32,
    /// `N`.
    pub classes: u32,
    /// `C`.
    pub channels: u32,
    /// `D`.
    pub depth: u32,
    /// `H`.
    pub height: u32,
    /// `W`.
    pub width: u32,
    /// `S = D·H·W`.
    pub spatial: u32,
    /// Tiles per row of [`Kernel::ClassSums`]: `ceil(S / TILE)`.
    pub tiles: u32,
    /// Rows of [`Kernel::ClassSums`]: `B·N·(C+1) + B`.
    pub rows: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Workgroups of [`Kernel::LossGrad`]: `ceil(B·S / WG)`, one pixel per invocation.
    pub loss_groups: u32,
    /// λ.
    pub lambda: f32,
    /// The fidelity weight `w`.
    pub weight: f32,
    /// Charbonnier's δ.
    pub delta: f32,
    /// ε_c.
    pub eps: f32,
}

/// Member names of [`Dims`] in order, as in the WGSL struct.
pub const DIMS_MEMBERS: [&str; 15] = [
    "batch",
    "classes",
    "channels",
    "depth",
    "height",
    "width",
    "spatial",
    "tiles",
    "rows",
    "flags",
    "loss_groups",
    "lambda",
    "weight",
    "delta",
    "eps",
];

impl Dims {
    /// The block as the bytes a uniform buffer holds (native-endian 32-bit words; WGSL hosts
    /// are little-endian).
    pub fn to_bytes(&self) -> [u8; 60] {
        let words: [u32; 15] = [
            self.batch,
            self.classes,
            self.channels,
            self.depth,
            self.height,
            self.width,
            self.spatial,
            self.tiles,
            self.rows,
            self.flags,
            self.loss_groups,
            self.lambda.to_bits(),
            self.weight.to_bits(),
            self.delta.to_bits(),
            self.eps.to_bits(),
        ];
        words_to_bytes(words)
    }
}

/// The uniform block of one [`Kernel::Reduce`] level (`struct ReduceParams` in `reduce.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReduceParams {
    /// Rows summed independently.
    pub rows: u32,
    /// Elements per input row.
    pub len_in: u32,
    /// Elements per output row: `ceil(len_in / TILE)`.
    pub len_out: u32,
    /// First input element.
    pub src_offset: u32,
    /// First output element.
    pub dst_offset: u32,
}

/// The uniform block of one [`Kernel::LocalConv`] dispatch (`struct ConvParams` in
/// `local_conv.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConvParams {
    /// Elements convolved (whole planes of `spatial` pixels).
    pub len: u32,
    /// Pixels per plane, `S`.
    pub spatial: u32,
    /// The axis' extent.
    pub extent: u32,
    /// The axis' stride within a plane.
    pub stride: u32,
    /// The taps used: `min(⌈3σ⌉, extent − 1)`.
    pub radius: u32,
    /// Index of the tap `k(0)` in the taps buffer (the coverage lines come first).
    pub taps_offset: u32,
}

/// Member names of [`ConvParams`] in order (the WGSL struct adds two padding words).
pub const CONV_PARAMS_MEMBERS: [&str; 6] = ["len", "spatial", "extent", "stride", "radius", "taps_offset"];

impl ConvParams {
    /// The block as uniform-buffer bytes (padded to 32).
    pub fn to_bytes(&self) -> [u8; 32] {
        words_to_bytes([self.len, self.spatial, self.extent, self.stride, self.radius, self.taps_offset, 0, 0])
    }
}

/// The per-sample block of the local fidelity's per-pixel kernels (`struct SampleParams` in
/// `local_sample.wgsl`), one per sample in a uniform buffer, each at a multiple of the device's
/// `min_uniform_buffer_offset_alignment`, chosen per dispatch by a dynamic offset.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleParams {
    /// The sample `b` the dispatch works on.
    pub index: u32,
}

/// Member names of [`SampleParams`] in order (the WGSL struct adds three padding words).
pub const SAMPLE_PARAMS_MEMBERS: [&str; 1] = ["index"];

impl SampleParams {
    /// The block as uniform-buffer bytes (padded to 16).
    pub fn to_bytes(&self) -> [u8; 16] {
        words_to_bytes([self.index, 0, 0, 0])
    }
}

/// Member names of [`ReduceParams`] in order (the WGSL struct adds three padding words).
pub const REDUCE_PARAMS_MEMBERS: [&str; 5] = ["rows", "len_in", "len_out", "src_offset", "dst_offset"];

impl ReduceParams {
    /// The block as uniform-buffer bytes (padded to 32).
    pub fn to_bytes(&self) -> [u8; 32] {
        words_to_bytes([self.rows, self.len_in, self.len_out, self.src_offset, self.dst_offset, 0, 0, 0])
    }
}

fn words_to_bytes<const W: usize, const B: usize>(words: [u32; W]) -> [u8; B] {
    let mut out = [0u8; B];
    for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// How a kernel binds one resource (all in bind group 0, bindings numbered from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `var<uniform>`.
    Uniform,
    /// `var<uniform>` bound with a dynamic offset, given with each dispatch (the local
    /// fidelity's [`SampleParams`]).
    UniformDynamic,
    /// `var<storage, read>` (no current kernel: see [`Kernel::bindings`]).
    StorageRead,
    /// `var<storage, read_write>`.
    StorageReadWrite,
}

/// The shared code prepended to every kernel.
pub const COMMON: &str = include_str!("../shader/common.wgsl");

/// [`Kernel::ClassSums`]'s source.
pub const CLASS_SUMS: &str = concat!(
    include_str!("../shader/common.wgsl"),
    include_str!("../shader/tree.wgsl"),
    include_str!("../shader/softmax.wgsl"),
    include_str!("../shader/class_pixels.wgsl"),
    include_str!("../shader/class_sums.wgsl")
);
/// [`Kernel::ClassSumsStrided`]'s source.
pub const CLASS_SUMS_STRIDED: &str = concat!(
    include_str!("../shader/common.wgsl"),
    include_str!("../shader/softmax.wgsl"),
    include_str!("../shader/class_pixels.wgsl"),
    include_str!("../shader/class_sums_strided.wgsl")
);
/// [`Kernel::Reduce`]'s source.
pub const REDUCE: &str = concat!(
    include_str!("../shader/common.wgsl"),
    include_str!("../shader/tree.wgsl"),
    include_str!("../shader/reduce.wgsl")
);
/// [`Kernel::Centroids`]'s source.
pub const CENTROIDS: &str = concat!(include_str!("../shader/common.wgsl"), include_str!("../shader/centroids.wgsl"));
/// [`Kernel::LossGrad`]'s source.
pub const LOSS_GRAD: &str = concat!(
    include_str!("../shader/common.wgsl"),
    include_str!("../shader/tree.wgsl"),
    include_str!("../shader/softmax.wgsl"),
    include_str!("../shader/loss_grad.wgsl")
);
/// [`Kernel::LocalProducts`]'s source.
pub const LOCAL_PRODUCTS: &str = concat!(
    include_str!("../shader/common.wgsl"),
    include_str!("../shader/local_sample.wgsl"),
    include_str!("../shader/local_centre.wgsl"),
    include_str!("../shader/softmax.wgsl"),
    include_str!("../shader/local_products.wgsl")
);
/// [`Kernel::LocalConv`]'s source.
pub const LOCAL_CONV: &str = concat!(include_str!("../shader/common.wgsl"), include_str!("../shader/local_conv.wgsl"));
/// [`Kernel::LocalTerms`]'s source.
pub const LOCAL_TERMS: &str = concat!(
    include_str!("../shader/common.wgsl"),
    include_str!("../shader/local_sample.wgsl"),
    include_str!("../shader/local_centre.wgsl"),
    include_str!("../shader/local_coverage.wgsl"),
    include_str!("../shader/softmax.wgsl"),
    include_str!("../shader/local_terms.wgsl")
);
/// [`Kernel::LocalGrad`]'s source.
pub const LOCAL_GRAD: &str = concat!(
    include_str!("../shader/common.wgsl"),
    include_str!("../shader/local_sample.wgsl"),
    include_str!("../shader/local_centre.wgsl"),
    include_str!("../shader/local_coverage.wgsl"),
    include_str!("../shader/local_grad.wgsl")
);
/// [`Kernel::Finalize`]'s source.
pub const FINALIZE: &str = concat!(include_str!("../shader/common.wgsl"), include_str!("../shader/finalize.wgsl"));

/// How [`Kernel::LossGrad`] measures the length term ([`LossGradSpec::length`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Length {
    /// `Σ |d|`.
    L1,
    /// `Σ d²`.
    L2,
    /// `Σ (sqrt(Σ_a d_a² + δ²) − δ)`.
    Charbonnier,
}

/// The values of [`Kernel::LossGrad`]'s pipeline-overridable constants. Each combination is its
/// own pipeline, so that the device's compiler keeps only the code that combination runs (a CPU
/// emulation such as lavapipe runs both sides of every branch, masked, otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LossGradSpec {
    /// The length term's kind (`LENGTH_KIND`).
    pub length: Length,
    /// Whether the depth axis has neighbours, `D > 1` (`VOLUME`).
    pub volume: bool,
}

impl LossGradSpec {
    /// The pipeline constants, by name.
    pub fn constants(self) -> [(&'static str, f64); 2] {
        let length = match self.length {
            Length::L1 => length_kind::L1,
            Length::L2 => length_kind::L2,
            Length::Charbonnier => length_kind::CHARBONNIER,
        };
        [("LENGTH_KIND", f64::from(length)), ("VOLUME", f64::from(u8::from(self.volume)))]
    }
}

/// Every compute kernel of the backend, with the values of its pipeline-overridable constants.
/// The backend creates a pipeline per kernel value on first use and caches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Input checks and the first level of the class sums, one tile per workgroup, summed with
    /// workgroup trees (the default on GPUs).
    ClassSums,
    /// The same with no barrier: each invocation adds its pixels of every `G`-th tile into
    /// partials of its own (the default on devices that emulate a GPU on CPU cores).
    ClassSumsStrided,
    /// One level of a row-sum reduction.
    Reduce,
    /// Centroids, ε-corrections, reduction scale.
    Centroids,
    /// Energy terms and the gradient (`∂E/∂z` for logits, the softmax backward fused in),
    /// specialised by its pipeline constants.
    LossGrad(LossGradSpec),
    /// The energy record.
    Finalize,
    /// The local fidelity's maps `m·y` and `m·y·x'` (one sample per dispatch).
    LocalProducts,
    /// One axis of the local fidelity's Gaussian.
    LocalConv,
    /// The local fidelity's per-pixel energy and gradient maps (one sample per dispatch).
    LocalTerms,
    /// The local fidelity's gradient `∂F/∂y`, for [`Kernel::LossGrad`] to add (one sample per dispatch).
    LocalGrad,
}

impl Kernel {
    /// Every kernel, `loss_grad` in one of its specialisations (they share one source).
    pub const ALL: [Kernel; 10] = [
        Kernel::ClassSums,
        Kernel::ClassSumsStrided,
        Kernel::Reduce,
        Kernel::Centroids,
        Kernel::LossGrad(LossGradSpec { length: Length::L1, volume: false }),
        Kernel::Finalize,
        Kernel::LocalProducts,
        Kernel::LocalConv,
        Kernel::LocalTerms,
        Kernel::LocalGrad,
    ];

    /// The most bindings of any kernel.
    pub const MAX_BINDINGS: usize = 10;

    /// A label for pipelines and errors (the file name without `.wgsl`).
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::ClassSums => "class_sums",
            Kernel::ClassSumsStrided => "class_sums_strided",
            Kernel::Reduce => "reduce",
            Kernel::Centroids => "centroids",
            Kernel::LossGrad(_) => "loss_grad",
            Kernel::Finalize => "finalize",
            Kernel::LocalProducts => "local_products",
            Kernel::LocalConv => "local_conv",
            Kernel::LocalTerms => "local_terms",
            Kernel::LocalGrad => "local_grad",
        }
    }

    /// The full WGSL source (shared code included).
    pub const fn source(self) -> &'static str {
        match self {
            Kernel::ClassSums => CLASS_SUMS,
            Kernel::ClassSumsStrided => CLASS_SUMS_STRIDED,
            Kernel::Reduce => REDUCE,
            Kernel::Centroids => CENTROIDS,
            Kernel::LossGrad(_) => LOSS_GRAD,
            Kernel::Finalize => FINALIZE,
            Kernel::LocalProducts => LOCAL_PRODUCTS,
            Kernel::LocalConv => LOCAL_CONV,
            Kernel::LocalTerms => LOCAL_TERMS,
            Kernel::LocalGrad => LOCAL_GRAD,
        }
    }

    /// The entry point's name.
    pub const fn entry_point(self) -> &'static str {
        "main"
    }

    /// The workgroup size along x (y and z are 1).
    pub const fn workgroup_size(self) -> u32 {
        match self {
            Kernel::Finalize => 1,
            _ => WORKGROUP_SIZE,
        }
    }

    /// The bindings of group 0, by binding number.
    ///
    /// Every storage binding is `read_write`, those a kernel only reads included: a caller's
    /// buffers may hold several of the tensors (an input and the gradient in one page of a
    /// framework's allocator), and wgpu refuses a buffer bound read-only and read-write in one
    /// dispatch, while it accepts one bound read-write several times. The kernels never write
    /// what they only read, and the backend refuses overlapping caller ranges.
    pub const fn bindings(self) -> &'static [Binding] {
        match self {
            // dims, scores, image, mask, partials, status
            Kernel::ClassSums | Kernel::ClassSumsStrided => &[U, Rw, Rw, Rw, Rw, Rw],
            // params, src, dst
            Kernel::Reduce => &[U, Rw, Rw],
            // dims, sums, totals, centroids, stats
            Kernel::Centroids => &[U, Rw, Rw, Rw, Rw],
            // dims, scores, image, mask, centroids, stats, grad, partials, status
            Kernel::LossGrad(_) => &[U, Rw, Rw, Rw, Rw, Rw, Rw, Rw, Rw],
            // dims, totals, status, energy
            Kernel::Finalize => &[U, Rw, Rw, Rw],
            // dims, scores, image, mask, sums, planes, sample
            Kernel::LocalProducts => &[U, Rw, Rw, Rw, Rw, Rw, Ud],
            // params, taps, src, dst
            Kernel::LocalConv => &[U, Rw, Rw, Rw],
            // dims, scores, image, mask, sums, taps, planes, energy, sample
            Kernel::LocalTerms => &[U, Rw, Rw, Rw, Rw, Rw, Rw, Rw, Ud],
            // dims, image, mask, sums, taps, planes, stats, grad, status, sample
            Kernel::LocalGrad => &[U, Rw, Rw, Rw, Rw, Rw, Rw, Rw, Rw, Ud],
        }
    }

    /// How many storage buffers the kernel binds (the device limit
    /// `max_storage_buffers_per_shader_stage` must reach the largest).
    pub const fn storage_buffers(self) -> u32 {
        let b = self.bindings();
        let mut i = 0;
        let mut n = 0;
        while i < b.len() {
            if !matches!(b[i], Binding::Uniform | Binding::UniformDynamic) {
                n += 1;
            }
            i += 1;
        }
        n
    }
}
