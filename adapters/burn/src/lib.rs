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
//! ## Host round trip
//! msloss's CPU backend reads host memory, so each call copies the logits, the image and the
//! mask to the host (`Tensor::try_to_data`), evaluates the energy and gradient there, and
//! uploads the gradient (`B::float_from_data`) for the backward pass. On burn's CPU backends
//! (`ndarray`, `flex`) the copies are memcpys; the example `semi_supervised` prints what they
//! cost. A zero-copy path on wgpu would need msloss's wgpu backend and is not built here.
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
//!
//! burn 0.22 routes a backend extension to the concrete backends it was compiled for; calling
//! the loss on a tensor of another backend (burn's deprecated `ndarray`, `wgpu`, `cuda`, …)
//! panics inside burn's dispatch. Each further backend is one line of `MsLossOps`' attribute
//! and one `plain_backend!` (the host round trip works on any backend), plus a feature.

use std::sync::Mutex;
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

mod semi;
pub use semi::{SemiSupervised, SemiSupervisedParts, masked_cross_entropy};

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
#[backend_extension(Autodiff, Flex: cfg(feature = "flex"))]
pub trait MsLossOps: Backend {
    /// Returns `[host.total]` (shape `[1]`, the logits' dtype and device). Under autodiff, the
    /// backward pass multiplies the incoming gradient by `host.grad`.
    fn ms_loss_attach(logits: FloatTensor<Self>, host: HostLoss) -> FloatTensor<Self>;
}

/// The loss value as a `[1]` tensor of `B` in the dtype and on the device of `like`.
fn scalar_like<B: Backend>(like: &FloatTensor<B>, total: f64) -> FloatTensor<B> {
    let dtype = like.dtype();
    let data = TensorData::new(vec![total], [1]).convert_dtype(dtype);
    B::float_from_data(data, &like.device())
}

/// Implements the plain (non-autodiff) extension for a concrete burn backend: the value only.
macro_rules! plain_backend {
    ($backend:ty) => {
        impl MsLossOps for $backend {
            fn ms_loss_attach(logits: FloatTensor<Self>, host: HostLoss) -> FloatTensor<Self> {
                scalar_like::<Self>(&logits, host.total)
            }
        }
    };
}
#[cfg(feature = "flex")]
plain_backend!(Flex);

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

impl<B: Backend, C: CheckpointStrategy> MsLossOps for Autodiff<B, C> {
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
}

/// Wall-clock time spent by the last [`MsLoss::forward`], split by stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// Reading logits, image and mask to the host (including the device's pending work).
    pub download: Duration,
    /// msloss's energy and gradient on the CPU.
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
        Self { params, backend, ws: Mutex::new(ws), last: Mutex::new(Default::default()) }
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The energy parts (`fidelity`, `length`, `total`, as `f64`) and the timing of the last
    /// successful [`MsLoss::forward`].
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
        // `is_require_grad` is false for the output of a model whose parameters are tracked, so
        // the gradient is computed whenever the logits live on an autodiff device.
        let want_grad = device.is_autodiff();

        let t0 = Instant::now();
        let read = |what, t: &Tensor<D>| t.try_to_data().map_err(|e| Error::Read { what, message: e.to_string() });
        let z = read("logits", &logits)?;
        let x = read("image", &image)?;
        let m = mask.as_ref().map(|m| read("mask", m)).transpose()?;
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

        let host = HostLoss { total: energy.total, grad };
        let out = <burn::backend::Dispatch as MsLossOps>::ms_loss_attach(logits.into_dispatch(), host);
        let out = Tensor::<1>::from_dispatch(out);
        let timing = Timing { download: t1 - t0, compute: t2 - t1, upload: t2.elapsed() };
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
