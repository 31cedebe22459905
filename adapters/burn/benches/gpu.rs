//! msloss's op against the burn-ops peer (`tests/common/peer.rs`: the loss in burn tensor
//! operations, differentiated by burn's autodiff) on the same burn wgpu device, per loss call:
//! forward and backward, the gradient wrt the logits left on the device, the device synced
//! before the clock stops (`iter_custom`). Names: `burn-wgpu/{msloss,peer}/<shape>`.
//!
//! `burn-wgpu-step/{ce,ce+msloss,ce+peer}`: one training step of the `semi_supervised` example's
//! U-Net (forward, loss, backward, Adam) on its batch `[12, 1, 32, 32]`, 3 classes: CE alone,
//! then CE + β·MS with msloss and with the peer. `burn-wgpu-step/{msloss,peer}-call`: the loss
//! alone at that shape and with those settings (forward and backward from the step's logits, no
//! model). The loss's share of a step is `t(msloss-call) / t(ce+msloss)`; the difference of the
//! steps, `t(ce+msloss) − t(ce)`, says the same but is lost in the steps' noise on lavapipe.
//!
//! `MSLOSS_BENCH_SHAPES` (`B,N,C,H,W;...`) replaces the default shapes, which are small enough
//! for Mesa's lavapipe; on a GPU, `2,21,3,512,512` is the reference shape. On a machine
//! without a GPU this measures lavapipe, not a GPU.

#[path = "../tests/common/peer.rs"]
mod peer;
#[path = "../examples/common/unet.rs"]
mod unet;

use std::time::{Duration, Instant};

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use msloss_burn::MsLoss;
use msloss_core::rng::RandomInputs;
use msloss_core::{LengthKind, Reduction};
use msloss_core::{Params, Shape};

fn shapes() -> Vec<Shape> {
    let parse = |s: &str| -> Option<Shape> {
        let v: Vec<usize> = s.split(',').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
        match v[..] {
            [b, n, c, h, w] => Shape::new_2d(b, n, c, h, w).ok(),
            _ => None,
        }
    };
    match std::env::var("MSLOSS_BENCH_SHAPES") {
        Ok(list) => list.split(';').filter_map(parse).collect(),
        Err(_) => {
            vec![Shape::new_2d(1, 4, 1, 64, 64).expect("shape"), Shape::new_2d(2, 6, 3, 128, 128).expect("shape")]
        }
    }
}

fn name(s: Shape) -> String {
    format!("{}x{}x{}x{}x{}", s.batch(), s.classes(), s.channels(), s.height(), s.width())
}

/// Burn's wgpu device with autodiff, or `None` (the benches are skipped, saying why).
fn device() -> Option<Device> {
    match msloss_burn::gpu::default_device() {
        Ok(d) => Some(d.autodiff()),
        Err(e) => {
            eprintln!("burn-wgpu benches skipped: {e}");
            None
        }
    }
}

/// The time of `iters` runs of `f`, from a synced `device` until the work they queued is done.
fn timed(device: &Device, iters: u64, mut f: impl FnMut()) -> Duration {
    let sync = || {
        if let Err(e) = device.sync() {
            eprintln!("sync: {e}");
        }
    };
    sync();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync();
    start.elapsed()
}

/// The loss of logits `z` on image `x`: msloss's op, or the burn-ops peer.
fn energy(msloss: bool, loss: &MsLoss, params: &Params, z: Tensor<4>, x: Tensor<4>) -> Tensor<1> {
    if msloss {
        match loss.forward(z, x, None) {
            Ok(e) => e,
            Err(err) => panic!("msloss: {err}"),
        }
    } else {
        peer::peer_loss(z, x, None, params)
    }
}

/// One loss call: the forward from `z` and the backward of the energy (times `weight`, where
/// given), the gradient wrt `z` kept on the device to the end of the call.
fn call(msloss: bool, loss: &MsLoss, params: &Params, z: &Tensor<4>, x: &Tensor<4>, weight: Option<f64>) {
    let zt = z.clone().require_grad();
    let e = energy(msloss, loss, params, zt.clone(), x.clone());
    let grads = match weight {
        Some(w) => (e * w).backward(),
        None => e.backward(),
    };
    let _g = zt.grad(&grads);
}

fn bench(c: &mut Criterion) {
    let Some(device) = device() else { return };
    let params = Params::default().with_lambda(0.05);
    let mut group = c.benchmark_group("burn-wgpu");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for shape in shapes() {
        let data = RandomInputs::<f32>::new(shape, 1);
        let (b, n, ch, h, w) = (shape.batch(), shape.classes(), shape.channels(), shape.height(), shape.width());
        let t = |v: &[f32], k: usize| {
            Tensor::<4>::from_data(TensorData::new(v.to_vec(), [b, k, h, w]), (&device, DType::F32))
        };
        let z = t(&data.logits, n);
        let x = t(&data.image, ch);
        let loss = MsLoss::new(params);
        for which in ["msloss", "peer"] {
            group.bench_function(BenchmarkId::new(which, name(shape)), |bch| {
                bch.iter_custom(|iters| {
                    timed(&device, iters, || call(which == "msloss", &loss, &params, &z, &x, None))
                });
            });
        }
    }
    group.finish();
}

/// One training step of the example's model per iteration, with CE alone or CE + β·MS.
fn bench_step(c: &mut Criterion) {
    let Some(device) = device() else { return };
    // The example's settings: batch 12 of 32x32 grey images, 3 classes, β = 20, λ = 1e-4, L1, mean.
    let (batch, classes, side, beta) = (12, 3, 32, 20.0);
    let params = Params::default().with_lambda(1e-4).with_length(LengthKind::L1).with_reduction(Reduction::Mean);
    let image = Tensor::<4>::random([batch, 1, side, side], Distribution::Uniform(0.0, 1.0), &device);
    let labels =
        Tensor::<4>::random([batch, 1, side, side], Distribution::Uniform(0.0, classes as f64), &device).floor().int();
    let one_hot: Tensor<4> =
        Tensor::cat((0..classes).map(|k| labels.clone().equal_elem(k as i64).float()).collect::<Vec<_>>(), 1);
    let weight = Tensor::<4>::ones([batch, 1, side, side], (&device, DType::F32));
    let loss = MsLoss::new(params);
    let mut group = c.benchmark_group("burn-wgpu-step");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    let id = |which: &str| BenchmarkId::new(which, format!("{batch}x{classes}x1x{side}x{side}"));
    // The loss alone, from logits of the step's shape.
    let logits = Tensor::<4>::random([batch, classes, side, side], Distribution::Normal(0.0, 1.0), &device);
    for which in ["msloss-call", "peer-call"] {
        group.bench_function(id(which), |bch| {
            let msloss = which == "msloss-call";
            bch.iter_custom(|iters| {
                timed(&device, iters, || call(msloss, &loss, &params, &logits, &image, Some(beta)))
            });
        });
    }
    for which in ["ce", "ce+msloss", "ce+peer"] {
        group.bench_function(id(which), |bch| {
            bch.iter_custom(|iters| {
                // Taken by each step and put back as the optimiser returns it.
                let mut model = Some(unet::UNet::new(12, classes, &device));
                let mut optim = AdamConfig::new().init();
                timed(&device, iters, || {
                    let Some(m) = model.take() else { return };
                    let logits = m.forward(image.clone());
                    let ce = msloss_burn::masked_cross_entropy(logits.clone(), one_hot.clone(), weight.clone());
                    let total = match which {
                        "ce" => ce,
                        _ => ce + energy(which == "ce+msloss", &loss, &params, logits, image.clone()) * beta,
                    };
                    let grads = GradientsParams::from_grads(total.backward(), &m);
                    model = Some(optim.step(1e-3, m, grads));
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_step);
criterion_main!(benches);
