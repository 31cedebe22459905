//! The zero-copy path on burn's wgpu devices: msloss-wgpu's kernels on burn's own wgpu device
//! and queue, reading the tensors' buffers where burn's allocator put them and writing the
//! gradient and the energy record into buffers burn allocated and then owns.
//!
//! A wgpu device's `wgpu::Device` and `wgpu::Queue` are not reachable from a burn tensor, so a
//! device takes this path only when it was opened through [`default_device`] or
//! [`init_device`], which hand the handles to msloss as they register the device with burn.
//! Tensors on any other wgpu device take the host round trip ([`crate::Path::Host`]).

use std::sync::{Arc, Mutex, PoisonError};

use burn::backend::wgpu::graphics::AutoGraphicsApi;
use burn::backend::wgpu::{RuntimeOptions, WgpuDevice, WgpuResource, WgpuRuntime, WgpuSetup};
use burn::backend::{FloatDType, Slice, TensorMetadata};
use burn::tensor::{DType, Device};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use msloss_core::{Params, Shape};
use msloss_wgpu::{BufferRange, DeviceBuffers, ENERGY_BYTES, Io, Plan, ScoresKind, WgpuBackend, decode_energy};

use crate::Error;

type Server = <WgpuRuntime as cubecl_runtime::runtime::Runtime>::Server;
type Resource = cubecl_runtime::storage::ManagedResource<WgpuResource>;

/// The wgpu devices registered with msloss, with the backend (pipelines) on each.
static REGISTRY: Mutex<Vec<(WgpuDevice, WgpuBackend)>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<(WgpuDevice, WgpuBackend)>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The msloss backend of a registered wgpu device.
pub(crate) fn lookup(device: &WgpuDevice) -> Option<WgpuBackend> {
    registry().iter().find(|(d, _)| d == device).map(|(_, b)| b.clone())
}

/// burn's default wgpu device (`Device::wgpu(Default::default())`), opened by msloss so that
/// the loss can share it: tensors on it (or on its autodiff form) take the zero-copy path.
///
/// Call it before anything touches burn's default wgpu device; calling it again returns the
/// same device.
///
/// # Errors
/// [`Error::Setup`] when burn's default wgpu device was already opened by burn (then open your
/// own with [`init_device`]), or no adapter is found; [`Error::Wgpu`] when the device's limits
/// fall short of the kernels'.
pub fn default_device() -> Result<Device, Error> {
    let wd = WgpuDevice::default();
    let mut reg = registry();
    if reg.iter().any(|(d, _)| *d == wd) {
        return Ok(Device::new(wd));
    }
    let options = RuntimeOptions::try_default().map_err(|e| Error::Setup(e.to_string()))?;
    let setup = burn::backend::wgpu::try_init_setup::<AutoGraphicsApi>(&wd, options)
        .map_err(|e| Error::Setup(format!("{e} (was burn's default wgpu device opened before msloss's?)")))?;
    let backend = WgpuBackend::from_device(setup.device, setup.queue)?;
    reg.push((wd.clone(), backend));
    Ok(Device::new(wd))
}

/// Registers the caller's wgpu `setup` with burn and with msloss and returns the burn device:
/// tensors on it take the zero-copy path. Each call registers a new device (burn's rule:
/// register a setup once, then clone the device). The device must enable what burn's kernels
/// need (burn's own setup requests the adapter's features and limits; 64-bit integers among
/// them) and the limits msloss's kernels need ([`msloss_wgpu::check_limits`]).
///
/// # Errors
/// [`Error::Wgpu`] when the device's limits fall short of the kernels'; [`Error::Setup`] when
/// burn refuses the setup.
pub fn init_device(setup: WgpuSetup) -> Result<Device, Error> {
    let backend = WgpuBackend::from_device(setup.device.clone(), setup.queue.clone())?;
    let wd = burn::backend::wgpu::try_init_device(setup, RuntimeOptions::try_default().map_err(setup_err)?)
        .map_err(setup_err)?;
    registry().push((wd.clone(), backend));
    Ok(Device::new(wd))
}

fn setup_err(e: impl std::fmt::Display) -> Error {
    Error::Setup(e.to_string())
}

/// One call of the device path: what it needs and, once run, what it left for [`crate::MsLoss`]
/// (the energy record, or the error). Opaque; public only because burn's dispatch needs it.
#[derive(Clone)]
pub struct DeviceCall {
    inner: Arc<CallInner>,
}

impl std::fmt::Debug for DeviceCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCall").field("shape", &self.inner.shape).finish_non_exhaustive()
    }
}

struct CallInner {
    backend: WgpuBackend,
    shape: Shape,
    params: Params,
    want_grad: bool,
    masked: bool,
    plan: Arc<Mutex<Option<Plan>>>,
    outcome: Mutex<Option<Result<Record, Error>>>,
}

/// The energy record a device call wrote, on the device: read it only when asked.
#[derive(Clone)]
pub(crate) struct Record {
    client: Client,
    handle: Handle,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Record")
    }
}

impl Record {
    /// Reads the record (a 16-byte host read) and decodes it: the device-side input checks
    /// become typed errors here.
    pub(crate) fn read(&self) -> Result<msloss_core::Energy<f32>, Error> {
        let bytes = self
            .client
            .read(vec![self.handle.clone()])
            .map_err(|e| Error::Read { what: "energy record", message: format!("{e:?}") })?;
        let bytes = bytes.first().ok_or_else(|| Error::Read { what: "energy record", message: "no data".into() })?;
        let record = bytes.get(..ENERGY_BYTES as usize).ok_or_else(|| Error::Read {
            what: "energy record",
            message: format!("{} bytes, expected {ENERGY_BYTES}", bytes.len()),
        })?;
        Ok(decode_energy(record)?)
    }
}

/// The plan in `slot`, kept when it fits the call (shape, inputs and outputs, parameters, device)
/// and built afresh otherwise (the old one dropped first: it holds device memory).
fn ready_plan<'a>(
    slot: &'a mut Option<Plan>,
    backend: &WgpuBackend,
    shape: Shape,
    params: &Params,
    io: Io,
) -> Result<&'a Plan, Error> {
    let fits = slot.as_ref().is_some_and(|p| {
        p.shape() == shape && p.io() == io && p.params() == params && p.backend().device() == backend.device()
    });
    if !fits {
        *slot = None;
    }
    match slot {
        Some(p) => Ok(p),
        None => Ok(slot.insert(backend.plan(shape, params, io)?)),
    }
}

impl DeviceCall {
    /// A call of `shape`, with the plan in `plan` made ready here (built when the shape, the
    /// mask, the gradient or the parameters changed), so that what can be refused is refused
    /// before anything is dispatched.
    pub(crate) fn prepare(
        backend: WgpuBackend,
        shape: Shape,
        params: Params,
        want_grad: bool,
        masked: bool,
        plan: Arc<Mutex<Option<Plan>>>,
    ) -> Result<Self, Error> {
        let io = Io { kind: ScoresKind::Logits, mask: masked, grad: want_grad };
        ready_plan(&mut plan.lock().unwrap_or_else(PoisonError::into_inner), &backend, shape, &params, io)?;
        let outcome = Mutex::new(None);
        Ok(Self { inner: Arc::new(CallInner { backend, shape, params, want_grad, masked, plan, outcome }) })
    }

    pub(crate) fn want_grad(&self) -> bool {
        self.inner.want_grad
    }

    /// Whether the call has run (under burn's fusion it runs when the fused stream does).
    pub(crate) fn has_run(&self) -> bool {
        self.inner.outcome.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// The call's error, if it ran and failed (taken: reported once).
    pub(crate) fn take_error(&self) -> Option<Error> {
        let mut o = self.inner.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        match o.take() {
            Some(Err(e)) => Some(e),
            other => {
                *o = other;
                None
            }
        }
    }

    /// What the call left: the energy record, or the error (taken).
    pub(crate) fn take_outcome(&self) -> Result<Record, Error> {
        let mut o = self.inner.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        o.take().unwrap_or_else(|| Err(Error::Setup("the loss was not evaluated on the device".into())))
    }

    fn set_outcome(&self, outcome: Result<Record, Error>) {
        *self.inner.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }

    /// Records a failure for a backend that has no device path (burn routed the call elsewhere).
    pub(crate) fn fail_elsewhere(&self, backend: &str) {
        self.set_outcome(Err(Error::Setup(format!("the device path was called on burn's {backend} backend"))));
    }
}

/// The plain (non-autodiff) device path on burn's CubeCL backend: `(value, gradient)`, the
/// value a `[1]` tensor in the logits' dtype, the gradient when the call wants one (a `[1]`
/// placeholder otherwise). On failure the call holds the error and both are placeholders that
/// the caller drops.
pub(crate) fn evaluate(
    logits: CubeTensor,
    image: CubeTensor,
    mask: CubeTensor,
    call: &DeviceCall,
) -> (CubeTensor, CubeTensor) {
    let mask = call.inner.masked.then_some(mask);
    let dtype = FloatDType::from(logits.dtype);
    let placeholder = || {
        <CubeBackend as burn::backend::ops::FloatTensorOps<CubeBackend>>::float_zeros(
            burn::backend::Shape::from(vec![1]),
            &logits.device,
            dtype,
        )
    };
    match run(logits.clone(), image, mask, call) {
        Ok((value, grad, record)) => {
            call.set_outcome(Ok(record));
            (value, grad.unwrap_or_else(placeholder))
        }
        Err(e) => {
            call.set_outcome(Err(e));
            (placeholder(), placeholder())
        }
    }
}

type Float = CubeBackend;

fn cast(t: CubeTensor, dtype: FloatDType) -> CubeTensor {
    <Float as burn::backend::ops::FloatTensorOps<Float>>::float_cast(t, dtype)
}

/// `t` as contiguous `f32` (a cast and a copy on the device where needed, never on the host).
fn f32_contiguous(t: CubeTensor) -> CubeTensor {
    let t = if t.dtype == DType::F32 { t } else { cast(t, FloatDType::F32) };
    into_contiguous(t)
}

/// The buffer range `t` lives in, held in place until the returned resource is dropped; a
/// tensor at an offset the device cannot bind (a view into a larger tensor) is copied first,
/// on the device.
fn resource(t: CubeTensor, alignment: u64) -> Result<(CubeTensor, Resource), Error> {
    let get =
        |t: &CubeTensor| t.client.get_resource::<Server>(t.handle.clone()).map_err(|e| Error::Setup(format!("{e:?}")));
    let r = get(&t)?;
    if r.resource().offset % alignment == 0 {
        return Ok((t, r));
    }
    drop(r);
    let t = t.copy();
    let r = get(&t)?;
    Ok((t, r))
}

fn range(r: &Resource) -> BufferRange {
    let r = r.resource();
    BufferRange::new(r.buffer.clone(), r.offset, r.size)
}

fn run(
    logits: CubeTensor,
    image: CubeTensor,
    mask: Option<CubeTensor>,
    call: &DeviceCall,
) -> Result<(CubeTensor, Option<CubeTensor>, Record), Error> {
    let c = &call.inner;
    let dtype = logits.dtype;
    let float_dtype = FloatDType::from(dtype);
    let logits_shape = logits.shape();
    let (client, device) = (logits.client.clone(), logits.device.clone());
    let alignment = u64::from(c.backend.device().limits().min_storage_buffer_offset_alignment).max(4);

    let (z, rz) = resource(f32_contiguous(logits), alignment)?;
    let (x, rx) = resource(f32_contiguous(image), alignment)?;
    let (m, rm) = match mask {
        Some(m) => {
            let (m, r) = resource(f32_contiguous(m), alignment)?;
            (Some(m), Some(r))
        }
        None => (None, None),
    };
    let bytes = 4 * c.shape.scores_len();
    let grad = c.want_grad.then(|| {
        CubeTensor::new_contiguous(
            client.clone(),
            device.clone(),
            logits_shape.clone(),
            client.empty(bytes),
            DType::F32,
        )
    });
    let record = CubeTensor::new_contiguous(
        client.clone(),
        device.clone(),
        burn::backend::Shape::from(vec![4]),
        client.empty(ENERGY_BYTES as usize),
        DType::F32,
    );
    let (grad, rg) = match grad {
        Some(g) => {
            let (g, r) = resource(g, alignment)?;
            (Some(g), Some(r))
        }
        None => (None, None),
    };
    let (record, rr) = resource(record, alignment)?;
    // burn's pending work (the kernels that wrote the inputs) goes to the queue before ours.
    client.flush().map_err(|e| Error::Setup(format!("flushing burn's work: {e:?}")))?;

    let buffers = DeviceBuffers {
        scores: range(&rz),
        image: range(&rx),
        mask: rm.as_ref().map(range),
        grad: rg.as_ref().map(range),
        centroids: None,
        energy: range(&rr),
    };
    let io = Io { kind: ScoresKind::Logits, mask: buffers.mask.is_some(), grad: c.want_grad };
    // DeviceCall::prepare made the plan; another call of the same MsLoss may have replaced it
    // since (under fusion calls run late), so it is checked, and rebuilt if it no longer fits.
    let mut slot = c.plan.lock().unwrap_or_else(PoisonError::into_inner);
    let plan = ready_plan(&mut slot, &c.backend, c.shape, &c.params, io)?;
    let wgpu_device = c.backend.device();
    let mut encoder = wgpu_device.create_command_encoder(&Default::default());
    plan.encode(&mut encoder, &buffers)?;
    c.backend.queue().submit([encoder.finish()]);
    drop(slot);
    // burn's allocations stay in place until the device has run the kernels that use them: a
    // held resource is never freed, handed out again or moved by burn's allocator. Only the
    // resources go to the callback (it runs inside whoever polls the device, burn included);
    // the tensors (z, x, m) are dropped here, as the resources keep their bytes.
    let keep = (rz, rx, rm, rg, rr);
    c.backend.queue().on_submitted_work_done(move || drop(keep));
    drop((z, x, m));

    let rec = Record { client, handle: record.handle.clone() };
    let value = <Float as burn::backend::ops::FloatTensorOps<Float>>::float_slice(record, &[Slice::from(2..3)]);
    let value = if dtype == DType::F32 { value } else { cast(value, float_dtype) };
    let grad = grad.map(|g| if dtype == DType::F32 { g } else { cast(g, float_dtype) });
    Ok((value, grad, rec))
}
