//! The one error type of msloss-wgpu.

use msloss_core::Shape;

/// Everything that can go wrong in the GPU backend. Input errors arrive as [`WgpuError::Core`].
///
/// Every message says what was expected and what came. The type is `Send + Sync`, so it
/// converts into `anyhow::Error` and crosses threads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WgpuError {
    /// An input error (shape, lengths, values, parameters), as every backend reports it.
    #[error(transparent)]
    Core(#[from] msloss_core::Error),
    /// No adapter: no Vulkan, Metal, DX12 or GL driver that wgpu can use.
    #[error(
        "no GPU adapter found ({0}); install a Vulkan/Metal/DX12 driver (on a machine without a GPU, Mesa's \
         lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)"
    )]
    NoAdapter(String),
    /// The adapter refused to open a device.
    #[error("the adapter could not open a device: {0}")]
    RequestDevice(String),
    /// The device's limits are below what the kernels need.
    #[error("the device's limit {name} is {got}, but msloss-wgpu needs at least {required}")]
    MissingLimit {
        /// The limit's name in `wgpu::Limits`.
        name: &'static str,
        /// What the kernels need.
        required: u64,
        /// What the device offers.
        got: u64,
    },
    /// A tensor or scratch buffer is larger than the device can bind.
    #[error(
        "{what} needs {bytes} bytes, more than the device's {limit_name} = {limit}; split the batch or use a \
         device with a larger limit"
    )]
    BufferTooLarge {
        /// Which buffer.
        what: &'static str,
        /// Its size in bytes.
        bytes: u64,
        /// The limit's name in `wgpu::Limits`.
        limit_name: &'static str,
        /// The limit's value.
        limit: u64,
    },
    /// An element count that the kernels' 32-bit indices cannot reach.
    #[error("{what} has {count} elements, but the kernels' 32-bit indices reach at most {max}; split the batch")]
    IndexOverflow {
        /// Which tensor or index space.
        what: &'static str,
        /// Its element count.
        count: u64,
        /// The largest count allowed.
        max: u64,
    },
    /// A class or channel count above the kernels' per-invocation loop budget.
    #[error(
        "{dim} = {got} is more than msloss-wgpu's limit of {max} (one shader invocation loops over it, and Mesa's \
         lavapipe stops a shader after 65,535 loop iterations)"
    )]
    ExtentTooLarge {
        /// What is too large: `N` (classes), `C` (channels), `N·(C+1)`, or a local fidelity's window.
        dim: &'static str,
        /// The extent that came.
        got: usize,
        /// The largest extent allowed.
        max: usize,
    },
    /// More workgroups than a 2D dispatch grid holds.
    #[error("{kernel} needs {groups} workgroups, more than a dispatch grid of {max} × {max} holds")]
    GridTooLarge {
        /// The kernel.
        kernel: &'static str,
        /// Workgroups needed.
        groups: u64,
        /// The device's `max_compute_workgroups_per_dimension`.
        max: u32,
    },
    /// A caller's buffer (or range) is too small for the shape.
    #[error("{what} range holds {got} bytes but shape {shape} needs at least {expected}")]
    BufferSize {
        /// Which buffer.
        what: &'static str,
        /// The shape.
        shape: Shape,
        /// Bytes needed.
        expected: u64,
        /// Bytes it holds.
        got: u64,
    },
    /// A caller's range starts at an offset the device cannot bind.
    #[error(
        "{what} range starts at byte {offset}, which is not a multiple of the device's \
         min_storage_buffer_offset_alignment = {alignment}"
    )]
    Misaligned {
        /// Which buffer.
        what: &'static str,
        /// The range's offset.
        offset: u64,
        /// The device's alignment.
        alignment: u64,
    },
    /// A caller's range reaches past the end of its buffer.
    #[error("{what} range of {size} bytes at offset {offset} ends past its buffer of {buffer} bytes")]
    RangeOutOfBounds {
        /// Which buffer.
        what: &'static str,
        /// The range's offset.
        offset: u64,
        /// The range's size.
        size: u64,
        /// The buffer's size.
        buffer: u64,
    },
    /// A range the kernels write shares bytes with another range of the same call.
    #[error("the {written} range overlaps the {other} range; what the kernels write must overlap nothing they bind")]
    Overlap {
        /// The range written.
        written: &'static str,
        /// The range it overlaps.
        other: &'static str,
    },
    /// The buffers of a call do not match what the plan was built for.
    #[error("the plan was built {} a {what}, but the call {} one", if *planned { "with" } else { "without" }, if *given { "gives" } else { "gives no" })]
    PlanMismatch {
        /// `"mask"` or `"gradient"`.
        what: &'static str,
        /// Whether the plan binds it.
        planned: bool,
        /// Whether the call gave it.
        given: bool,
    },
    /// A caller's buffer belongs to another device than the backend's.
    #[error("a buffer given to the plan belongs to another device than the backend's: {message}")]
    WrongDevice {
        /// wgpu's message (it names the buffer's label).
        message: String,
    },
    /// A caller's buffer lacks a usage the kernels need.
    #[error("{what} buffer has usages {got:?} but needs {needed:?}")]
    BufferUsage {
        /// Which buffer.
        what: &'static str,
        /// The usages needed.
        needed: wgpu::BufferUsages,
        /// The usages it has.
        got: wgpu::BufferUsages,
    },
    /// wgpu reported a validation error (caught by an error scope).
    #[error("wgpu validation error while {context}: {message}")]
    Validation {
        /// What the backend was doing.
        context: &'static str,
        /// wgpu's message.
        message: String,
    },
    /// The device ran out of memory.
    #[error("out of GPU memory while {context}: {message}")]
    OutOfMemory {
        /// What the backend was doing.
        context: &'static str,
        /// wgpu's message.
        message: String,
    },
    /// wgpu reported an internal error (for example a shader the driver failed to compile).
    #[error("wgpu internal error while {context}: {message}")]
    Internal {
        /// What the backend was doing.
        context: &'static str,
        /// wgpu's message.
        message: String,
    },
    /// The device was lost (driver reset, removed GPU, destroyed device).
    #[error("the GPU device was lost ({reason}): {message}")]
    DeviceLost {
        /// wgpu's reason.
        reason: String,
        /// wgpu's message.
        message: String,
    },
    /// Waiting for the device failed.
    #[error("waiting for the GPU failed: {0}")]
    Poll(String),
    /// Mapping the read-back buffer failed.
    #[error("reading results back from the GPU failed: {0}")]
    ReadBack(String),
    /// The status word of a device-side evaluation flags invalid inputs.
    #[error("the GPU found invalid inputs: {0}")]
    InvalidDeviceInput(String),
    /// An energy record of the wrong length was given to [`crate::decode_energy`].
    #[error("an energy record is {expected} bytes, got {got}")]
    EnergyRecord {
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
}

impl WgpuError {
    /// Wraps an error caught by an error scope.
    pub(crate) fn from_scope(context: &'static str, e: wgpu::Error) -> Self {
        match e {
            wgpu::Error::OutOfMemory { source } => WgpuError::OutOfMemory { context, message: source.to_string() },
            wgpu::Error::Validation { description, .. } => WgpuError::Validation { context, message: description },
            wgpu::Error::Internal { description, .. } => WgpuError::Internal { context, message: description },
        }
    }
}
