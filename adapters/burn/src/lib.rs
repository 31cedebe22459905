//! # msloss-burn
//!
//! The multiphase Mumford–Shah loss of [msloss](msloss_core) as a differentiable operation on
//! [burn](https://burn.dev) tensors, for training segmentation networks with few or no labels.
//!
//! The forward pass runs through msloss's CPU backend ([`msloss_cpu::CpuBackend`]) and the
//! backward pass returns msloss's **analytic** gradient `∂E/∂logits`: burn does not
//! differentiate a re-implementation of the loss. The operation is a burn backend extension
//! whose `Autodiff<B, C>` implementation registers its own [`Backward`] step; on a backend
//! without autodiff it returns the value alone.
//!
//! ## Two paths
//! - **Device** (feature `wgpu`, on a wgpu device opened through `gpu::default_device` or
//!   `gpu::init_device`): msloss-wgpu's WGSL kernels run on burn's own wgpu device and queue.
//!   They read the logits, image and mask where burn's allocator put them (a range of one of its
//!   pages; a non-contiguous, misaligned or non-`f32` tensor is first made contiguous `f32` on the
//!   device) and write the gradient and a 16-byte energy record into buffers burn allocated and
//!   owns. burn's pending work is flushed to the queue first, and burn's buffers are held in
//!   place until the device has run the kernels. The loss comes back as a `[1]` tensor on the
//!   device, read only when you read it; nothing is copied to the host per step. Inputs are
//!   checked on the device (non-finite values, a mask other than 0/1): the findings are read
//!   with [`MsLoss::check`] (one 16-byte read), which turns them into a typed [`Error`].
//! - **Host round trip** (every other device): the logits, image and mask are copied to the
//!   host (`Tensor::try_to_data`), msloss's CPU backend evaluates the energy and gradient there,
//!   and the value and gradient are uploaded (`B::float_from_data`). On burn's CPU backends
//!   (`flex`) the copies are memcpys; the example `semi_supervised` prints what they cost.
//!
//! Which backend takes which path ([`Timing::path`] says, per call):
//!
//! | burn device | path |
//! |---|---|
//! | `Device::flex()` (feature `flex`) | host round trip |
//! | wgpu, opened by `gpu::default_device` / `gpu::init_device` (feature `wgpu`) | device |
//! | wgpu opened by burn itself, CubeCL CUDA, ROCm, CPU, Metal (feature `wgpu`, plus burn's feature for the runtime) | host round trip |
//! | a backend this build has no feature for (`ndarray`, `tch`, remote, or CubeCL without `wgpu`) | [`Error::Backend`], no panic |
//!
//! burn's `fusion` (on with burn's default features for wgpu) makes its CubeCL backend lazy:
//! then enable msloss-burn's `fusion` feature (with burn's fusion on and it off, the `wgpu`
//! feature does not compile). Under fusion the device path is a custom operation of the fused
//! stream: it runs when burn runs the stream (when a result is read or the device synced), and
//! [`MsLoss::check`] syncs the device first.
//!
//! ## Usage
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use msloss_burn::MsLoss;
//! use msloss_core::Params;
//!
//! let device = Device::flex().autodiff();
//! // logits [B=1, N=2, H=4, W=4] from some model, and the image [B=1, C=1, H=4, W=4].
//! let logits = Tensor::<4>::random([1, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device).require_grad();
//! let image = Tensor::<4>::random([1, 1, 4, 4], Distribution::Uniform(0.0, 1.0), &device);
//! let loss = MsLoss::new(Params::default());
//! let total = loss.forward(logits.clone(), image, None)?; // a Tensor<1> with one element
//! let grads = total.backward();
//! let g = logits.grad(&grads).expect("logits require a gradient");
//! assert_eq!(g.dims(), [1, 2, 4, 4]);
//! # Ok::<(), msloss_burn::Error>(())
//! ```
//!
//! ## Semi-supervised training
//! [`SemiSupervised`] combines the loss with a cross-entropy on the labelled pixels, as in the
//! paper: `L = α·CE(labelled pixels) + β·MS(all samples)`.
//!
//! ## Features
//! - `flex` (default): support burn's `flex` CPU backend (`Device::flex()`), with or without
//!   autodiff.
//! - `wgpu`: burn's CubeCL backends, with the device path on wgpu. It builds burn's wgpu
//!   backend (burn-cubecl, cubecl-wgpu): a large build, so it is off by default.
//! - `fusion`: `wgpu` with burn's `fusion` on (required whenever burn's fusion is on).

#[cfg(feature = "wgpu")]
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use msloss_core::{Backend as _, Energy, Input, Outputs, Params, Scores, Shape};
use msloss_cpu::CpuBackend;

#[cfg(feature = "flex")]
use burn::backend::Flex;

#[cfg(feature = "wgpu")]
pub mod gpu;
mod semi;
#[cfg(feature = "wgpu")]
pub use gpu::DeviceCall;
pub use semi::{SemiSupervised, SemiSupervisedParts, masked_cross_entropy};

/// One call of the device path (built with the `wgpu` feature; without it no value exists).
#[cfg(not(feature = "wgpu"))]
#[derive(Debug, Clone)]
pub struct DeviceCall(std::convert::Infallible);

#[cfg(not(feature = "wgpu"))]
impl DeviceCall {
    pub(crate) fn want_grad(&self) -> bool {
        match self.0 {}
    }
}

/// Everything that can go wrong when evaluating the loss on burn tensors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request itself is invalid (shapes, values or parameters); msloss's message says what.
    #[error(transparent)]
    Loss(#[from] msloss_core::Error),
    /// Reading a tensor back to the host failed.
    #[error("reading the {what} tensor to the host failed: {message}")]
    Read {
        /// Which tensor.
        what: &'static str,
        /// burn's message.
        message: String,
    },
    /// A tensor's element type cannot be handed to msloss.
    #[error("the {what} tensor has dtype {dtype:?}, but msloss takes floating-point tensors")]
    DType {
        /// Which tensor.
        what: &'static str,
        /// The dtype that came.
        dtype: DType,
    },
    /// The tensors live on a burn backend this build of msloss-burn does not support.
    #[error(
        "the logits are on {device}, a burn backend msloss-burn was not built for (features: `flex` for burn's \
         flex CPU backend, `wgpu` for burn's CubeCL backends)"
    )]
    Backend {
        /// The logits' device.
        device: String,
    },
    /// [`MsLoss::check`] has no energy to give: the last device call's error was reported
    /// already.
    #[error("no energy to check: the last call on the device failed, and its error was reported")]
    NoEnergy,
    /// Opening or registering a wgpu device, or reaching burn's buffers, failed.
    #[error("msloss on burn's wgpu device: {0}")]
    Setup(String),
    /// msloss's wgpu backend refused the call (device limits, buffers, device-side input checks).
    #[cfg(feature = "wgpu")]
    #[error(transparent)]
    Wgpu(#[from] msloss_wgpu::WgpuError),
    /// Two tensors live on different devices.
    #[error("the {what} tensor is on {got} but the logits are on {expected}")]
    Device {
        /// Which tensor.
        what: &'static str,
        /// The logits' device.
        expected: String,
        /// The other tensor's device.
        got: String,
    },
}

/// What one evaluation computed on the host, handed to the backend extension.
///
/// `grad` is `∂E/∂logits` (already in the logits' dtype and shape) when a gradient is wanted.
#[derive(Debug, Clone)]
pub struct HostLoss {
    /// The total energy `E`.
    pub total: f64,
    /// The gradient wrt the logits, if the logits are tracked by autodiff.
    pub grad: Option<TensorData>,
}

/// The backend extension: attaches a host-computed loss value (and its gradient, for the
/// backward pass) to the logits' autodiff graph.
///
/// Users call [`MsLoss::forward`]; this trait is public because burn's dispatch needs it to be.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "fusion")
)]
pub trait MsLossOps: Backend {
    /// Returns `[host.total]` (shape `[1]`, the logits' dtype and device). Under autodiff, the
    /// backward pass multiplies the incoming gradient by `host.grad`.
    #[fusion(dtype = logits, shape = burn::backend::Shape::from(vec![1]))]
    fn ms_loss_attach(logits: FloatTensor<Self>, host: HostLoss) -> FloatTensor<Self>;

    /// The device path: the loss `[1]` and, when the call wants it, `∂E/∂logits` (otherwise a
    /// `[1]` placeholder), computed where the tensors live. Under autodiff, the gradient is kept
    /// for the backward pass and the second output is a placeholder. `mask` is read only when the
    /// call says there is one (any tensor otherwise: burn's dispatch routes no optional tensor
    /// input). Backends without a device path record an error in `call`. Under burn's fusion
    /// the call runs when the fused stream does, not when this returns.
    #[fusion(meta = fusion_meta)]
    fn ms_loss_device(
        logits: FloatTensor<Self>,
        image: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        call: DeviceCall,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// The outputs of [`MsLossOps::ms_loss_device`] as burn's fusion needs them before it runs.
#[cfg(feature = "fusion")]
fn fusion_meta(
    logits: &burn::backend::fusion::custom::TensorSpec,
    _image: &burn::backend::fusion::custom::TensorSpec,
    _mask: &burn::backend::fusion::custom::TensorSpec,
    call: &DeviceCall,
) -> (burn::backend::fusion::custom::TensorSpec, burn::backend::fusion::custom::TensorSpec) {
    use burn::backend::fusion::custom::TensorSpec;
    let one = || burn::backend::Shape::from(vec![1]);
    let grad = if call.want_grad() { logits.shape.clone() } else { one() };
    (TensorSpec::new(one(), logits.dtype), TensorSpec::new(grad, logits.dtype))
}

/// A `[1]` zero tensor like `like` (the placeholder of an output that is not computed).
fn placeholder<B: Backend>(like: &FloatTensor<B>) -> FloatTensor<B> {
    B::float_zeros([1].into(), &like.device(), like.dtype().into())
}

/// The answer of a backend without a device path: an error in `call`, placeholders.
fn no_device_path<B: Backend>(
    logits: &FloatTensor<B>,
    call: &DeviceCall,
    backend: &str,
) -> (FloatTensor<B>, FloatTensor<B>) {
    #[cfg(feature = "wgpu")]
    call.fail_elsewhere(backend);
    #[cfg(not(feature = "wgpu"))]
    let _ = (call, backend);
    (placeholder::<B>(logits), placeholder::<B>(logits))
}

/// The loss value as a `[1]` tensor of `B` in the dtype and on the device of `like`.
fn scalar_like<B: Backend>(like: &FloatTensor<B>, total: f64) -> FloatTensor<B> {
    let dtype = like.dtype();
    let data = TensorData::new(vec![total], [1]).convert_dtype(dtype);
    B::float_from_data(data, &like.device())
}

/// Implements the plain (non-autodiff) extension for a concrete burn backend: the value only.
macro_rules! plain_backend {
    ($backend:ty, $name:literal) => {
        impl MsLossOps for $backend {
            fn ms_loss_attach(logits: FloatTensor<Self>, host: HostLoss) -> FloatTensor<Self> {
                scalar_like::<Self>(&logits, host.total)
            }

            fn ms_loss_device(
                logits: FloatTensor<Self>,
                _image: FloatTensor<Self>,
                _mask: FloatTensor<Self>,
                call: DeviceCall,
            ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                no_device_path::<Self>(&logits, &call, $name)
            }
        }
    };
}
#[cfg(feature = "flex")]
plain_backend!(Flex, "flex");

/// burn's CubeCL backend (every cubecl runtime: wgpu, CUDA, ROCm, CPU): the host round trip
/// attaches like any backend; the device path runs on registered wgpu devices.
#[cfg(feature = "wgpu")]
impl MsLossOps for burn_cubecl::CubeBackend {
    fn ms_loss_attach(logits: FloatTensor<Self>, host: HostLoss) -> FloatTensor<Self> {
        scalar_like::<Self>(&logits, host.total)
    }

    fn ms_loss_device(
        logits: FloatTensor<Self>,
        image: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        call: DeviceCall,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        gpu::evaluate(logits, image, mask, &call)
    }
}

/// The backward step: `∂L/∂logits = (∂L/∂E) · ∂E/∂logits`, the second factor from msloss.
#[derive(Debug)]
struct MsLossBackward;

impl<B: Backend> Backward<B, 1> for MsLossBackward {
    /// `∂E/∂logits` on the inner backend.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_e = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad_out| {
            // grad_out has shape [1]: broadcast it over the logits' shape.
            let shape = grad_e.shape();
            let ones = burn::backend::Shape::from(vec![1; shape.num_dims()]);
            let scale = B::float_expand(B::float_reshape(grad_out, ones), shape);
            B::float_mul(grad_e, scale)
        });
    }
}

impl<B: Backend + MsLossOps, C: CheckpointStrategy> MsLossOps for Autodiff<B, C> {
    fn ms_loss_attach(logits: FloatTensor<Self>, host: HostLoss) -> FloatTensor<Self> {
        let (inner, guard) = logits.into_parts();
        let out = scalar_like::<B>(&inner, host.total);
        match MsLossBackward.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let grad = match host.grad {
                    Some(data) => B::float_from_data(data, &inner.device()),
                    // `MsLoss::forward` computes the gradient for every autodiff tensor; a direct
                    // caller of this trait that passes none gets a zero gradient.
                    None => B::float_zeros(inner.shape(), &inner.device(), inner.dtype().into()),
                };
                prep.finish(grad, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn ms_loss_device(
        logits: FloatTensor<Self>,
        image: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        call: DeviceCall,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (inner, guard) = logits.into_parts();
        let (shape, device, dtype) = (inner.shape(), inner.device(), inner.dtype());
        let want_grad = call.want_grad();
        let (value, grad) = B::ms_loss_device(inner, image.into_primitive(), mask.into_primitive(), call);
        let out = match MsLossBackward.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                // The call computes the gradient on every autodiff device; a failed call's error
                // reaches the caller, who drops `out`.
                let grad = if want_grad { grad } else { B::float_zeros(shape, &device, dtype.into()) };
                prep.finish(grad, value)
            }
            OpsKind::UnTracked(prep) => prep.finish(value),
        };
        let spare = placeholder::<Self>(&out);
        (out, spare)
    }
}

/// Where a call of [`MsLoss::forward`] ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Path {
    /// Copies to the host, msloss's CPU backend, the value and gradient uploaded.
    #[default]
    Host,
    /// msloss-wgpu's kernels on burn's wgpu device and buffers: nothing crosses to the host.
    Device,
}

/// Wall-clock time spent by the last [`MsLoss::forward`], split by stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// Which path the call took.
    pub path: Path,
    /// Reading logits, image and mask to the host (including the device's pending work).
    pub download: Duration,
    /// msloss's energy and gradient on the CPU (on the device path: recording and submitting
    /// the kernels, not running them).
    pub compute: Duration,
    /// Building the result and uploading the gradient.
    pub upload: Duration,
}

/// The workspaces of the CPU backend, one per float type.
struct Workspaces {
    f32: <CpuBackend as msloss_core::Backend<f32>>::Workspace,
    f64: <CpuBackend as msloss_core::Backend<f64>>::Workspace,
}

/// The multiphase Mumford–Shah loss on burn tensors.
///
/// Holds the [`Params`], the CPU backend and its reusable workspaces (behind a mutex, so one
/// `MsLoss` can be shared by threads; calls are serialised).
pub struct MsLoss {
    params: Params,
    backend: CpuBackend,
    ws: Mutex<Workspaces>,
    last: Mutex<(Energy<f64>, Timing)>,
    /// Tensors this loss moved between host and device (reads and uploads).
    host_transfers: AtomicU64,
    /// The device path's plan, kept across calls of one shape (the caller owns it through this).
    #[cfg(feature = "wgpu")]
    plan: Arc<Mutex<Option<msloss_wgpu::Plan>>>,
    /// The last device call (its energy record once it ran) and its device, for
    /// [`MsLoss::check`].
    #[cfg(feature = "wgpu")]
    record: Mutex<Option<(DeviceCall, burn::tensor::Device)>>,
}

/// Where `device`'s tensors are evaluated.
enum Route {
    Host,
    #[cfg(feature = "wgpu")]
    Device(msloss_wgpu::WgpuBackend),
}

fn route(device: &burn::tensor::Device) -> Result<Route, Error> {
    let plain = device.clone().without_autodiff();
    match plain.as_dispatch() {
        #[cfg(feature = "flex")]
        burn::backend::DispatchDevice::Flex(_) => Ok(Route::Host),
        #[cfg(feature = "wgpu")]
        burn::backend::DispatchDevice::Cube(d) => Ok(match d {
            burn_cubecl::CubeDevice::Wgpu(wd) => gpu::lookup(wd).map_or(Route::Host, Route::Device),
            _ => Route::Host,
        }),
        #[allow(unreachable_patterns, reason = "reachable with other burn backends compiled in")]
        _ => Err(Error::Backend { device: format!("{device:?}") }),
    }
}

impl core::fmt::Debug for MsLoss {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MsLoss").field("params", &self.params).finish_non_exhaustive()
    }
}

impl MsLoss {
    /// A loss with these parameters, evaluated by [`CpuBackend::new`] (all cores).
    pub fn new(params: Params) -> Self {
        Self::with_backend(params, CpuBackend::new())
    }

    /// A loss evaluated by the given CPU backend (for example with a fixed thread count).
    pub fn with_backend(params: Params, backend: CpuBackend) -> Self {
        let ws = Workspaces {
            f32: msloss_core::Backend::<f32>::workspace(&backend),
            f64: msloss_core::Backend::<f64>::workspace(&backend),
        };
        Self {
            params,
            backend,
            ws: Mutex::new(ws),
            last: Mutex::new(Default::default()),
            host_transfers: AtomicU64::new(0),
            #[cfg(feature = "wgpu")]
            plan: Arc::new(Mutex::new(None)),
            #[cfg(feature = "wgpu")]
            record: Mutex::new(None),
        }
    }

    /// How many tensors this loss has moved between host and device so far: on the host path
    /// each call reads the logits, image and mask and uploads the value and gradient; on the
    /// device path a call moves none, and [`MsLoss::check`] reads one 16-byte record.
    pub fn host_transfers(&self) -> u64 {
        self.host_transfers.load(Ordering::Relaxed)
    }

    fn count_transfers(&self, n: u64) {
        self.host_transfers.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads the energy of the last call and the device's input checks: on the device path
    /// this is where non-finite inputs or a mask value other than 0 and 1 become an error (one
    /// 16-byte read); on the host path they were errors of [`MsLoss::forward`] already, and this
    /// returns the last energy.
    ///
    /// # Errors
    /// `Error::Wgpu` (feature `wgpu`) with the device's findings
    /// (`msloss_wgpu::WgpuError::InvalidDeviceInput`, or msloss's `EmptyMask` / `NonFiniteResult`); [`Error::Read`] when the record cannot be
    /// read.
    pub fn check(&self) -> Result<Energy<f64>, Error> {
        #[cfg(feature = "wgpu")]
        {
            let last = self.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some((call, device)) = last {
                if !call.has_run() {
                    // Under burn's fusion: run the fused stream, which runs the call.
                    device.sync().map_err(|e| Error::Read { what: "energy record", message: e.to_string() })?;
                }
                let r = call.take_outcome()?;
                self.count_transfers(1);
                let e = r.read()?;
                let e = Energy::new(f64::from(e.fidelity), f64::from(e.length));
                self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 = e;
                return Ok(e);
            }
        }
        let e = self.last().0;
        if e.total.is_nan() {
            return Err(Error::NoEnergy);
        }
        Ok(e)
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The energy parts (`fidelity`, `length`, `total`, as `f64`) and the timing of the last
    /// successful [`MsLoss::forward`]. After a call on the device path the energy is not on the
    /// host: its parts are NaN until [`MsLoss::check`] reads them.
    pub fn last(&self) -> (Energy<f64>, Timing) {
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The loss `E` of `logits` for `image`, as a one-element tensor on the logits' device,
    /// differentiable wrt the logits when they are tracked by autodiff.
    ///
    /// - `logits`: `[B, N, H, W]` or `[B, N, D, H, W]` (softmax over `N` is applied inside);
    /// - `image`: `[B, C, H, W]` or `[B, C, D, H, W]`, the same rank;
    /// - `mask`: `None`, or `[B, 1, H, W]` / `[B, 1, D, H, W]` with values 0 or 1.
    ///
    /// The image and mask are constants: no gradient flows to them. `f64` logits are evaluated in
    /// `f64`, every other float dtype in `f32` (the gradient comes back in the logits' dtype).
    ///
    /// # Errors
    /// [`Error::Loss`] for shapes that do not fit together, non-finite values, a bad mask or bad
    /// parameters (msloss's messages); [`Error::DType`] for non-float tensors; [`Error::Device`]
    /// when the image or mask is not on the logits' device; [`Error::Read`] when a tensor cannot
    /// be read back.
    pub fn forward<const D: usize>(
        &self,
        logits: Tensor<D>,
        image: Tensor<D>,
        mask: Option<Tensor<D>>,
    ) -> Result<Tensor<1>, Error> {
        let device = logits.device();
        let same_device = |what, t: &Tensor<D>| {
            let d = t.device();
            // The image may be on the autodiff or the plain form of the logits' device.
            if d.clone().without_autodiff() == device.clone().without_autodiff() {
                Ok(())
            } else {
                Err(Error::Device { what, expected: format!("{device:?}"), got: format!("{d:?}") })
            }
        };
        same_device("image", &image)?;
        if let Some(m) = &mask {
            same_device("mask", m)?;
        }
        let mask_dims = mask.as_ref().map(|m| m.dims());
        let shape = Shape::from_dims(&logits.dims(), &image.dims(), mask_dims.as_ref().map(|d| &d[..]))?;
        let dtype = logits.dtype();
        for (what, t) in [("logits", Some(&logits)), ("image", Some(&image)), ("mask", mask.as_ref())] {
            if let Some(t) = t.filter(|t| !t.dtype().is_float()) {
                return Err(Error::DType { what, dtype: t.dtype() });
            }
        }
        // `is_require_grad` is false for the output of a model whose parameters are tracked, so
        // the gradient is computed whenever the logits live on an autodiff device.
        let want_grad = device.is_autodiff();
        match route(&device)? {
            Route::Host => self.forward_host(shape, logits, image, mask, want_grad, dtype),
            #[cfg(feature = "wgpu")]
            Route::Device(backend) => self.forward_device(backend, shape, logits, image, mask, want_grad),
        }
    }

    /// The device path: msloss-wgpu's kernels on burn's wgpu buffers.
    #[cfg(feature = "wgpu")]
    fn forward_device<const D: usize>(
        &self,
        backend: msloss_wgpu::WgpuBackend,
        shape: Shape,
        logits: Tensor<D>,
        image: Tensor<D>,
        mask: Option<Tensor<D>>,
        want_grad: bool,
    ) -> Result<Tensor<1>, Error> {
        let t0 = Instant::now();
        let device = logits.device();
        let masked = mask.is_some();
        let call = DeviceCall::prepare(backend, shape, self.params, want_grad, masked, Arc::clone(&self.plan))?;
        let mask = mask.unwrap_or_else(|| image.clone());
        let out = <burn::backend::Dispatch as MsLossOps>::ms_loss_device(
            logits.into_dispatch(),
            image.into_dispatch(),
            mask.into_dispatch(),
            call.clone(),
        );
        // Under burn's fusion the call has not run yet: its outcome waits for `check`.
        if let Some(e) = call.take_error() {
            return Err(e);
        }
        *self.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((call, device));
        let timing = Timing { path: Path::Device, compute: t0.elapsed(), ..Timing::default() };
        let unknown = Energy { fidelity: f64::NAN, length: f64::NAN, total: f64::NAN };
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (unknown, timing);
        Ok(Tensor::<1>::from_dispatch(out.0))
    }

    /// The host round trip: read the tensors, msloss's CPU backend, upload value and gradient.
    fn forward_host<const D: usize>(
        &self,
        shape: Shape,
        logits: Tensor<D>,
        image: Tensor<D>,
        mask: Option<Tensor<D>>,
        want_grad: bool,
        dtype: DType,
    ) -> Result<Tensor<1>, Error> {
        let t0 = Instant::now();
        let read = |what, t: &Tensor<D>| t.try_to_data().map_err(|e| Error::Read { what, message: e.to_string() });
        let z = read("logits", &logits)?;
        let x = read("image", &image)?;
        let m = mask.as_ref().map(|m| read("mask", m)).transpose()?;
        self.count_transfers(2 + u64::from(m.is_some()));
        let t1 = Instant::now();

        let mut ws = self.ws.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (energy, grad) = if dtype == DType::F64 {
            let (e, g) = self.eval::<f64>(shape, z, x, m, want_grad, &mut ws.f64)?;
            (e, g.map(|g| TensorData::new(g, logits.shape())))
        } else {
            let (e, g) = self.eval::<f32>(shape, z, x, m, want_grad, &mut ws.f32)?;
            let e = Energy::new(f64::from(e.fidelity), f64::from(e.length));
            (e, g.map(|g| TensorData::new(g, logits.shape()).convert_dtype(dtype)))
        };
        drop(ws);
        let t2 = Instant::now();

        self.count_transfers(1 + u64::from(grad.is_some()));
        let host = HostLoss { total: energy.total, grad };
        let out = <burn::backend::Dispatch as MsLossOps>::ms_loss_attach(logits.into_dispatch(), host);
        let out = Tensor::<1>::from_dispatch(out);
        let timing = Timing { path: Path::Host, download: t1 - t0, compute: t2 - t1, upload: t2.elapsed() };
        #[cfg(feature = "wgpu")]
        {
            *self.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (energy, timing);
        Ok(out)
    }

    /// Evaluates on the host in `T`; returns the energy and, if asked, the gradient.
    fn eval<T: msloss_core::Real + burn::tensor::Element>(
        &self,
        shape: Shape,
        z: TensorData,
        x: TensorData,
        m: Option<TensorData>,
        want_grad: bool,
        ws: &mut <CpuBackend as msloss_core::Backend<T>>::Workspace,
    ) -> Result<(Energy<T>, Option<Vec<T>>), Error>
    where
        CpuBackend: msloss_core::Backend<T, Error = msloss_core::Error>,
    {
        let host = |what, d: TensorData| -> Result<Vec<T>, Error> {
            let dtype = d.dtype();
            if !dtype.is_float() {
                return Err(Error::DType { what, dtype });
            }
            d.try_into_vec_as::<T>().map_err(|e| Error::Read { what, message: e.to_string() })
        };
        let z = host("logits", z)?;
        let x = host("image", x)?;
        let m = m.map(|m| host("mask", m)).transpose()?;
        let input = Input::new(shape, Scores::Logits(&z), &x, m.as_deref())?;
        let mut grad = want_grad.then(|| vec![T::zero(); shape.scores_len()]);
        let out = Outputs { grad: grad.as_deref_mut(), centroids: None };
        let energy = self.backend.evaluate(&input, &self.params, out, ws)?;
        Ok((energy, grad))
    }
}
