//! msloss's op against the burn-ops peer (`tests/common/peer.rs`: the loss in burn tensor
//! operations, differentiated by burn's autodiff) on the same burn wgpu device, per loss call:
//! forward and backward, the gradient wrt the logits left on the device, the device synced
//! before the clock stops (`iter_custom`). Names: `burn-wgpu/{msloss,peer}/<shape>`.
//!
//! `MSLOSS_BENCH_SHAPES` (`B,N,C,H,W;...`) replaces the default shapes, which are small enough
//! for Mesa's lavapipe; on a GPU, `2,21,3,512,512` is the reference shape. On a machine
//! without a GPU this measures lavapipe, not a GPU.

#[path = "../tests/common/peer.rs"]
mod peer;

use std::time::{Duration, Instant};

use burn::tensor::{DType, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use msloss_burn::MsLoss;
use msloss_core::rng::RandomInputs;
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

criterion_group!(benches, bench);
criterion_main!(benches);
