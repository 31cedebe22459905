//! A plan: every scratch buffer, uniform and bind group of one shape and one set of buffers,
//! recorded into a command encoder on demand.

use std::num::NonZeroU64;

use msloss_core::{Energy, Error, LengthKind, Params, Reduction, Shape};
use msloss_shaders::{Dims, Kernel, ReduceParams, TILE, WORKGROUP_SIZE, flags, length_kind, status};
use wgpu::util::DeviceExt;

use crate::context::{MAX_CHANNELS, MAX_CLASSES, scoped};
use crate::{WgpuBackend, WgpuError};

/// Bytes of the energy record the device writes: `[fidelity, length, total]` as `f32` and a
/// `u32` status word.
pub const ENERGY_BYTES: u64 = 16;

/// What the scores are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScoresKind {
    /// Logits (softmax over the classes is applied).
    Logits,
    /// Probabilities.
    Probs,
}

/// The caller's device buffers for one evaluation (all `f32`, row-major, as in the core's
/// definition). `wgpu::Buffer` is a cheap shared handle: clone your buffers in.
///
/// Every buffer needs `BufferUsages::STORAGE` and at least the bytes the shape needs (a larger
/// buffer is accepted; only its prefix is bound).
#[derive(Debug, Clone)]
pub struct DeviceBuffers {
    /// Logits or probabilities, `[B, N, D, H, W]`.
    pub scores: wgpu::Buffer,
    /// Which of the two `scores` holds.
    pub kind: ScoresKind,
    /// The image, `[B, C, D, H, W]`.
    pub image: wgpu::Buffer,
    /// The mask, `[B, D, H, W]` of 0/1, or all pixels valid.
    pub mask: Option<wgpu::Buffer>,
    /// Receives `∂E/∂scores`, `[B, N, D, H, W]`, when given.
    pub grad: Option<wgpu::Buffer>,
    /// Receives the centroids `[B, N, C]` when given.
    pub centroids: Option<wgpu::Buffer>,
    /// Receives the energy record ([`ENERGY_BYTES`] bytes; decode it with
    /// [`decode_energy`]).
    pub energy: wgpu::Buffer,
}

impl PartialEq for DeviceBuffers {
    fn eq(&self, o: &Self) -> bool {
        self.scores == o.scores
            && self.kind == o.kind
            && self.image == o.image
            && self.mask == o.mask
            && self.grad == o.grad
            && self.centroids == o.centroids
            && self.energy == o.energy
    }
}

/// Decodes the energy record the device wrote (copy it to a mappable buffer and map it).
///
/// # Errors
/// [`WgpuError::EnergyRecord`] for a record of the wrong length; [`Error::EmptyMask`] and
/// [`Error::NonFiniteResult`] as the host path reports them; [`WgpuError::InvalidDeviceInput`]
/// naming every invalid input the device found (non-finite scores or image, negative
/// probabilities, mask values other than 0 and 1).
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
    if st & status::RESULT_NONFINITE != 0 || !total.is_finite() {
        return Err(Error::NonFiniteResult { what: "energy", value: f64::from(total) }.into());
    }
    Ok(Energy { fidelity, length, total })
}

/// One dispatch.
#[derive(Debug)]
struct Step {
    kernel: Kernel,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
}

/// Everything one evaluation on the device needs, built once for a shape, a set of buffers and
/// parameters, and recorded into any number of command encoders with [`Plan::encode`].
///
/// A trainer that keeps its buffers builds one plan and encodes it every step; the plan's
/// parameters can change with [`Plan::set_params`].
#[derive(Debug)]
pub struct Plan {
    shape: Shape,
    buffers: DeviceBuffers,
    params: Params,
    device: wgpu::Device,
    queue: wgpu::Queue,
    dims: Dims,
    dims_buffer: wgpu::Buffer,
    status: wgpu::Buffer,
    centroids: wgpu::Buffer,
    steps: Vec<Step>,
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

/// The sizes of one evaluation, checked against the kernels' index range.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    b: u64,
    n: u64,
    c: u64,
    s: u64,
    tiles: u64,
    rows: u64,
    class_rows: u64,
    loss_groups: u64,
}

impl Sizes {
    fn new(shape: Shape) -> Result<Self, WgpuError> {
        if shape.classes() > MAX_CLASSES {
            return Err(WgpuError::ExtentTooLarge { dim: "N (classes)", got: shape.classes(), max: MAX_CLASSES });
        }
        if shape.channels() > MAX_CHANNELS {
            return Err(WgpuError::ExtentTooLarge { dim: "C (channels)", got: shape.channels(), max: MAX_CHANNELS });
        }
        let (b, n, c, s) =
            (shape.batch() as u64, shape.classes() as u64, shape.channels() as u64, shape.spatial() as u64);
        let tiles = ceil_div(s, TILE as u64);
        let class_rows = b * n * (c + 1);
        let rows = class_rows + b;
        let sizes = Sizes { b, n, c, s, tiles, rows, class_rows, loss_groups: ceil_div(b * n * s, TILE as u64) };
        for (what, count) in [
            ("the scores (B·N·D·H·W)", b * n * s),
            ("the image (B·C·D·H·W)", b * c * s),
            ("the centroids (B·N·C)", b * n * c),
            ("the class-sum partials (B·(N·(C+1)+1)·ceil(S/TILE))", rows * tiles),
        ] {
            if count > INDEX_MAX {
                return Err(WgpuError::IndexOverflow { what, count, max: INDEX_MAX });
            }
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
    cent_bytes: u64,
    scratch_len: u64,
    class_levels: Vec<(u64, u64)>,
    count_levels: Vec<(u64, u64)>,
    loss_levels: Vec<(u64, u64)>,
}

impl WgpuBackend {
    /// The layout of `shape` on this device.
    ///
    /// # Errors
    /// [`WgpuError::ExtentTooLarge`], [`WgpuError::IndexOverflow`],
    /// [`WgpuError::BufferTooLarge`] or [`WgpuError::GridTooLarge`].
    fn layout(&self, shape: Shape) -> Result<Layout, WgpuError> {
        let sz = Sizes::new(shape)?;
        let limits = &self.inner.limits;
        let f = 4u64;
        let class_levels = levels(sz.tiles);
        let count_levels = levels(sz.b);
        let loss_levels = levels(sz.loss_groups);
        let scratch_len = [(sz.rows, &class_levels), (1, &count_levels), (2, &loss_levels)]
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
            cent_bytes: sz.b * sz.n * sz.c * f,
            scratch_len,
            class_levels,
            count_levels,
            loss_levels,
        };
        let binding_limit = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        for (what, bytes) in [
            ("the scores", lay.scores_bytes),
            ("the image", lay.image_bytes),
            ("the mask", lay.mask_bytes),
            ("the class-sum partials", sz.rows * sz.tiles * f),
            ("the reduction scratch", scratch_len * f),
            ("the loss partials", 2 * sz.loss_groups * f),
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
            (Kernel::Prepare, ceil_div(sz.b * sz.s, WORKGROUP_SIZE as u64)),
            (Kernel::ClassSums, sz.rows * sz.tiles),
            (Kernel::LossGrad, sz.loss_groups),
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

    /// The most samples of `shape` one dispatch sequence can hold on this device (the host path
    /// splits larger batches), or the error that even one sample meets.
    pub(crate) fn max_batch(&self, shape: Shape) -> Result<usize, WgpuError> {
        if self.layout(shape).is_ok() {
            return Ok(shape.batch());
        }
        self.layout(shape.with_batch(1)?)?;
        // Every size grows with B: the largest that fits, by bisection (fits(lo), !fits(hi)).
        let (mut lo, mut hi) = (1, shape.batch());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.layout(shape.with_batch(mid)?).is_ok() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

impl WgpuBackend {
    /// Builds a [`Plan`] for `shape` on the caller's `buffers` with `params`: checks every
    /// buffer's usage and size, the device's limits, creates the scratch buffers, uniforms and
    /// bind groups (under error scopes).
    ///
    /// # Errors
    /// [`Error::BadParam`] (as [`WgpuError::Core`]); [`WgpuError::BufferUsage`],
    /// [`WgpuError::BufferSize`] for the caller's buffers; [`WgpuError::ExtentTooLarge`],
    /// [`WgpuError::IndexOverflow`], [`WgpuError::BufferTooLarge`],
    /// [`WgpuError::GridTooLarge`] for shapes beyond the device; a scope error
    /// ([`WgpuError::Validation`], [`WgpuError::OutOfMemory`]) while creating resources;
    /// [`WgpuError::DeviceLost`].
    pub fn plan(&self, shape: Shape, params: &Params, buffers: &DeviceBuffers) -> Result<Plan, WgpuError> {
        params.validate()?;
        self.check_health()?;
        let lay = self.layout(shape)?;
        let Layout { sz, scores_bytes, image_bytes, mask_bytes, cent_bytes, scratch_len, .. } = lay;
        let (class_levels, count_levels, loss_levels) = (&lay.class_levels, &lay.count_levels, &lay.loss_levels);
        let f = 4u64;
        let logits = buffers.kind == ScoresKind::Logits;
        let check_caller = |what: &'static str, buf: &wgpu::Buffer, bytes: u64| -> Result<(), WgpuError> {
            if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(WgpuError::BufferUsage { what, needed: wgpu::BufferUsages::STORAGE, got: buf.usage() });
            }
            if buf.size() < bytes {
                return Err(WgpuError::BufferSize { what, shape, expected: bytes, got: buf.size() });
            }
            Ok(())
        };
        let scores_name = if buffers.kind == ScoresKind::Logits { "logits" } else { "probabilities" };
        check_caller(scores_name, &buffers.scores, scores_bytes)?;
        check_caller("image", &buffers.image, image_bytes)?;
        if let Some(m) = &buffers.mask {
            check_caller("mask", m, mask_bytes)?;
        }
        if let Some(g) = &buffers.grad {
            check_caller("gradient", g, scores_bytes)?;
        }
        if let Some(c) = &buffers.centroids {
            check_caller("centroids", c, cent_bytes)?;
        }
        check_caller("energy", &buffers.energy, ENERGY_BYTES)?;

        let device = &self.inner.device;
        scoped(device, "building a plan", || -> Result<Plan, WgpuError> {
            let storage = |label: &str, elems: u64, extra: wgpu::BufferUsages| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: elems.max(1) * f,
                    usage: wgpu::BufferUsages::STORAGE | extra,
                    mapped_at_creation: false,
                })
            };
            let none = wgpu::BufferUsages::empty();
            let y_scratch = logits.then(|| storage("msloss y", sz.b * sz.n * sz.s, none));
            let partials = storage("msloss class partials", sz.rows * sz.tiles, none);
            let sums = storage("msloss class sums", sz.rows, none);
            let totals = storage("msloss totals", 3, none);
            let centroids = match &buffers.centroids {
                Some(c) => c.clone(),
                None => storage("msloss centroids", sz.b * sz.n * sz.c, wgpu::BufferUsages::COPY_SRC),
            };
            let stats = storage("msloss stats", sz.b * sz.n + 1, none);
            let loss_partials = storage("msloss loss partials", 2 * sz.loss_groups, none);
            let ping = storage("msloss reduce ping", scratch_len, none);
            let pong = storage("msloss reduce pong", scratch_len, none);
            let status_buf = storage("msloss status", 1, wgpu::BufferUsages::COPY_DST);
            let dims = dims_for(shape, &sz, params, logits, buffers.mask.is_some(), buffers.grad.is_some());
            let dims_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("msloss dims"),
                contents: &dims.to_bytes(),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });

            let mut b = StepBuilder { backend: self, steps: Vec::new(), ping: &ping, pong: &pong };
            let scores = prefix(&buffers.scores, scores_bytes);
            let image = prefix(&buffers.image, image_bytes);
            let mask = match &buffers.mask {
                Some(m) => prefix(m, mask_bytes),
                None => whole(&self.inner.dummy_read),
            };
            let y_read = match &y_scratch {
                Some(y) => whole(y),
                None => prefix(&buffers.scores, scores_bytes),
            };
            let y_write = match &y_scratch {
                Some(y) => whole(y),
                None => whole(&self.inner.dummy_write),
            };
            let grad = match &buffers.grad {
                Some(g) => prefix(g, scores_bytes),
                None => whole(&self.inner.dummy_write),
            };
            let pixel_groups = ceil_div(sz.b * sz.s, WORKGROUP_SIZE as u64);
            let dims_res = whole(&dims_buffer);

            // 1. checks and softmax
            b.push(
                Kernel::Prepare,
                pixel_groups,
                &[dims_res.clone(), scores.clone(), image.clone(), mask.clone(), y_write, whole(&status_buf)],
            )?;
            // 2–3. class sums, reduced to one value per row; then the valid-pixel count.
            b.push(
                Kernel::ClassSums,
                sz.rows * sz.tiles,
                &[dims_res.clone(), y_read.clone(), image.clone(), mask.clone(), whole(&partials)],
            )?;
            b.chain(&partials, 0, sz.rows, class_levels, &sums, 0)?;
            b.chain(&sums, sz.class_rows, 1, count_levels, &totals, 0)?;
            // 4. centroids, ε-corrections, scale
            b.push(
                Kernel::Centroids,
                ceil_div(sz.b * sz.n * sz.c, WORKGROUP_SIZE as u64),
                &[dims_res.clone(), whole(&sums), whole(&totals), prefix(&centroids, cent_bytes), whole(&stats)],
            )?;
            // 5. energy terms and gradient, then their sums
            b.push(
                Kernel::LossGrad,
                sz.loss_groups,
                &[
                    dims_res.clone(),
                    y_read.clone(),
                    image.clone(),
                    mask.clone(),
                    prefix(&centroids, cent_bytes),
                    whole(&stats),
                    grad.clone(),
                    whole(&loss_partials),
                ],
            )?;
            b.chain(&loss_partials, 0, 2, loss_levels, &totals, 1)?;
            // 6. softmax backward
            if logits && buffers.grad.is_some() {
                b.push(Kernel::Jacobian, pixel_groups, &[dims_res.clone(), y_read.clone(), grad.clone()])?;
            }
            // 7. the energy record
            b.push(
                Kernel::Finalize,
                1,
                &[dims_res, whole(&totals), whole(&status_buf), prefix(&buffers.energy, ENERGY_BYTES)],
            )?;
            Ok(Plan {
                shape,
                buffers: buffers.clone(),
                params: *params,
                device: device.clone(),
                queue: self.inner.queue.clone(),
                dims,
                dims_buffer,
                status: status_buf,
                centroids,
                steps: b.steps,
            })
        })?
    }

    /// Records one evaluation into the caller's `encoder`, reusing the plan of the previous call
    /// when the shape and buffers are the same (new parameters are written with
    /// [`Plan::set_params`], so the `set_params` caveat applies), otherwise building a new one
    /// with [`WgpuBackend::plan`]. Nothing is submitted and nothing is read back: submit the encoder,
    /// then copy `buffers.energy` to a mappable buffer and [`decode_energy`] it (or leave the
    /// gradient on the device for the next kernel).
    ///
    /// # Errors
    /// As [`WgpuBackend::plan`].
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: Shape,
        params: &Params,
        buffers: &DeviceBuffers,
    ) -> Result<(), WgpuError> {
        let mut cache = self.inner.encode_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match cache.as_mut() {
            // Same shape and buffers: keep the bind groups, update the parameters if they changed.
            Some(p) if p.shape == shape && p.buffers == *buffers => {
                self.check_health()?;
                if p.params != *params {
                    p.set_params(params)?;
                }
                p.encode(encoder);
            }
            _ => {
                let p = self.plan(shape, params, buffers)?;
                p.encode(encoder);
                *cache = Some(p);
            }
        }
        Ok(())
    }
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

    /// Adds one dispatch of `kernel` over `groups` workgroups with `resources` bound in order.
    fn push(&mut self, kernel: Kernel, groups: u64, resources: &[wgpu::BindingResource<'_>]) -> Result<(), WgpuError> {
        let p = self.backend.pipeline(kernel);
        let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.clone() })
            .collect();
        let bind_group = self.backend.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: &p.layout,
            entries: &entries,
        });
        let grid = self.grid(kernel, groups)?;
        self.steps.push(Step { kernel, pipeline: p.pipeline.clone(), bind_group, grid });
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
        let (ping, pong) = (self.ping, self.pong);
        let mut from = src;
        let mut from_offset = src_offset;
        for (i, (len_in, len_out)) in lv.iter().enumerate() {
            let last = i + 1 == lv.len();
            let (to, to_offset) = if last {
                (dst, dst_offset)
            } else if i % 2 == 0 {
                (ping, 0)
            } else {
                (pong, 0)
            };
            // Sizes::new bounds every count by u32.
            let rp = ReduceParams {
                rows: rows as u32,
                len_in: *len_in as u32,
                len_out: *len_out as u32,
                src_offset: from_offset as u32,
                dst_offset: to_offset as u32,
            };
            let ub = self.backend.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("msloss reduce params"),
                contents: &rp.to_bytes(),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            self.push(Kernel::Reduce, rows * len_out, &[whole(&ub), whole(from), whole(to)])?;
            from = to;
            from_offset = to_offset;
        }
        Ok(())
    }
}

/// Binds all of `b`.
fn whole(b: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b, offset: 0, size: None })
}

/// Binds the first `bytes` of `b` (`bytes > 0`: shapes have no empty extent).
fn prefix(b: &wgpu::Buffer, bytes: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b, offset: 0, size: NonZeroU64::new(bytes) })
}

fn dims_for(shape: Shape, sz: &Sizes, params: &Params, logits: bool, mask: bool, grad: bool) -> Dims {
    let mut fl = 0;
    if logits {
        fl |= flags::LOGITS;
    }
    if mask {
        fl |= flags::MASK;
    }
    if grad {
        fl |= flags::GRAD;
    }
    if params.reduction == Reduction::Mean {
        fl |= flags::MEAN;
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
        length_kind: match params.length {
            LengthKind::L1 => length_kind::L1,
            LengthKind::L2 => length_kind::L2,
            LengthKind::Charbonnier => length_kind::CHARBONNIER,
        },
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

    /// The buffers this plan reads and writes.
    pub fn buffers(&self) -> &DeviceBuffers {
        &self.buffers
    }

    /// The centroids buffer (the caller's, or the plan's own, `[B, N, C]` `f32`, usable as a
    /// copy source).
    pub fn centroids(&self) -> &wgpu::Buffer {
        &self.centroids
    }

    /// Replaces the parameters. The new values reach the device with the queue's next submit
    /// (`Queue::write_buffer` semantics): every encoding of this plan in that submission sees
    /// them.
    ///
    /// # Errors
    /// [`Error::BadParam`] (as [`WgpuError::Core`]).
    pub fn set_params(&mut self, params: &Params) -> Result<(), WgpuError> {
        params.validate()?;
        let sz = Sizes::new(self.shape)?;
        let logits = self.buffers.kind == ScoresKind::Logits;
        self.dims = dims_for(self.shape, &sz, params, logits, self.buffers.mask.is_some(), self.buffers.grad.is_some());
        self.params = *params;
        self.queue.write_buffer(&self.dims_buffer, 0, &self.dims.to_bytes());
        Ok(())
    }

    /// Records the whole evaluation into `encoder`: a clear of the status word and one compute
    /// pass of every dispatch. Reads and writes only device memory.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.clear_buffer(&self.status, 0, None);
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("msloss"), timestamp_writes: None });
        for step in &self.steps {
            pass.set_pipeline(&step.pipeline);
            pass.set_bind_group(0, &step.bind_group, &[]);
            pass.dispatch_workgroups(step.grid.0, step.grid.1, 1);
        }
    }

    /// The dispatches of one evaluation, as `(kernel name, workgroups x, workgroups y)`.
    pub fn dispatches(&self) -> Vec<(&'static str, u32, u32)> {
        self.steps.iter().map(|s| (s.kernel.name(), s.grid.0, s.grid.1)).collect()
    }

    pub(crate) fn device(&self) -> &wgpu::Device {
        &self.device
    }
}
