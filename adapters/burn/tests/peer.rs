//! The burn-ops peer (the loss written in burn tensor operations, differentiated by burn's
//! autodiff) against msloss's op: in `f64` on burn's flex CPU backend, where both must agree to
//! rounding, and (feature `wgpu`) in `f32` on burn's wgpu backend against the device path.

#[path = "common/peer.rs"]
mod peer;

use burn::tensor::{DType, Device, Tensor, TensorData};
use msloss_burn::MsLoss;
use msloss_core::rng::RandomInputs;
use msloss_core::{LengthKind, Params, Reduction, Shape};
use peer::peer_loss;

/// `(E, ∂E/∂z)` of msloss's op and of the peer on `device` (autodiff) in `dtype`.
fn both(device: &Device, dtype: DType, shape: Shape, masked: bool, p: &Params, seed: u64) -> [(f64, Vec<f64>); 2] {
    let device = device.clone().autodiff();
    let data = RandomInputs::<f64>::new(shape, seed);
    let (b, n, c, h, w) = (shape.batch(), shape.classes(), shape.channels(), shape.height(), shape.width());
    let t = |v: &[f64], k: usize| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [b, k, h, w]), (&device, dtype));
    let run = |ms: bool| {
        let z = t(&data.logits, n).require_grad();
        let x = t(&data.image, c);
        let m = masked.then(|| t(&data.mask, 1));
        let e = if ms { MsLoss::new(*p).forward(z.clone(), x, m).unwrap() } else { peer_loss(z.clone(), x, m, p) };
        let g = z.grad(&e.backward()).unwrap().into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
        (e.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0], g)
    };
    [run(true), run(false)]
}

fn agree(what: &str, [(e1, g1), (e2, g2)]: [(f64, Vec<f64>); 2], tol: f64) {
    assert!((e1 - e2).abs() <= tol * e2.abs(), "{what}: energy msloss {e1}, peer {e2}");
    let scale = g2.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        assert!((a - b).abs() <= tol * scale, "{what}: gradient[{i}] msloss {a}, peer {b} (largest {scale})");
    }
}

fn cases() -> Vec<(Shape, bool, Params)> {
    let shape = Shape::new_2d(2, 3, 2, 9, 8).unwrap();
    let mut out = Vec::new();
    for length in [LengthKind::L2, LengthKind::Charbonnier, LengthKind::L1] {
        for (masked, reduction) in [(false, Reduction::Sum), (true, Reduction::Mean)] {
            let p = Params::default().with_lambda(0.1).with_length(length).with_reduction(reduction);
            out.push((shape, masked, p));
        }
    }
    out
}

#[cfg(feature = "flex")]
#[test]
fn peer_agrees_in_f64_on_the_cpu() {
    for (i, (shape, masked, p)) in cases().into_iter().enumerate() {
        let what = format!("{} {} mask {masked}", p.length.name(), p.reduction.name());
        agree(&what, both(&Device::flex(), DType::F64, shape, masked, &p, 60 + i as u64), 1e-9);
    }
}

#[cfg(all(feature = "wgpu", feature = "flex"))]
#[test]
fn peer_agrees_in_f32_on_wgpu() {
    let gpu = msloss_burn::gpu::default_device().expect("a wgpu adapter");
    for (i, (shape, masked, p)) in cases().into_iter().enumerate() {
        let what = format!("wgpu {} {} mask {masked}", p.length.name(), p.reduction.name());
        let [ms, peer] = both(&gpu, DType::F32, shape, masked, &p, 60 + i as u64);
        // The peer's f32 sums are burn's; msloss's device path is within 1e-5 of the f64
        // reference, so the two meet within the peer's own rounding.
        agree(&what, [ms, peer], 1e-4);
    }
}
