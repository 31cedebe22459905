//! The caller's side of a device evaluation: sub-ranges of buffers, the set of them one
//! evaluation reads and writes, and their checks against a shape and a device.

use msloss_core::Shape;

use crate::WgpuError;

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

/// `size` bytes of `buffer` from byte `offset`: where one tensor lives in a buffer that may hold
/// others (a framework's allocator packs many tensors in one page).
///
/// `wgpu::Buffer` is a cheap shared handle: clone it in. The offset must be a multiple of the
/// device's `min_storage_buffer_offset_alignment`; the range must lie inside the buffer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BufferRange {
    /// The buffer.
    pub buffer: wgpu::Buffer,
    /// The first byte.
    pub offset: u64,
    /// Bytes in the range.
    pub size: u64,
}

impl BufferRange {
    /// `size` bytes of `buffer` from `offset` (checked when the range is bound).
    pub fn new(buffer: wgpu::Buffer, offset: u64, size: u64) -> Self {
        Self { buffer, offset, size }
    }

    /// The whole of `buffer`.
    pub fn whole(buffer: wgpu::Buffer) -> Self {
        let size = buffer.size();
        Self { buffer, offset: 0, size }
    }

    /// The range's end (one past its last byte), saturating.
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }

    /// Whether the first `a_len` bytes of `self` and the first `b_len` of `other` share a byte.
    fn overlaps(&self, a_len: u64, other: &BufferRange, b_len: u64) -> bool {
        self.buffer == other.buffer
            && self.offset < other.offset.saturating_add(b_len)
            && other.offset < self.offset.saturating_add(a_len)
    }
}

impl From<wgpu::Buffer> for BufferRange {
    fn from(buffer: wgpu::Buffer) -> Self {
        Self::whole(buffer)
    }
}

impl From<&wgpu::Buffer> for BufferRange {
    fn from(buffer: &wgpu::Buffer) -> Self {
        Self::whole(buffer.clone())
    }
}

/// What a plan reads and writes: fixed when the plan is built, because the kernels' uniform
/// block carries it (changing it per call would mean a host write per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Io {
    /// What the scores are.
    pub kind: ScoresKind,
    /// Whether a mask is bound.
    pub mask: bool,
    /// Whether the gradient is written.
    pub grad: bool,
}

impl Io {
    /// Logits, no mask, the gradient written: a trainer's usual call.
    pub const TRAIN: Io = Io { kind: ScoresKind::Logits, mask: false, grad: true };
}

/// The caller's device ranges for one evaluation (all `f32`, row-major and contiguous, as in the
/// core's definition). Several may share one buffer, as long as what the kernels write (the
/// gradient, the centroids, the energy record) overlaps nothing else.
///
/// Every buffer needs `BufferUsages::STORAGE`; each range needs at least the bytes the shape
/// needs (a larger range is accepted; only its prefix is bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBuffers {
    /// Logits or probabilities, `[B, N, D, H, W]` (which one is the plan's [`Io::kind`]).
    pub scores: BufferRange,
    /// The image, `[B, C, D, H, W]`.
    pub image: BufferRange,
    /// The mask, `[B, D, H, W]` of 0/1, or all pixels valid.
    pub mask: Option<BufferRange>,
    /// Receives `∂E/∂scores`, `[B, N, D, H, W]`, when given.
    pub grad: Option<BufferRange>,
    /// Receives the centroids `[B, N, C]` when given (otherwise the plan keeps them).
    pub centroids: Option<BufferRange>,
    /// Receives the energy record ([`ENERGY_BYTES`] bytes; decode it with
    /// [`crate::decode_energy`]).
    pub energy: BufferRange,
}

impl DeviceBuffers {
    /// What these buffers ask a plan for, given what the scores are.
    pub fn io(&self, kind: ScoresKind) -> Io {
        Io { kind, mask: self.mask.is_some(), grad: self.grad.is_some() }
    }
}

/// Byte counts one evaluation of a shape binds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needs {
    pub(crate) scores: u64,
    pub(crate) image: u64,
    pub(crate) mask: u64,
    pub(crate) centroids: u64,
}

impl Needs {
    pub(crate) fn of(shape: Shape) -> Self {
        let f = 4u64;
        Needs {
            scores: shape.scores_len() as u64 * f,
            image: shape.image_len() as u64 * f,
            mask: shape.mask_len() as u64 * f,
            centroids: shape.centroids_len() as u64 * f,
        }
    }
}

/// Checks `buffers` against a plan's shape and [`Io`] and the device's offset alignment: every
/// mismatch is a typed error, before wgpu sees the buffers.
pub(crate) fn check(
    buffers: &DeviceBuffers,
    shape: Shape,
    io: Io,
    needs: Needs,
    alignment: u64,
) -> Result<(), WgpuError> {
    for (what, planned, given) in
        [("mask", io.mask, buffers.mask.is_some()), ("gradient", io.grad, buffers.grad.is_some())]
    {
        if planned != given {
            return Err(WgpuError::PlanMismatch { what, planned, given });
        }
    }
    let scores_name = if io.kind == ScoresKind::Logits { "logits" } else { "probabilities" };
    let mut ranges: Vec<(&'static str, &BufferRange, u64, bool)> =
        vec![(scores_name, &buffers.scores, needs.scores, false), ("image", &buffers.image, needs.image, false)];
    if let Some(m) = &buffers.mask {
        ranges.push(("mask", m, needs.mask, false));
    }
    if let Some(g) = &buffers.grad {
        ranges.push(("gradient", g, needs.scores, true));
    }
    if let Some(c) = &buffers.centroids {
        ranges.push(("centroids", c, needs.centroids, true));
    }
    ranges.push(("energy", &buffers.energy, ENERGY_BYTES, true));
    for (what, r, bytes, _) in &ranges {
        let usage = r.buffer.usage();
        if !usage.contains(wgpu::BufferUsages::STORAGE) {
            return Err(WgpuError::BufferUsage { what, needed: wgpu::BufferUsages::STORAGE, got: usage });
        }
        if r.offset % alignment != 0 {
            return Err(WgpuError::Misaligned { what, offset: r.offset, alignment });
        }
        if r.end() > r.buffer.size() {
            return Err(WgpuError::RangeOutOfBounds { what, offset: r.offset, size: r.size, buffer: r.buffer.size() });
        }
        if r.size < *bytes {
            return Err(WgpuError::BufferSize { what, shape, expected: *bytes, got: r.size });
        }
    }
    // What the kernels write must share no byte with anything else they bind.
    for (i, &(wa, ra, la, a_written)) in ranges.iter().enumerate() {
        for &(wb, rb, lb, b_written) in &ranges[i + 1..] {
            if (a_written || b_written) && ra.overlaps(la, rb, lb) {
                let (written, other) = if a_written { (wa, wb) } else { (wb, wa) };
                return Err(WgpuError::Overlap { written, other });
            }
        }
    }
    Ok(())
}
