//! The burn op as a subject of the conformance suite (msloss-conformance): tensors built from
//! each case's input on burn's flex device with autodiff, the op run forward and backward, the
//! value, the energy's parts ([`MsLoss::last`]) and the gradient wrt the logits compared with
//! the reference, in `f32` and `f64`. Every check that takes any subject runs (the whole suite
//! takes about a second here; the build is what is slow); the op offers logits only and no
//! centroids, so the checks skip probabilities and centroids.

use burn::tensor::{DType, Device, Tensor, TensorData};
use msloss_burn::{Error, MsLoss};
use msloss_conformance::{Failure, Outcome, Subject, Supports};
use msloss_core::{Energy, Input, Params, Real, Scores};
use msloss_cpu::CpuBackend;

/// The upstream gradient of the backward pass: the subject reports `∂(2E)/∂z / 2`, so the op's
/// scaling by the upstream gradient is tested too (exactly: a power of two).
const UPSTREAM: f64 = 2.0;

/// [`MsLoss`] on burn tensors, kept across calls with the same parameters (with its workspaces).
struct Burn {
    device: Device,
    cpu: CpuBackend,
    loss: Option<MsLoss>,
}

impl Burn {
    fn new() -> Self {
        Self { device: Device::flex().autodiff(), cpu: CpuBackend::with_threads(2), loss: None }
    }

    /// `E` and `∂E/∂z` in `f64` through the op on rank-`D` tensors of `dtype`.
    fn run<const D: usize, T: Real>(
        &mut self,
        params: &Params,
        dtype: DType,
        z: &[T],
        x: &[T],
        m: Option<&[T]>,
        dims: [[usize; D]; 3],
    ) -> Result<(f64, Vec<f64>), Failure> {
        let device = self.device.clone();
        let tensor = |v: &[T], dims: [usize; D]| {
            let wide: Vec<f64> = v.iter().map(|x| x.to_f64_lossless()).collect();
            Tensor::<D>::from_data(TensorData::new(wide, dims), (&device, dtype))
        };
        if self.loss.as_ref().is_none_or(|l| l.params() != params) {
            self.loss = Some(MsLoss::with_backend(*params, self.cpu.clone()));
        }
        let loss = self.loss.as_ref().expect("set above");
        let z = tensor(z, dims[0]).require_grad();
        let e = loss.forward(z.clone(), tensor(x, dims[1]), m.map(|m| tensor(m, dims[2]))).map_err(|e| match e {
            Error::Loss(e) => Failure::from(e),
            e => Failure::message(e),
        })?;
        let g = z.grad(&(e.clone() * UPSTREAM).backward()).ok_or_else(|| Failure::message("no gradient"))?;
        if e.dtype() != dtype || g.dtype() != dtype {
            return Err(Failure::message(format!("{dtype:?} in, {:?} and {:?} out", e.dtype(), g.dtype())));
        }
        let read = |t: TensorData| t.try_into_vec_as::<f64>().map_err(|e| Failure::message(format!("{e:?}")));
        let value = read(e.to_data())?;
        Ok((value[0], read(g.to_data())?.into_iter().map(|g| g / UPSTREAM).collect()))
    }
}

impl<T: Real> Subject<T> for Burn {
    fn name(&self) -> &str {
        "burn flex autodiff"
    }

    fn supports(&self) -> Supports {
        Supports { probabilities: false, centroids: false, ..Supports::ALL }
    }

    fn evaluate(&mut self, input: &Input<'_, T>, params: &Params) -> Result<Outcome<T>, Failure> {
        let Scores::Logits(z) = input.scores() else { return Err(Failure::message("logits only")) };
        let s = input.shape();
        let dtype = if T::NAME == "f32" { DType::F32 } else { DType::F64 };
        let (b, n, c, [d, h, w]) = (s.batch(), s.classes(), s.channels(), s.spatial_dims());
        let (x, m) = (input.image(), input.mask());
        let (value, grad) = if d == 1 {
            self.run(params, dtype, z, x, m, [[b, n, h, w], [b, c, h, w], [b, 1, h, w]])?
        } else {
            self.run(params, dtype, z, x, m, [[b, n, d, h, w], [b, c, d, h, w], [b, 1, d, h, w]])?
        };
        let (parts, _) = self.loss.as_ref().expect("evaluated").last();
        let t = T::from_f64_lossy;
        let energy = Energy { fidelity: t(parts.fidelity), length: t(parts.length), total: t(value) };
        Ok(Outcome { energy, grad: grad.into_iter().map(t).collect(), centroids: None })
    }

    fn reset(&mut self) {
        self.loss = None;
    }
}

mod f32 {
    msloss_conformance::tests!(f32, [super::Burn::new()]);
}

mod f64 {
    msloss_conformance::tests!(f64, [super::Burn::new()]);
}
