//! A plan: the scratch buffers, uniforms and reduction bind groups of one shape, [`Io`] and
//! parameter set, owned by the caller; [`Plan::encode`] binds the caller's ranges for one call
//! and records every dispatch into the caller's encoder.

use std::num::NonZeroU64;

use msloss_core::{Energy, Error, Fidelity, Gaussian, LengthKind, Params, Reduction, Shape};
use msloss_shaders::{
    ConvParams, Dims, Kernel, Length, LossGradSpec, MAX_WINDOW, ReduceParams, SampleParams, TILE, WORKGROUP_SIZE,
    flags, status,
};
use wgpu::util::DeviceExt;

use crate::buffers::{self, BufferRange, DeviceBuffers, ENERGY_BYTES, Io, Needs, ScoresKind};
use crate::context::{ClassSumsPath, MAX_CHANNELS, MAX_CLASS_ROWS, MAX_CLASSES, Pipeline, scoped};
use crate::{WgpuBackend, WgpuError};

/// Decodes the energy record the device wrote (copy it to a mappable buffer and map it). A
/// record whose inputs failed the device's checks (or a mean over no valid pixel, or a
/// non-finite gradient) holds NaN values, so that a reader who skips this function sees no plausible number.
///
/// # Errors
/// [`WgpuError::EnergyRecord`] for a record of the wrong length; [`Error::EmptyMask`] and
/// [`Error::NonFiniteResult`] as the host path reports them; [`WgpuError::InvalidDeviceInput`]
/// naming every invalid input the device found (non-finite scores or image, negative
/// probabilities, image values or probabilities beyond f32's limits, mask values other than 0
/// and 1).
pub fn decode_energy(bytes: &[u8]) -> Result<Energy<f32>, WgpuError> {
    if bytes.len() != ENERGY_BYTES as usize {
        return Err(WgpuError::EnergyRecord { expected: ENERGY_BYTES as usize, got: bytes.len() });
    }
    let word = |i: usize| u32::from_ne_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    let (fidelity, length, total) = (f32::from_bits(word(0)), f32::from_bits(word(1)), f32::from_bits(word(2)));
    let st = word(3);
    let problems: Vec<&str> = [
        (status::SCORES_NONFINITE, "scores contain NaN or infinity"),
        (status::NEGATIVE_PROBABILITY, "a probability is negative"),
        (status::IMAGE_NONFINITE, "the image contains NaN or infinity"),
        (status::BAD_MASK, "a mask value is neither 0 nor 1"),
        (status::IMAGE_RANGE, "an image value is beyond the largest whose squared distances fit f32"),
        (status::PROBABILITY_RANGE, "a probability is beyond the largest whose squared differences fit f32"),
    ]
    .iter()
    .filter(|(bit, _)| st & bit != 0)
    .map(|(_, what)| *what)
    .collect();
    if !problems.is_empty() {
        return Err(WgpuError::InvalidDeviceInput(problems.join("; ")));
    }
    if st & status::EMPTY_MASK != 0 {
        return Err(Error::EmptyMask.into());
    }
    // The energy first, as the reference reports it; a non-finite gradient also NaNs the record.
    if st & status::RESULT_NONFINITE != 0 {
        return Err(Error::NonFiniteResult { what: "energy", value: f64::from(total) }.into());
    }
    if st & status::GRADIENT_NONFINITE != 0 {
        return Err(Error::NonFiniteResult { what: "gradient", value: f64::NAN }.into());
    }
    if !total.is_finite() {
        return Err(Error::NonFiniteResult { what: "energy", value: f64::from(total) }.into());
    }
    Ok(Energy { fidelity, length, total })
}

/// The local fidelity's host-side table: the coverage lines `S_a(i) = Σ_j k(|i − j|)` of the
/// D, H and W axes (1 along an axis of extent 1), then the taps `k(0..=radius)`, as `f32` from
/// the same [`Gaussian`] the CPU uses; and the taps' radius, `min(⌈3σ⌉, largest extent − 1)`.
///
/// # Errors
/// [`WgpuError::ExtentTooLarge`] when a window `min(2⌈3σ⌉ + 1, extent)` along an axis of extent
/// > 1 passes [`MAX_WINDOW`] (one invocation of the convolution loops over it).
fn local_table(shape: Shape, sigma: f64) -> Result<(Vec<f32>, usize), WgpuError> {
    let gaussian = Gaussian::new(sigma);
    let dims = shape.spatial_dims();
    let largest = dims.into_iter().max().unwrap_or(1);
    let radius = gaussian.radius().min(largest - 1);
    let mut table = Vec::with_capacity(dims.iter().sum::<usize>() + radius + 1);
    for n in dims {
        if n > 1 {
            let window = (2 * radius + 1).min(n);
            if window > MAX_WINDOW as usize {
                return Err(WgpuError::ExtentTooLarge {
                    dim: "the local fidelity's window min(2⌈3σ⌉ + 1, extent)",
                    got: window,
                    max: MAX_WINDOW as usize,
                });
            }
        }
        table.extend((0..n).map(|i| gaussian.edge_weight(n, i) as f32));
    }
    table.extend((0..=radius).map(|d| gaussian.tap(d) as f32));
    Ok((table, radius))
}

/// Whether `params` asks for the local fidelity.
fn is_local(params: &Params) -> bool {
    matches!(params.fidelity, Fidelity::Local { .. })
}

/// u32 indices in the kernels stay below this (room for one workgroup's overshoot).
const INDEX_MAX: u64 = u32::MAX as u64 - 2 * TILE as u64;

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// The levels of a multi-level row sum: `(len_in, len_out)` per level, at least one.
fn levels(len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut len = len;
    loop {
        let next = ceil_div(len, TILE as u64);
        out.push((len, next));
        if next <= 1 {
            return out;
        }
        len = next;
    }
}

/// Loop iterations `class_sums_strided` spends on one tile (`class_pixels.wgsl`'s count and the
/// tile loop's own), for [`strided_groups`]; counted as if no loop were unrolled, an upper bound
/// whatever the device's compiler unrolls.
fn strided_tile_iterations(n: u64, c: u64) -> u64 {
    9 + 8 * c + 17 * n + 9 * n * (c + 1)
}

/// The iterations a `class_sums_strided` invocation may spend, with room under lavapipe's 65,535.
const STRIDED_BUDGET: u64 = 60_000;

/// Workgroups a sample at least gets on the strided path (when it has that many tiles), so that
/// a CPU device's threads all have work.
const STRIDED_MIN_GROUPS: u64 = 8;

/// Workgroups a sample of `tiles` tiles gets on the strided path: as few as the loop budget
/// allows (each takes at most `STRIDED_BUDGET / strided_tile_iterations` tiles), at least
/// `STRIDED_MIN_GROUPS`, at most one a tile (every workgroup takes one, so that every partial is
/// written).
fn strided_groups(tiles: u64, n: u64, c: u64) -> u64 {
    let per_group = (STRIDED_BUDGET / strided_tile_iterations(n, c)).max(1);
    tiles.div_ceil(per_group).max(STRIDED_MIN_GROUPS).min(tiles)
}

/// `loss_grad` specialised for an evaluation's length kind and depth.
fn loss_kernel(params: &Params, shape: Shape) -> Kernel {
    let length = match params.length {
        LengthKind::L1 => Length::L1,
        LengthKind::L2 => Length::L2,
        LengthKind::Charbonnier => Length::Charbonnier,
    };
    Kernel::LossGrad(LossGradSpec { length, volume: shape.depth() > 1 })
}

/// The sizes of one evaluation, checked against the kernels' index range.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    b: u64,
    n: u64,
    c: u64,
    s: u64,
    /// The class-sum kernel.
    class_kernel: Kernel,
    /// Its workgroups a sample.
    class_groups: u64,
    /// Partials a class-sum row (`dims.tiles`): one a tile on the workgroup path, one an
    /// invocation on the strided path.
    tiles: u64,
    rows: u64,
    class_rows: u64,
    loss_groups: u64,
}

impl Sizes {
    /// Elements of one of the local fidelity's two scratch buffers: one sample's `N·(C+1)`
    /// planes, whatever `B` (the per-sample kernels reuse them sample after sample).
    fn local_len(&self) -> u64 {
        self.n * (self.c + 1) * self.s
    }

    fn new(shape: Shape, path: ClassSumsPath) -> Result<Self, WgpuError> {
        if shape.classes() > MAX_CLASSES {
            return Err(WgpuError::ExtentTooLarge { dim: "N (classes)", got: shape.classes(), max: MAX_CLASSES });
        }
        if shape.channels() > MAX_CHANNELS {
            return Err(WgpuError::ExtentTooLarge { dim: "C (channels)", got: shape.channels(), max: MAX_CHANNELS });
        }
        let class_rows_per_pixel = shape.classes() * (shape.channels() + 1);
        if class_rows_per_pixel > MAX_CLASS_ROWS {
            let dim = "N·(C+1) (a pixel's class rows)";
            return Err(WgpuError::ExtentTooLarge { dim, got: class_rows_per_pixel, max: MAX_CLASS_ROWS });
        }
        let (b, n, c, s) =
            (shape.batch() as u64, shape.classes() as u64, shape.channels() as u64, shape.spatial() as u64);
        // Workgroups a sample and partials a row.
        let pixel_tiles = ceil_div(s, TILE as u64);
        let (class_groups, tiles) = match path {
            ClassSumsPath::Workgroup => (pixel_tiles, pixel_tiles),
            ClassSumsPath::Strided => {
                let groups = strided_groups(pixel_tiles, n, c);
                (groups, groups * WORKGROUP_SIZE as u64)
            }
        };
        let class_kernel = path.kernel();
        let class_rows = b * n * (c + 1);
        let rows = class_rows + b;
        // loss_grad: one pixel per invocation.
        let loss_groups = ceil_div(b * s, WORKGROUP_SIZE as u64);
        let sizes = Sizes { b, n, c, s, class_kernel, class_groups, tiles, rows, class_rows, loss_groups };
        for (what, count) in [
            ("the scores (B·N·D·H·W)", b * n * s),
            ("the image (B·C·D·H·W)", b * c * s),
            ("the centroids (B·N·C)", b * n * c),
            ("the class-sum partials (B·(N·(C+1)+1) rows)", rows * tiles),
        ] {
            if count > INDEX_MAX {
                return Err(WgpuError::IndexOverflow { what, count, max: INDEX_MAX });
            }
        }
        Ok(sizes)
    }

    /// [`Sizes::new`], and the local fidelity's scratch against the kernels' index range.
    fn with_local(shape: Shape, path: ClassSumsPath, local: bool) -> Result<Self, WgpuError> {
        let sizes = Self::new(shape, path)?;
        let count = sizes.local_len();
        if local && count > INDEX_MAX {
            let what = "the local fidelity's scratch (N·(C+1)·D·H·W)";
            return Err(WgpuError::IndexOverflow { what, count, max: INDEX_MAX });
        }
        Ok(sizes)
    }
}

/// Buffer sizes and reduction levels of one shape, checked against the device's limits.
#[derive(Debug, Clone)]
struct Layout {
    sz: Sizes,
    scores_bytes: u64,
    image_bytes: u64,
    mask_bytes: u64,
    scratch_len: u64,
    class_levels: Vec<(u64, u64)>,
    count_levels: Vec<(u64, u64)>,
    loss_levels: Vec<(u64, u64)>,
    /// The local fidelity's energy sum of one sample (`N·S` values), when it is asked for; the
    /// `B` samples' shares are then summed with `count_levels` (`B` values too).
    local_levels: Option<Vec<(u64, u64)>>,
    /// Bytes between two samples' [`SampleParams`] blocks: 16 rounded up to the device's
    /// `min_uniform_buffer_offset_alignment` (a dynamic offset must be a multiple of it).
    sample_stride: u64,
}

/// Bytes between two samples' [`SampleParams`] blocks on a device with `limits`.
fn sample_stride(limits: &wgpu::Limits) -> u64 {
    let align = u64::from(limits.min_uniform_buffer_offset_alignment).max(1);
    (SampleParams::default().to_bytes().len() as u64).div_ceil(align) * align
}

impl WgpuBackend {
    /// The layout of `shape` on this device, with the local fidelity's scratch if `local`.
    ///
    /// # Errors
    /// [`WgpuError::ExtentTooLarge`], [`WgpuError::IndexOverflow`],
    /// [`WgpuError::BufferTooLarge`] or [`WgpuError::GridTooLarge`].
    fn layout(&self, shape: Shape, local: bool) -> Result<Layout, WgpuError> {
        let sz = Sizes::with_local(shape, self.class_sums, local)?;
        let limits = &self.inner.limits;
        let f = 4u64;
        let class_levels = levels(sz.tiles);
        let count_levels = levels(sz.b);
        let loss_levels = levels(sz.loss_groups);
        let local_levels = local.then(|| levels(sz.n * sz.s));
        let stride = sample_stride(limits);
        let no_levels = Vec::new();
        let scratch_len = [
            (sz.rows, &class_levels),
            (1, &count_levels),
            (2, &loss_levels),
            (1, local_levels.as_ref().unwrap_or(&no_levels)),
        ]
        .iter()
        .flat_map(|(rows, lv)| lv.iter().map(move |(_, out)| rows * out))
        .max()
        .unwrap_or(1)
        .max(1);
        let lay = Layout {
            sz,
            scores_bytes: sz.b * sz.n * sz.s * f,
            image_bytes: sz.b * sz.c * sz.s * f,
            mask_bytes: sz.b * sz.s * f,
            scratch_len,
            class_levels,
            count_levels,
            loss_levels,
            local_levels,
            sample_stride: stride,
        };
        if local {
            // One block per sample, chosen by a dynamic offset, which is a u32.
            let max = u64::from(u32::MAX) / stride;
            if sz.b > max {
                let what = "the local fidelity's per-sample uniform blocks (B)";
                return Err(WgpuError::IndexOverflow { what, count: sz.b, max });
            }
            let bytes = sz.b * stride;
            if bytes > limits.max_buffer_size {
                let (what, limit_name, limit) =
                    ("the local fidelity's per-sample uniform blocks", "max_buffer_size", limits.max_buffer_size);
                return Err(WgpuError::BufferTooLarge { what, bytes, limit_name, limit });
            }
        }
        let binding_limit = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        for (what, bytes) in [
            ("the scores", lay.scores_bytes),
            ("the image", lay.image_bytes),
            ("the mask", lay.mask_bytes),
            ("the class-sum partials", sz.rows * sz.tiles * f),
            ("the reduction scratch", scratch_len * f),
            ("the loss partials", 2 * sz.loss_groups * f),
            ("the local fidelity's scratch", if local { sz.local_len() * f } else { 0 }),
        ] {
            if bytes > binding_limit {
                let limit_name = if limits.max_storage_buffer_binding_size <= limits.max_buffer_size {
                    "max_storage_buffer_binding_size"
                } else {
                    "max_buffer_size"
                };
                return Err(WgpuError::BufferTooLarge { what, bytes, limit_name, limit: binding_limit });
            }
        }
        let md = u64::from(limits.max_compute_workgroups_per_dimension);
        for (kernel, groups) in [
            (sz.class_kernel, sz.b * sz.class_groups),
            // Every specialisation of loss_grad has this grid.
            (Kernel::LossGrad(LossGradSpec { length: Length::L1, volume: false }), sz.loss_groups),
            (Kernel::LocalConv, if local { ceil_div(sz.local_len(), WORKGROUP_SIZE as u64) } else { 0 }),
        ] {
            if groups > md * md {
                return Err(WgpuError::GridTooLarge {
                    kernel: kernel.name(),
                    groups,
                    max: limits.max_compute_workgroups_per_dimension,
                });
            }
        }
        Ok(lay)
    }

    /// The most samples of `shape` one dispatch sequence can hold on this device with `params`
    /// (the host path splits larger batches), or the error that even one sample meets.
    pub(crate) fn max_batch(&self, shape: Shape, params: &Params) -> Result<usize, WgpuError> {
        let local = is_local(params);
        if self.layout(shape, local).is_ok() {
            return Ok(shape.batch());
        }
        self.layout(shape.with_batch(1)?, local)?;
        // No size shrinks as B grows (the local fidelity's scratch stays one sample's): the
        // largest that fits, by bisection (fits(lo), !fits(hi)).
        let (mut lo, mut hi) = (1, shape.batch());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.layout(shape.with_batch(mid)?, local).is_ok() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

/// Global-memory bytes one dispatch reads and writes ([`Plan::traffic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// The kernel's name.
    pub kernel: &'static str,
    /// Bytes read.
    pub read: u64,
    /// Bytes written.
    pub written: u64,
}

impl Traffic {
    /// The floor of an evaluation with the gradient wrt logits, in bytes: the logits and the
    /// image read twice (once for the centroids, once for the energy and gradient) and the
    /// gradient written once, `(3N + 2C)·4` bytes per pixel (the mask adds 2 words a pixel).
    pub fn floor(shape: Shape, mask: bool) -> u64 {
        let (n, c) = (shape.classes() as u64, shape.channels() as u64);
        let px = (shape.batch() * shape.spatial()) as u64;
        4 * px * (3 * n + 2 * c + if mask { 2 } else { 0 })
    }
}

/// One dispatch whose bind group is built with the plan (it binds only the plan's buffers).
/// Cloned to repeat it (wgpu's handles are shared references): the local fidelity's
/// convolutions run once per sample over the same scratch.
#[derive(Debug, Clone)]
struct Fixed {
    /// [`Kernel::Reduce`] or [`Kernel::LocalConv`].
    kernel: Kernel,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
    /// Elements the level reads (`rows · len_in`) and writes (`rows · len_out`).
    elems: (u64, u64),
}

/// The dispatches of one evaluation, in order. The kernels that bind a caller's range get their
/// bind group per call ([`Plan::encode`]), one per kernel; the reductions between them are fixed.
#[derive(Debug)]
enum Step {
    /// A kernel (and its pipeline) that binds the caller's ranges, over this grid; for the
    /// local fidelity's per-sample kernels, the dynamic offset of the sample's [`SampleParams`]
    /// block.
    Caller(Kernel, Pipeline, (u32, u32), Option<u32>),
    /// A reduction level over the plan's own buffers.
    Fixed(Fixed),
}

/// Everything one evaluation on the device needs beyond the caller's buffers: scratch (the
/// class-sum partials, O(B·N·C) sums and centroids, the energy partials; no probability
/// buffer: the kernels recompute the softmax from the logits; with the local fidelity two
/// buffers of one sample's `N·(C+1)` planes, reused sample after sample, its taps and `B`
/// per-sample blocks and energies), the uniform block, and the reduction levels' and
/// convolutions' bind groups. Built once by [`WgpuBackend::plan`] for a shape, an [`Io`]
/// and parameters; owned by the caller, which records it with [`Plan::encode`] on any
/// [`DeviceBuffers`] of that shape, as often as it likes.
///
/// The plan's scratch is reused by every call: the queue orders calls, so encoding one plan
/// several times in one submission or in successive ones is fine; two threads recording one
/// plan into encoders submitted concurrently to different queues is not (clone nothing; build
/// one plan per concurrent stream).
#[derive(Debug)]
pub struct Plan {
    backend: WgpuBackend,
    shape: Shape,
    io: Io,
    params: Params,
    needs: Needs,
    sz: Sizes,
    dims_buffer: wgpu::Buffer,
    status: wgpu::Buffer,
    partials: wgpu::Buffer,
    sums: wgpu::Buffer,
    totals: wgpu::Buffer,
    centroids: wgpu::Buffer,
    stats: wgpu::Buffer,
    loss_partials: wgpu::Buffer,
    local: Option<LocalScratch>,
    steps: Vec<Step>,
    /// The bytes of the buffers the plan made ([`Plan::scratch_bytes`]).
    scratch_bytes: u64,
}

/// The local fidelity's scratch: two buffers of one sample's `N·(C+1)` planes between which the
/// convolutions alternate (every sample's dispatches reuse them in turn: wgpu puts a barrier
/// between dispatches of one pass that use a buffer read-write, so a sample's reads finish
/// before the next sample's writes), the coverage lines and taps ([`local_table`]), the
/// per-sample blocks and the per-sample energies.
#[derive(Debug)]
struct LocalScratch {
    planes: wgpu::Buffer,
    other: wgpu::Buffer,
    table: wgpu::Buffer,
    /// `B` [`SampleParams`] blocks, `stride` bytes apart: sample `b`'s at `b·stride`, picked by
    /// the per-sample kernels' dynamic offset. A uniform array with dynamic offsets is core
    /// WebGPU, so every wgpu backend has it; push constants (wgpu's immediates) are a native-only
    /// feature, and a bind group per sample would make `B` times the per-call bind groups.
    samples: wgpu::Buffer,
    stride: u64,
    /// The `B` samples' shares of the local energy, summed into the fidelity total at the end.
    energies: wgpu::Buffer,
    /// An odd number of axes is convolved: the products go into, and the gradient's maps come
    /// back in, `other` (the first convolutions always end in `planes`).
    odd: bool,
}

impl LocalScratch {
    /// Where `local_products` writes and `local_grad` reads.
    fn edge(&self) -> &wgpu::Buffer {
        if self.odd { &self.other } else { &self.planes }
    }
}

impl WgpuBackend {
    /// Builds a [`Plan`] for `shape` with `params`, reading and writing what `io` says: checks
    /// the device's limits, creates the scratch buffers, the uniform block and the reductions'
    /// bind groups (under error scopes). No caller buffer is needed yet.
    ///
    /// # Errors
    /// [`Error::BadParam`] (as [`WgpuError::Core`]); [`WgpuError::ExtentTooLarge`],
    /// [`WgpuError::IndexOverflow`], [`WgpuError::BufferTooLarge`],
    /// [`WgpuError::GridTooLarge`] for shapes beyond the kernels or the device (ExtentTooLarge also
    /// for a local fidelity's window past [`MAX_WINDOW`]); a scope error
    /// ([`WgpuError::Validation`], [`WgpuError::OutOfMemory`]) while creating resources;
    /// [`WgpuError::DeviceLost`].
    pub fn plan(&self, shape: Shape, params: &Params, io: Io) -> Result<Plan, WgpuError> {
        params.validate_for(shape)?;
        let table = match params.fidelity {
            Fidelity::Local { sigma } => Some(local_table(shape, sigma)?),
            Fidelity::Global => None,
        };
        self.check_health()?;
        let lay = self.layout(shape, table.is_some())?;
        let sz = lay.sz;
        let device = &self.inner.device;
        scoped(device, "building a plan", || -> Result<Plan, WgpuError> {
            // The bytes of every buffer the plan makes, for Plan::scratch_bytes.
            let made = std::cell::Cell::new(0u64);
            let storage = |label: &str, elems: u64, extra: wgpu::BufferUsages| {
                made.set(made.get() + elems.max(1) * 4);
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: elems.max(1) * 4,
                    usage: wgpu::BufferUsages::STORAGE | extra,
                    mapped_at_creation: false,
                })
            };
            let none = wgpu::BufferUsages::empty();
            let partials = storage("msloss class partials", sz.rows * sz.tiles, none);
            let sums = storage("msloss class sums", sz.rows, none);
            let totals = storage("msloss totals", 3, none);
            let centroids = storage("msloss centroids", sz.b * sz.n * sz.c, wgpu::BufferUsages::COPY_SRC);
            let stats = storage("msloss stats", sz.b * sz.n + 1, none);
            let loss_partials = storage("msloss loss partials", 2 * sz.loss_groups, none);
            let ping = storage("msloss reduce ping", lay.scratch_len, none);
            let pong = storage("msloss reduce pong", lay.scratch_len, none);
            let status_buf = storage("msloss status", 1, wgpu::BufferUsages::COPY_DST);
            let dims = dims_for(shape, &sz, params, io);
            let dims_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("msloss dims"),
                contents: &dims.to_bytes(),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });

            // The axes the local fidelity convolves: (extent, stride) of D, H, W, extent > 1.
            let axes: Vec<(u64, u64)> =
                [(shape.depth(), shape.height() * shape.width()), (shape.height(), shape.width()), (shape.width(), 1)]
                    .into_iter()
                    .filter(|(n, _)| *n > 1)
                    .map(|(n, st)| (n as u64, st as u64))
                    .collect();
            let local = table.as_ref().map(|(t, _)| {
                let bytes: Vec<u8> = t.iter().flat_map(|v| v.to_ne_bytes()).collect();
                let stride = lay.sample_stride;
                // Layout checked B·stride against max_buffer_size and u32: it fits usize.
                let mut blocks = vec![0u8; (sz.b * stride) as usize];
                for (index, block) in blocks.chunks_exact_mut(stride as usize).enumerate() {
                    let sp = SampleParams { index: index as u32 }.to_bytes();
                    block[..sp.len()].copy_from_slice(&sp);
                }
                LocalScratch {
                    planes: storage("msloss local planes", sz.local_len(), none),
                    other: storage("msloss local other", sz.local_len(), none),
                    table: device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("msloss local taps"),
                        contents: &bytes,
                        usage: wgpu::BufferUsages::STORAGE,
                    }),
                    samples: device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("msloss local samples"),
                        contents: &blocks,
                        usage: wgpu::BufferUsages::UNIFORM,
                    }),
                    stride,
                    energies: storage("msloss local energies", sz.b, none),
                    odd: axes.len() % 2 == 1,
                }
            });

            let mut b = StepBuilder { backend: self, steps: Vec::new(), ping: &ping, pong: &pong };
            // 1–2. checks and class sums, reduced to one value per row; then the valid-pixel count.
            b.caller(sz.class_kernel, sz.b * sz.class_groups)?;
            b.chain(&partials, 0, sz.rows, &lay.class_levels, &sums, 0)?;
            b.chain(&sums, sz.class_rows, 1, &lay.count_levels, &totals, 0)?;
            // 3. centroids, ε-corrections, scale
            b.caller(Kernel::Centroids, ceil_div(sz.b * sz.n * sz.c, WORKGROUP_SIZE as u64))?;
            // 3b. the local fidelity, one sample after another over one sample's scratch:
            // products, convolutions, per-pixel terms and their sum into the sample's share, then
            // the gradient's convolutions and its ∂F/∂y, written for loss_grad to add before the
            // softmax backward.
            if let (Some(ls), Some((t, radius)), Some(lv)) = (&local, &table, &lay.local_levels) {
                let elem_groups = ceil_div(sz.n * sz.s, WORKGROUP_SIZE as u64);
                let taps_offset = (t.len() - radius - 1) as u64;
                let conv = ConvSetup { table: &ls.table, axes: &axes, radius: *radius as u64, taps_offset, sz: &sz };
                // The convolutions and the energy sum's levels but the last bind only the plan's
                // buffers, the same for every sample: built once, repeated.
                let first = b.convolve(&conv, ls.edge(), if ls.odd { &ls.planes } else { &ls.other })?;
                let second = if io.grad { b.convolve(&conv, &ls.planes, &ls.other)? } else { Vec::new() };
                let last_level = lv.len().saturating_sub(1);
                let head = (0..last_level)
                    .map(|i| b.chain_level(&ls.other, 0, 1, lv, i, &ls.energies, 0))
                    .collect::<Result<Vec<_>, _>>()?;
                for sample in 0..sz.b {
                    // Layout checked B·stride against u32.
                    let offset = Some((sample * ls.stride) as u32);
                    b.caller_at(Kernel::LocalProducts, elem_groups, offset)?;
                    b.steps.extend(first.iter().cloned().map(Step::Fixed));
                    b.caller_at(Kernel::LocalTerms, elem_groups, offset)?;
                    b.steps.extend(head.iter().cloned().map(Step::Fixed));
                    // The last level writes this sample's share.
                    let last = b.chain_level(&ls.other, 0, 1, lv, last_level, &ls.energies, sample)?;
                    b.steps.push(Step::Fixed(last));
                    if io.grad {
                        b.steps.extend(second.iter().cloned().map(Step::Fixed));
                        b.caller_at(Kernel::LocalGrad, elem_groups, offset)?;
                    }
                }
            }
            // 4. energy terms and the gradient (∂E/∂z for logits), then their sums
            b.caller(loss_kernel(params, shape), sz.loss_groups)?;
            b.chain(&loss_partials, 0, 2, &lay.loss_levels, &totals, 1)?;
            // 4b. the local fidelity's shares, summed into the fidelity total over loss_grad's zero.
            if let Some(ls) = &local {
                b.chain(&ls.energies, 0, 1, &lay.count_levels, &totals, 1)?;
            }
            // 5. the energy record
            b.caller(Kernel::Finalize, 1)?;
            let steps = b.steps;
            let tables = local.as_ref().map_or(0, |ls| ls.table.size() + ls.samples.size());
            let scratch_bytes = made.get() + dims_buffer.size() + tables;
            Ok(Plan {
                backend: self.clone(),
                shape,
                io,
                params: *params,
                needs: Needs::of(shape),
                sz,
                dims_buffer,
                status: status_buf,
                partials,
                sums,
                totals,
                centroids,
                stats,
                loss_partials,
                local,
                steps,
                scratch_bytes,
            })
        })?
    }
}

/// What the local fidelity's convolutions bind and loop over.
struct ConvSetup<'a> {
    table: &'a wgpu::Buffer,
    /// `(extent, stride)` of every axis of extent > 1, D first.
    axes: &'a [(u64, u64)],
    radius: u64,
    taps_offset: u64,
    sz: &'a Sizes,
}

/// Collects the dispatches of a plan.
struct StepBuilder<'a> {
    backend: &'a WgpuBackend,
    steps: Vec<Step>,
    ping: &'a wgpu::Buffer,
    pong: &'a wgpu::Buffer,
}

impl StepBuilder<'_> {
    /// The 2D grid of `groups` workgroups (at least one).
    fn grid(&self, kernel: Kernel, groups: u64) -> Result<(u32, u32), WgpuError> {
        let max_dim = self.backend.inner.limits.max_compute_workgroups_per_dimension;
        let groups = groups.max(1);
        let md = u64::from(max_dim);
        if groups > md * md {
            return Err(WgpuError::GridTooLarge { kernel: kernel.name(), groups, max: max_dim });
        }
        // Both fit u32: groups <= max_dim² and max_dim <= u32::MAX.
        Ok(if groups <= md { (groups as u32, 1) } else { (max_dim, ceil_div(groups, md) as u32) })
    }

    /// Adds a dispatch of `kernel` over `groups` workgroups whose bind group is built per call.
    fn caller(&mut self, kernel: Kernel, groups: u64) -> Result<(), WgpuError> {
        self.caller_at(kernel, groups, None)
    }

    /// [`StepBuilder::caller`] with the dynamic offset of a per-sample kernel's block.
    fn caller_at(&mut self, kernel: Kernel, groups: u64, offset: Option<u32>) -> Result<(), WgpuError> {
        let grid = self.grid(kernel, groups)?;
        let pipeline = self.backend.pipeline(kernel)?;
        self.steps.push(Step::Caller(kernel, pipeline, grid, offset));
        Ok(())
    }

    /// One multi-level row sum: `rows` rows of `lv[0].0` elements from `src` at `src_offset`
    /// into `dst` at `dst_offset`, the intermediate levels in ping/pong.
    fn chain(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        rows: u64,
        lv: &[(u64, u64)],
        dst: &wgpu::Buffer,
        dst_offset: u64,
    ) -> Result<(), WgpuError> {
        for i in 0..lv.len() {
            let level = self.chain_level(src, src_offset, rows, lv, i, dst, dst_offset)?;
            self.steps.push(Step::Fixed(level));
        }
        Ok(())
    }

    /// Level `i` of [`StepBuilder::chain`]: level 0 reads `src` at `src_offset`, the last
    /// writes `dst` at `dst_offset`, the others alternate between ping (even levels write it)
    /// and pong.
    #[allow(clippy::too_many_arguments, reason = "the chain's arguments and the level")]
    fn chain_level(
        &self,
        src: &wgpu::Buffer,
        src_offset: u64,
        rows: u64,
        lv: &[(u64, u64)],
        i: usize,
        dst: &wgpu::Buffer,
        dst_offset: u64,
    ) -> Result<Fixed, WgpuError> {
        let (ping, pong) = (self.ping, self.pong);
        let written_by = |level: usize| if level.is_multiple_of(2) { ping } else { pong };
        let (from, from_offset) = if i == 0 { (src, src_offset) } else { (written_by(i - 1), 0) };
        let (to, to_offset) = if i + 1 == lv.len() { (dst, dst_offset) } else { (written_by(i), 0) };
        let (len_in, len_out) = lv.get(i).copied().unwrap_or((0, 0));
        // Sizes::new bounds every count by u32.
        let rp = ReduceParams {
            rows: rows as u32,
            len_in: len_in as u32,
            len_out: len_out as u32,
            src_offset: from_offset as u32,
            dst_offset: to_offset as u32,
        };
        let device = self.backend.device();
        let ub = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("msloss reduce params"),
            contents: &rp.to_bytes(),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let p = self.backend.pipeline(Kernel::Reduce)?;
        let bind_group = bind_group(device, Kernel::Reduce, &p.layout, &[whole(&ub), whole(from), whole(to)]);
        let grid = self.grid(Kernel::Reduce, rows * len_out)?;
        let elems = (rows * len_in, rows * len_out);
        let kernel = Kernel::Reduce;
        Ok(Fixed { kernel, pipeline: p.pipeline.clone(), bind_group, grid, elems })
    }
}

impl StepBuilder<'_> {
    /// The separable Gaussian along every axis of `conv` over one sample's planes, from `first`
    /// and alternating with `second` (the result is in `first` after an even number of axes, in
    /// `second` after an odd one), as steps not yet added.
    fn convolve(
        &self,
        conv: &ConvSetup<'_>,
        first: &wgpu::Buffer,
        second: &wgpu::Buffer,
    ) -> Result<Vec<Fixed>, WgpuError> {
        let len = conv.sz.local_len();
        let mut steps = Vec::with_capacity(conv.axes.len());
        let (mut from, mut to) = (first, second);
        for &(extent, stride) in conv.axes {
            // Sizes::with_local bounds every count by u32; the radius is below the largest extent.
            let cp = ConvParams {
                len: len as u32,
                spatial: conv.sz.s as u32,
                extent: extent as u32,
                stride: stride as u32,
                radius: conv.radius.min(extent - 1) as u32,
                taps_offset: conv.taps_offset as u32,
            };
            let device = self.backend.device();
            let ub = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("msloss conv params"),
                contents: &cp.to_bytes(),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let kernel = Kernel::LocalConv;
            let p = self.backend.pipeline(kernel)?;
            let bind_group =
                bind_group(device, kernel, &p.layout, &[whole(&ub), whole(conv.table), whole(from), whole(to)]);
            let grid = self.grid(kernel, ceil_div(len, WORKGROUP_SIZE as u64))?;
            let window = (2 * u64::from(cp.radius) + 1).min(extent);
            let elems = (len * window, len);
            steps.push(Fixed { kernel, pipeline: p.pipeline.clone(), bind_group, grid, elems });
            std::mem::swap(&mut from, &mut to);
        }
        Ok(steps)
    }
}

fn bind_group(
    device: &wgpu::Device,
    kernel: Kernel,
    layout: &wgpu::BindGroupLayout,
    resources: &[wgpu::BindingResource<'_>],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
        .iter()
        .enumerate()
        .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.clone() })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(kernel.name()), layout, entries: &entries })
}

/// Binds all of `b`.
fn whole(b: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b, offset: 0, size: None })
}

/// Binds the first `bytes` of the caller's range `r` (`bytes > 0`: shapes have no empty extent;
/// [`buffers::check`] has checked it fits).
fn range(r: &BufferRange, bytes: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: &r.buffer,
        offset: r.offset,
        size: NonZeroU64::new(bytes),
    })
}

fn dims_for(shape: Shape, sz: &Sizes, params: &Params, io: Io) -> Dims {
    let mut fl = 0;
    if io.kind == ScoresKind::Logits {
        fl |= flags::LOGITS;
    }
    if io.mask {
        fl |= flags::MASK;
    }
    if io.grad {
        fl |= flags::GRAD;
    }
    if params.reduction == Reduction::Mean {
        fl |= flags::MEAN;
    }
    if is_local(params) {
        fl |= flags::LOCAL;
    }
    // Sizes::new checked every count below against u32.
    Dims {
        batch: sz.b as u32,
        classes: sz.n as u32,
        channels: sz.c as u32,
        depth: shape.depth() as u32,
        height: shape.height() as u32,
        width: shape.width() as u32,
        spatial: sz.s as u32,
        tiles: sz.tiles as u32,
        rows: sz.rows as u32,
        flags: fl,
        loss_groups: sz.loss_groups as u32,
        lambda: params.lambda as f32,
        weight: params.fidelity_weight as f32,
        delta: params.delta as f32,
        eps: params.centroid_eps as f32,
    }
}

impl Plan {
    /// The shape this plan evaluates.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// What the plan reads and writes.
    pub fn io(&self) -> Io {
        self.io
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The backend the plan runs on.
    pub fn backend(&self) -> &WgpuBackend {
        &self.backend
    }

    /// The plan's own centroids buffer, `[B, N, C]` `f32`, usable as a copy source: written by
    /// calls whose [`DeviceBuffers::centroids`] is `None`.
    pub fn centroids(&self) -> &wgpu::Buffer {
        &self.centroids
    }

    /// Replaces the parameters. The new values reach the device with the queue's next submit
    /// (`Queue::write_buffer` semantics): every encoding of this plan in that submission sees
    /// them. Another fidelity (or σ) or length kind changes the dispatches: the plan is built
    /// anew, as [`WgpuBackend::plan`] would, and encodings recorded before keep the old
    /// parameters.
    ///
    /// # Errors
    /// [`Error::BadParam`] (as [`WgpuError::Core`]); when the fidelity changes, those of
    /// [`WgpuBackend::plan`] (the plan is left as it was).
    pub fn set_params(&mut self, params: &Params) -> Result<(), WgpuError> {
        params.validate_for(self.shape)?;
        if *params == self.params {
            return Ok(());
        }
        // Another fidelity (or σ) or length kind is another pipeline: build the plan anew.
        if params.fidelity != self.params.fidelity || params.length != self.params.length {
            *self = self.backend.plan(self.shape, params, self.io)?;
            return Ok(());
        }
        let dims = dims_for(self.shape, &self.sz, params, self.io);
        self.params = *params;
        self.backend.queue().write_buffer(&self.dims_buffer, 0, &dims.to_bytes());
        Ok(())
    }

    /// Checks `buffers` against the plan without recording anything.
    ///
    /// # Errors
    /// As [`Plan::encode`], less the scope errors.
    pub fn check(&self, buffers: &DeviceBuffers) -> Result<(), WgpuError> {
        let alignment = u64::from(self.backend.inner.limits.min_storage_buffer_offset_alignment).max(1);
        buffers::check(buffers, self.shape, self.io, self.needs, alignment)
    }

    /// Records one evaluation on `buffers` into `encoder`: a clear of the status word and one
    /// compute pass of every dispatch. Reads and writes only device memory; nothing is
    /// submitted. The bind groups of the caller's ranges are built here, each call (four of them,
    /// seven with the local fidelity; cheap), so the ranges may move between calls.
    ///
    /// # Errors
    /// [`WgpuError::PlanMismatch`] when `buffers` has a mask or gradient the plan was not built
    /// for (or lacks one it was); for each range, [`WgpuError::BufferUsage`] (no `STORAGE`),
    /// [`WgpuError::Misaligned`], [`WgpuError::RangeOutOfBounds`], [`WgpuError::BufferSize`];
    /// [`WgpuError::Overlap`] when a written range shares bytes with another;
    /// [`WgpuError::WrongDevice`] for a buffer of another device (of the same wgpu instance; do
    /// not mix instances: wgpu-core's debug assertions fire first); a scope error
    /// ([`WgpuError::Validation`], for example a destroyed buffer) while binding; [`WgpuError::DeviceLost`]. Nothing is recorded when it fails.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder, buffers: &DeviceBuffers) -> Result<(), WgpuError> {
        self.backend.check_health()?;
        self.check(buffers)?;
        let n = self.needs;
        let device = self.backend.device();
        let inner = &self.backend.inner;
        let bound = scoped(device, "binding the caller's buffers", || {
            let scores = range(&buffers.scores, n.scores);
            let image = range(&buffers.image, n.image);
            let mask = match &buffers.mask {
                Some(m) => range(m, n.mask),
                None => whole(&inner.dummy_read),
            };
            let grad = match &buffers.grad {
                Some(g) => range(g, n.scores),
                None => whole(&inner.dummy_write),
            };
            let centroids = match &buffers.centroids {
                Some(c) => range(c, n.centroids),
                None => whole(&self.centroids),
            };
            let dims = whole(&self.dims_buffer);
            let make = |kernel: Kernel, pipeline: &Pipeline, resources: &[wgpu::BindingResource<'_>]| {
                bind_group(device, kernel, &pipeline.layout, resources)
            };
            // One bind group per kernel: the per-sample kernels, dispatched once per sample, take
            // their sample's block by the dynamic offset of each dispatch.
            let mut groups: Vec<(Kernel, wgpu::BindGroup)> = Vec::with_capacity(9);
            for step in &self.steps {
                let Step::Caller(kernel, pipeline, _, _) = step else { continue };
                if groups.iter().any(|(k, _)| k == kernel) {
                    continue;
                }
                let bg = match kernel {
                    Kernel::ClassSums | Kernel::ClassSumsStrided => make(
                        *kernel,
                        pipeline,
                        &[
                            dims.clone(),
                            scores.clone(),
                            image.clone(),
                            mask.clone(),
                            whole(&self.partials),
                            whole(&self.status),
                        ],
                    ),
                    Kernel::Centroids => make(
                        *kernel,
                        pipeline,
                        &[dims.clone(), whole(&self.sums), whole(&self.totals), centroids.clone(), whole(&self.stats)],
                    ),
                    Kernel::LossGrad(_) => make(
                        *kernel,
                        pipeline,
                        &[
                            dims.clone(),
                            scores.clone(),
                            image.clone(),
                            mask.clone(),
                            centroids.clone(),
                            whole(&self.stats),
                            grad.clone(),
                            whole(&self.loss_partials),
                            whole(&self.status),
                        ],
                    ),
                    Kernel::Finalize => make(
                        *kernel,
                        pipeline,
                        &[dims.clone(), whole(&self.totals), whole(&self.status), range(&buffers.energy, ENERGY_BYTES)],
                    ),
                    Kernel::LocalProducts | Kernel::LocalTerms | Kernel::LocalGrad => {
                        let Some(ls) = &self.local else { continue };
                        let sample = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &ls.samples,
                            offset: 0,
                            size: NonZeroU64::new(SampleParams::default().to_bytes().len() as u64),
                        });
                        match kernel {
                            Kernel::LocalProducts => make(
                                *kernel,
                                pipeline,
                                &[
                                    dims.clone(),
                                    scores.clone(),
                                    image.clone(),
                                    mask.clone(),
                                    whole(&self.sums),
                                    whole(ls.edge()),
                                    sample.clone(),
                                ],
                            ),
                            Kernel::LocalTerms => make(
                                *kernel,
                                pipeline,
                                &[
                                    dims.clone(),
                                    scores.clone(),
                                    image.clone(),
                                    mask.clone(),
                                    whole(&self.sums),
                                    whole(&ls.table),
                                    whole(&ls.planes),
                                    whole(&ls.other),
                                    sample.clone(),
                                ],
                            ),
                            _ => make(
                                *kernel,
                                pipeline,
                                &[
                                    dims.clone(),
                                    image.clone(),
                                    mask.clone(),
                                    whole(&self.sums),
                                    whole(&ls.table),
                                    whole(ls.edge()),
                                    whole(&self.stats),
                                    grad.clone(),
                                    whole(&self.status),
                                    sample.clone(),
                                ],
                            ),
                        }
                    }
                    // Reduce levels and convolutions are Step::Fixed.
                    Kernel::Reduce | Kernel::LocalConv => continue,
                };
                groups.push((*kernel, bg));
            }
            groups
        });
        // wgpu's API gives a buffer's device to nobody: its validation finds the mismatch, and
        // its message (tested) names it.
        let groups = match bound {
            Err(WgpuError::Validation { message, .. }) if message.contains("doesn't match Device") => {
                return Err(WgpuError::WrongDevice { message });
            }
            other => other?,
        };
        encoder.clear_buffer(&self.status, 0, None);
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("msloss"), timestamp_writes: None });
        for step in &self.steps {
            let (pipeline, group, grid, offset) = match step {
                Step::Caller(kernel, pipeline, grid, offset) => {
                    // Every caller kernel's group was built above; a missing one is this crate's bug.
                    let Some((_, g)) = groups.iter().find(|(k, _)| k == kernel) else {
                        let message = format!("no bind group for {kernel:?}");
                        return Err(WgpuError::Internal { context: "encoding the plan", message });
                    };
                    (&pipeline.pipeline, g, *grid, *offset)
                }
                Step::Fixed(f) => (&f.pipeline, &f.bind_group, f.grid, None),
            };
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, offset.as_slice());
            pass.dispatch_workgroups(grid.0, grid.1, 1);
        }
        Ok(())
    }

    /// The global-memory bytes each dispatch of one evaluation reads and writes, in dispatch
    /// order, counted from the plan: every distinct element of every tensor a kernel touches,
    /// once (repeated loads of one element within a kernel are assumed to hit a cache: a
    /// pixel's logits, read again for its softmax, and its neighbours' in `loss_grad`), the
    /// uniform block and the status word left out. The model behind the issue's "bytes per
    /// pixel" figures: compare the total with [`Traffic::floor`].
    pub fn traffic(&self) -> Vec<Traffic> {
        let Sizes { b, n, c, s, rows, tiles, class_groups, loss_groups, .. } = self.sz;
        let f = 4u64;
        let px = b * s;
        // The local fidelity's ∂F/∂y, which loss_grad reads back from the gradient buffer.
        let local_grad = if self.local.is_some() && self.io.grad { n * px } else { 0 };
        let mask = if self.io.mask { px } else { 0 };
        let bnc = b * n * c;
        // The per-sample kernels: one sample's pixels, and its N·(C+1) class sums.
        let sample_mask = if self.io.mask { s } else { 0 };
        let sample_rows = n * (c + 1);
        self.steps
            .iter()
            .map(|step| {
                let (read, written) = match step {
                    Step::Fixed(fx) => fx.elems,
                    Step::Caller(kernel, _, _, _) => match kernel {
                        // The strided path reads back its own partials when a workgroup takes
                        // several tiles.
                        Kernel::ClassSums | Kernel::ClassSumsStrided => {
                            let again = class_groups < ceil_div(s, TILE as u64);
                            (n * px + c * px + mask + if again { rows * tiles } else { 0 }, rows * tiles)
                        }
                        Kernel::Centroids => (rows + 1, bnc + b * n + 1),
                        Kernel::LossGrad(_) => (
                            n * px + c * px + mask + bnc + b * n + 1 + local_grad,
                            if self.io.grad { n * px } else { 0 } + 2 * loss_groups,
                        ),
                        Kernel::Finalize => (3, 4),
                        Kernel::LocalProducts => (n * s + c * s + sample_mask + sample_rows, n * (c + 1) * s),
                        Kernel::LocalTerms => {
                            (2 * n * s + (n + 1) * c * s + sample_mask + sample_rows, (n * (c + 2)) * s)
                        }
                        Kernel::LocalGrad => (c * s + sample_mask + n * (c + 1) * s + sample_rows + 1, n * s),
                        Kernel::Reduce | Kernel::LocalConv => (0, 0),
                    },
                };
                let name = match step {
                    Step::Caller(k, _, _, _) => k.name(),
                    Step::Fixed(fx) => fx.kernel.name(),
                };
                Traffic { kernel: name, read: read * f, written: written * f }
            })
            .collect()
    }

    /// The bytes of the device buffers the plan owns: its scratch (class-sum and energy partials,
    /// the reduction levels' ping and pong, O(B·N·C) sums, centroids and statistics, the status
    /// word; the local fidelity's planes, taps and per-sample blocks) and the uniform block; the
    /// reduction levels' small parameter blocks left out. No probability buffer: for logits the
    /// kernels recompute the softmax from the logits.
    pub fn scratch_bytes(&self) -> u64 {
        self.scratch_bytes
    }

    /// The dispatches of one evaluation, as `(kernel name, workgroups x, workgroups y)`.
    pub fn dispatches(&self) -> Vec<(&'static str, u32, u32)> {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Caller(k, _, g, _) => (k.name(), g.0, g.1),
                Step::Fixed(f) => (f.kernel.name(), f.grid.0, f.grid.1),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local fidelity's scratch is two buffers of one sample's `N·(C+1)` planes, whatever
    /// `B` (issue 27; it was `2·B·N·(C+1)` planes): counted by `Sizes`, and, where there is an
    /// adapter, as the plan's buffers. The per-sample blocks and energies grow with `B`, but by
    /// a block (at most 256 bytes) and a float a sample.
    #[test]
    fn local_scratch_is_one_samples() {
        let (n, c, h, w) = (3usize, 2usize, 9usize, 7usize);
        let planes = (n * (c + 1) * h * w) as u64;
        for b in [1, 3, 7] {
            let shape = Shape::new_2d(b, n, c, h, w).unwrap();
            assert_eq!(
                Sizes::with_local(shape, ClassSumsPath::Workgroup, true).unwrap().local_len(),
                planes,
                "B = {b}"
            );
        }
        let backend = match WgpuBackend::new() {
            Ok(backend) => backend,
            Err(e) if std::env::var("MSLOSS_SKIP_GPU").as_deref() == Ok("1") => {
                eprintln!("MSLOSS_SKIP_GPU=1: skipping the plan's buffers ({e})");
                return;
            }
            Err(e) => panic!("no usable GPU adapter: {e} (set MSLOSS_SKIP_GPU=1 to skip)"),
        };
        let params = Params::default().with_fidelity(Fidelity::Local { sigma: 1.5 });
        let stride = sample_stride(&backend.inner.limits);
        for b in [1, 3, 7] {
            let shape = Shape::new_2d(b, n, c, h, w).unwrap();
            let plan = backend.plan(shape, &params, Io::TRAIN).unwrap();
            let ls = plan.local.as_ref().unwrap();
            assert_eq!(ls.planes.size() + ls.other.size(), 2 * planes * 4, "B = {b}");
            assert_eq!(ls.samples.size(), b as u64 * stride, "B = {b}");
            assert_eq!(ls.energies.size(), b as u64 * 4, "B = {b}");
            // Each sample's kernels run once, in order: products, then terms, then the gradient.
            let per_sample: Vec<&str> = plan
                .dispatches()
                .into_iter()
                .map(|(k, _, _)| k)
                .filter(|k| ["local_products", "local_terms", "local_grad"].contains(k))
                .collect();
            assert_eq!(per_sample, ["local_products", "local_terms", "local_grad"].repeat(b), "B = {b}");
        }
    }
}
