//! # msloss-candle
//!
//! The multiphase Mumford–Shah loss of [msloss](msloss_core) as a differentiable
//! [candle](https://github.com/huggingface/candle) operation: a [`CustomOp2`] on
//! `(logits, image)` whose forward runs msloss's CPU backend ([`msloss_cpu::CpuBackend`]) and
//! whose backward returns msloss's **analytic** gradient `∂E/∂logits` (computed with the
//! energy in the forward and kept until the backward), not candle's autodiff of a
//! re-implementation.
//!
//! CPU tensors only (f32 or f64): on CUDA or Metal the op returns candle's "no implementation"
//! error; move the tensors to the CPU first.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use msloss_candle::MsLoss;
//! use msloss_core::Params;
//!
//! let dev = Device::Cpu;
//! // logits [B=1, N=2, H=4, W=4] and the image [B=1, C=1, H=4, W=4].
//! let logits = Var::randn(0f32, 1.0, (1, 2, 4, 4), &dev)?;
//! let image = Tensor::rand(0f32, 1.0, (1, 1, 4, 4), &dev)?;
//! let loss = MsLoss::new(Params::default()).forward(logits.as_tensor(), &image, None)?; // a scalar
//! let grads = loss.backward()?;
//! let grad = grads.get(&logits).ok_or_else(|| candle_core::Error::Msg("logits not tracked".into()))?;
//! assert_eq!(grad.dims(), &[1, 2, 4, 4]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape as CShape, Tensor};
use msloss_core::{Backend, Input, Outputs, Params, Real, Scores, Shape};
use msloss_cpu::CpuBackend;

/// The multiphase Mumford–Shah loss on candle tensors.
#[derive(Debug, Clone)]
pub struct MsLoss {
    params: Params,
    backend: CpuBackend,
}

impl MsLoss {
    /// A loss with these parameters, evaluated by [`CpuBackend::new`] (all cores).
    pub fn new(params: Params) -> Self {
        Self { params, backend: CpuBackend::new() }
    }

    /// A loss evaluated by the given CPU backend.
    pub fn with_backend(params: Params, backend: CpuBackend) -> Self {
        Self { params, backend }
    }

    /// The loss `E` as a scalar tensor, differentiable wrt `logits`.
    ///
    /// - `logits`: `[B, N, H, W]` or `[B, N, D, H, W]`, f32 or f64, on the CPU;
    /// - `image`: `[B, C, H, W]` or `[B, C, D, H, W]`, the logits' dtype;
    /// - `mask`: `None`, or `[B, H, W]`, `[B, 1, H, W]` (5-D likewise) of 0/1, any dtype; a
    ///   constant.
    ///
    /// # Errors
    /// msloss's errors (shapes that do not fit together, non-finite values, a bad mask, bad
    /// parameters), wrapped in [`candle_core::Error`] (`Error::Wrapped`, whose message is
    /// msloss's [`msloss_core::Error`] message: candle keeps only its `Display`); candle's errors
    /// for other dtypes, mixed dtypes or a non-CPU device.
    pub fn forward(&self, logits: &Tensor, image: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mask_dims = mask.map(|m| m.dims().to_vec());
        let shape =
            Shape::from_dims(logits.dims(), image.dims(), mask_dims.as_deref()).map_err(candle_core::Error::wrap)?;
        if logits.dtype() != image.dtype() {
            candle_core::bail!("the image has dtype {:?} but the logits have {:?}", image.dtype(), logits.dtype());
        }
        let mask = mask.map(|m| m.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()).transpose()?;
        let op = MsLossOp {
            params: self.params,
            backend: self.backend.clone(),
            shape,
            mask,
            grad: Arc::new(Mutex::new(None)),
        };
        logits.contiguous()?.apply_op2(&image.contiguous()?, op)
    }
}

/// The gradient kept from the forward for the backward, in the logits' dtype.
#[derive(Debug)]
enum HostGrad {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The custom op: holds the parameters, the mask and, between forward and backward, the gradient.
struct MsLossOp {
    params: Params,
    backend: CpuBackend,
    shape: Shape,
    mask: Option<Vec<f64>>,
    grad: Arc<Mutex<Option<HostGrad>>>,
}

impl MsLossOp {
    /// Energy and gradient in `T` on contiguous host slices.
    fn eval<T: Real>(&self, z: &[T], x: &[T]) -> Result<(T, Vec<T>)>
    where
        CpuBackend: Backend<T, Error = msloss_core::Error>,
    {
        let mask: Option<Vec<T>> = self.mask.as_ref().map(|m| m.iter().map(|v| T::from_f64_lossy(*v)).collect());
        let input = Input::new(self.shape, Scores::Logits(z), x, mask.as_deref()).map_err(candle_core::Error::wrap)?;
        let mut grad = vec![T::zero(); self.shape.scores_len()];
        let mut ws = Backend::<T>::workspace(&self.backend);
        let out = Outputs { grad: Some(&mut grad), centroids: None };
        let e = self.backend.evaluate(&input, &self.params, out, &mut ws).map_err(candle_core::Error::wrap)?;
        Ok((e.total, grad))
    }
}

/// The contiguous slice of a storage.
fn slice<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("msloss: the {what} must be contiguous"),
    }
}

impl CustomOp2 for MsLossOp {
    fn name(&self) -> &'static str {
        "msloss"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, CShape)> {
        let (value, grad) = match (s1, s2) {
            (CpuStorage::F32(z), CpuStorage::F32(x)) => {
                let (e, g) = self.eval::<f32>(slice(z, l1, "logits")?, slice(x, l2, "image")?)?;
                (CpuStorage::F32(vec![e]), HostGrad::F32(g))
            }
            (CpuStorage::F64(z), CpuStorage::F64(x)) => {
                let (e, g) = self.eval::<f64>(slice(z, l1, "logits")?, slice(x, l2, "image")?)?;
                (CpuStorage::F64(vec![e]), HostGrad::F64(g))
            }
            (z, x) => candle_core::bail!(
                "msloss takes f32 or f64 logits and image of one dtype, got {:?} and {:?}",
                z.dtype(),
                x.dtype()
            ),
        };
        *self.grad.lock().unwrap_or_else(PoisonError::into_inner) = Some(grad);
        Ok((value, CShape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        image: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let kept = self.grad.lock().unwrap_or_else(PoisonError::into_inner).take();
        let grad = match kept {
            Some(HostGrad::F32(g)) => Tensor::from_vec(g, logits.shape(), logits.device())?,
            Some(HostGrad::F64(g)) => Tensor::from_vec(g, logits.shape(), logits.device())?,
            // A second backward through the same graph: recompute.
            None => {
                let z = logits.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let x = image.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let (_, g) = self.eval::<f64>(&z, &x)?;
                Tensor::from_vec(g, logits.shape(), logits.device())?.to_dtype(logits.dtype())?
            }
        };
        let scaled = grad.broadcast_mul(&grad_res.broadcast_as(logits.shape())?)?;
        Ok((Some(scaled), None))
    }
}
