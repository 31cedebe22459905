//! The candle op as a subject of the conformance suite (msloss-conformance): tensors built from
//! each case's input, the op run forward and backward, the value and the gradient wrt the
//! logits compared with the reference, in `f32` and `f64`. Every check that takes any subject
//! runs (the whole suite takes about a second here; the build is what is slow); the op offers
//! logits only and the total alone (no parts, no centroids), and its errors are candle's
//! messages (`candle_core::Error::Wrapped` holds a `Display`, not an error to downcast), which
//! must carry msloss's.

use candle_core::{DType, Device, Tensor, Var};
use msloss_candle::MsLoss;
use msloss_conformance::{Failure, Outcome, Subject, Supports};
use msloss_core::{Energy, Input, Params, Real, Scores};
use msloss_cpu::CpuBackend;

/// The upstream gradient of the backward pass: the subject reports `∂(2E)/∂z / 2`, so the op's
/// scaling by the upstream gradient is tested too (exactly: a power of two).
const UPSTREAM: f64 = 2.0;

/// [`MsLoss`] on candle CPU tensors.
struct Candle {
    cpu: CpuBackend,
}

impl Candle {
    fn new() -> Self {
        Self { cpu: CpuBackend::with_threads(2) }
    }
}

/// A tensor's values in `f64`.
fn flat(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
}

impl Candle {
    /// `E` and `∂E/∂z` in `f64` through the op on tensors of `dtype`.
    fn run<T: Real>(&self, input: &Input<'_, T>, params: &Params, z: &[T]) -> candle_core::Result<(f64, Vec<f64>)> {
        let dev = Device::Cpu;
        let dtype = if T::NAME == "f32" { DType::F32 } else { DType::F64 };
        let tensor = |v: &[T], dims: &[usize]| {
            let wide: Vec<f64> = v.iter().map(|x| x.to_f64_lossless()).collect();
            Tensor::from_vec(wide, dims, &dev)?.to_dtype(dtype)
        };
        let s = input.shape();
        let (b, n, c, [d, h, w]) = (s.batch(), s.classes(), s.channels(), s.spatial_dims());
        let (zd, xd, md) = if d == 1 {
            (vec![b, n, h, w], vec![b, c, h, w], vec![b, 1, h, w])
        } else {
            (vec![b, n, d, h, w], vec![b, c, d, h, w], vec![b, 1, d, h, w])
        };
        let z = Var::from_tensor(&tensor(z, &zd)?)?;
        let x = tensor(input.image(), &xd)?;
        let m = input.mask().map(|m| tensor(m, &md)).transpose()?;
        let e = MsLoss::with_backend(*params, self.cpu.clone()).forward(z.as_tensor(), &x, m.as_ref())?;
        let grads = (e.clone() * UPSTREAM)?.backward()?;
        let g = grads.get(&z).ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
        if e.dtype() != dtype || g.dtype() != dtype || !e.dims().is_empty() {
            candle_core::bail!("{dtype:?} in, {:?} {:?} and {:?} out", e.dtype(), e.dims(), g.dtype());
        }
        Ok((flat(&e)?[0], flat(g)?.into_iter().map(|g| g / UPSTREAM).collect()))
    }
}

impl<T: Real> Subject<T> for Candle {
    fn name(&self) -> &str {
        "candle cpu"
    }

    fn supports(&self) -> Supports {
        Supports { probabilities: false, centroids: false, energy_parts: false, typed_errors: false, ..Supports::ALL }
    }

    fn evaluate(&mut self, input: &Input<'_, T>, params: &Params) -> Result<Outcome<T>, Failure> {
        let Scores::Logits(z) = input.scores() else { return Err(Failure::message("logits only")) };
        let (value, grad) = self.run(input, params, z).map_err(Failure::message)?;
        let t = T::from_f64_lossy;
        let energy = Energy { fidelity: T::nan(), length: T::nan(), total: t(value) };
        Ok(Outcome { energy, grad: grad.into_iter().map(t).collect(), centroids: None })
    }
}

mod f32 {
    msloss_conformance::tests!(f32, [super::Candle::new()]);
}

mod f64 {
    msloss_conformance::tests!(f64, [super::Candle::new()]);
}
