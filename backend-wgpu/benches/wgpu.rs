//! Benches of the wgpu backend (names prefixed `wgpu/`).
//!
//! - `wgpu/device/...`: the device-resident path a trainer uses — record the plan into an
//!   encoder, submit, wait for the device (`device.poll(wait)`) before the clock stops. Inputs
//!   stay on the device; nothing is read back.
//! - `wgpu/host/...`: the `Backend<f32>` path — upload, dispatch, read back gradient and energy.
//!
//! Both use `iter_custom`, so each sample's time covers the GPU work to completion. On a
//! machine without a GPU this measures Mesa's lavapipe (software Vulkan), not a GPU.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use msloss_core::rng::RandomInputs;
use msloss_core::{Backend, Input, LengthKind, Params, Scores, Shape};
use msloss_wgpu::{DeviceBuffers, ENERGY_BYTES, ScoresKind, WgpuBackend};
use wgpu::BufferUsages as U;

fn shapes() -> Vec<(&'static str, Shape)> {
    let s = |b, n, c, d, h, w| Shape::new(b, n, c, d, h, w).expect("bench shape");
    vec![
        ("2d_b4_n4_c3_256x256", s(4, 4, 3, 1, 256, 256)),
        ("2d_b1_n2_c1_1024x1024", s(1, 2, 1, 1, 1024, 1024)),
        ("3d_b1_n3_c1_64x64x64", s(1, 3, 1, 64, 64, 64)),
    ]
}

fn bytes(shape: Shape) -> u64 {
    4 * (shape.scores_len() + shape.image_len()) as u64
}

fn upload(b: &WgpuBackend, data: &[f32]) -> wgpu::Buffer {
    let buf = b.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench input"),
        size: 4 * data.len() as u64,
        usage: U::STORAGE | U::COPY_DST,
        mapped_at_creation: false,
    });
    b.queue().write_buffer(&buf, 0, bytemuck::cast_slice(data));
    buf
}

fn bench(c: &mut Criterion) {
    let backend = match WgpuBackend::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("wgpu benches skipped: {e}");
            return;
        }
    };
    eprintln!("wgpu benches on {:?} ({:?})", backend.adapter_info().name, backend.adapter_info().backend);
    let params = Params::default().with_length(LengthKind::Charbonnier);

    let mut group = c.benchmark_group("wgpu/device/logits_energy_grad");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (name, shape) in shapes() {
        let data = RandomInputs::<f32>::new(shape, 1);
        let out = |bytes: u64| {
            backend.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench output"),
                size: bytes,
                usage: U::STORAGE | U::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let buffers = DeviceBuffers {
            scores: upload(&backend, &data.logits).into(),
            image: upload(&backend, &data.image).into(),
            mask: Some(upload(&backend, &data.mask).into()),
            grad: Some(out(4 * shape.scores_len() as u64).into()),
            centroids: None,
            energy: out(ENERGY_BYTES).into(),
        };
        let plan = match backend.plan(shape, &params, buffers.io(ScoresKind::Logits)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{name}: {e}");
                continue;
            }
        };
        group.throughput(Throughput::Bytes(bytes(shape)));
        group.bench_function(BenchmarkId::from_parameter(name), |bch| {
            bch.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut encoder = backend.device().create_command_encoder(&Default::default());
                    if let Err(e) = plan.encode(&mut encoder, &buffers) {
                        eprintln!("encode: {e}");
                    }
                    backend.queue().submit([encoder.finish()]);
                    // Wait for the device before the clock stops.
                    if let Err(e) = backend.device().poll(wgpu::PollType::wait_indefinitely()) {
                        eprintln!("poll: {e}");
                    }
                }
                start.elapsed()
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("wgpu/host/logits_energy_grad");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (name, shape) in shapes() {
        let data = RandomInputs::<f32>::new(shape, 1);
        let input = match Input::new(shape, Scores::Logits(&data.logits), &data.image, Some(&data.mask)) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("{name}: {e}");
                continue;
            }
        };
        let mut ws = Backend::<f32>::workspace(&backend);
        let mut grad = vec![0.0f32; shape.scores_len()];
        group.throughput(Throughput::Bytes(bytes(shape)));
        group.bench_function(BenchmarkId::from_parameter(name), |bch| {
            bch.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    // evaluate() waits for the device and reads the results back.
                    if let Err(e) = backend.energy_and_grad(&input, &params, &mut grad, &mut ws) {
                        eprintln!("{name}: {e}");
                    }
                }
                start.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
