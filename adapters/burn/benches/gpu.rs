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

fn bench(c: &mut Criterion) {
    let device = match msloss_burn::gpu::default_device() {
        Ok(d) => d.autodiff(),
        Err(e) => {
            eprintln!("burn-wgpu benches skipped: {e}");
            return;
        }
    };
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
        let sync = || {
            if let Err(e) = device.sync() {
                eprintln!("sync: {e}");
            }
        };
        for which in ["msloss", "peer"] {
            group.bench_function(BenchmarkId::new(which, name(shape)), |bch| {
                bch.iter_custom(|iters| {
                    sync();
                    let start = Instant::now();
                    for _ in 0..iters {
                        let zt = z.clone().require_grad();
                        let e = if which == "msloss" {
                            match loss.forward(zt.clone(), x.clone(), None) {
                                Ok(e) => e,
                                Err(err) => panic!("msloss: {err}"),
                            }
                        } else {
                            peer::peer_loss(zt.clone(), x.clone(), None, &params)
                        };
                        let grads = e.backward();
                        // The gradient stays on the device; keep it alive to the end of the call.
                        let _g = zt.grad(&grads);
                    }
                    sync();
                    start.elapsed()
                });
            });
        }
    }
    group.finish();
}

/// One training step of the example's model per iteration, with CE alone or CE + β·MS.
fn bench_step(c: &mut Criterion) {
    let device = match msloss_burn::gpu::default_device() {
        Ok(d) => d.autodiff(),
        Err(e) => {
            eprintln!("burn-wgpu benches skipped: {e}");
            return;
        }
    };
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
    let sync = |device: &Device| {
        if let Err(e) = device.sync() {
            eprintln!("sync: {e}");
        }
    };
    let mut group = c.benchmark_group("burn-wgpu-step");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    // The loss alone, from logits of the step's shape.
    let logits = Tensor::<4>::random([batch, classes, side, side], Distribution::Normal(0.0, 1.0), &device);
    for which in ["msloss-call", "peer-call"] {
        group.bench_function(BenchmarkId::new(which, format!("{batch}x{classes}x1x{side}x{side}")), |bch| {
            bch.iter_custom(|iters| {
                sync(&device);
                let start = Instant::now();
                for _ in 0..iters {
                    let z = logits.clone().require_grad();
                    let e = if which == "msloss-call" {
                        match loss.forward(z.clone(), image.clone(), None) {
                            Ok(e) => e,
                            Err(err) => panic!("msloss: {err}"),
                        }
                    } else {
                        peer::peer_loss(z.clone(), image.clone(), None, &params)
                    };
                    let grads = (e * beta).backward();
                    let _g = z.grad(&grads);
                }
                sync(&device);
                start.elapsed()
            });
        });
    }
    for which in ["ce", "ce+msloss", "ce+peer"] {
        group.bench_function(BenchmarkId::new(which, format!("{batch}x{classes}x1x{side}x{side}")), |bch| {
            bch.iter_custom(|iters| {
                let mut model = unet::UNet::new(12, classes, &device);
                let mut optim = AdamConfig::new().init();
                sync(&device);
                let start = Instant::now();
                for _ in 0..iters {
                    let logits = model.forward(image.clone());
                    let ce = msloss_burn::masked_cross_entropy(logits.clone(), one_hot.clone(), weight.clone());
                    let total = match which {
                        "ce" => ce,
                        "ce+msloss" => match loss.forward(logits, image.clone(), None) {
                            Ok(e) => ce + e * beta,
                            Err(err) => panic!("msloss: {err}"),
                        },
                        _ => ce + peer::peer_loss(logits, image.clone(), None, &params) * beta,
                    };
                    let grads = GradientsParams::from_grads(total.backward(), &model);
                    model = optim.step(1e-3, model, grads);
                }
                sync(&device);
                start.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_step);
criterion_main!(benches);
