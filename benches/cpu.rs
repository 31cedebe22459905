//! Criterion benches of the CPU backend: loss and gradient on the shapes S1–S4 (f32
//! and f64, logits and probabilities), a size sweep from 64² to 2048² and a 3D volume, and one
//! core's STREAM triad for the machine's bandwidth. Throughput is the memory floor
//! `(3N + 2C)·B·D·H·W` elements (read scores and image twice, write the gradient once).
//!
//! Run: `cargo bench --bench cpu` (`-- cpu/S4` for one group).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use msloss::cpu::CpuBackend;
use msloss::cpu::CpuFloat;
use msloss::rng::RandomInputs;
use msloss::{Backend, Input, Params, Scores, Shape};

/// The shapes `(name, B, N, C, H, W)`.
const SHAPES: [(&str, usize, usize, usize, usize, usize); 4] =
    [("S1", 4, 2, 3, 256, 256), ("S2", 8, 21, 3, 128, 128), ("S3", 1, 4, 3, 512, 512), ("S4", 2, 21, 3, 512, 512)];

fn floor_bytes<T>(s: Shape) -> u64 {
    ((3 * s.classes() + 2 * s.channels()) * s.batch() * s.spatial() * size_of::<T>()) as u64
}

/// Times loss and gradient of `shape` in `T` under `id` in `group`.
fn bench_shape<T: CpuFloat>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    shape: Shape,
    logits: bool,
) {
    let data = RandomInputs::<T>::new(shape, 1);
    let scores = if logits { Scores::Logits(&data.logits[..]) } else { Scores::Probs(&data.probs[..]) };
    let input = Input::new(shape, scores, &data.image, None).expect("inputs fit the shape");
    let backend = CpuBackend::new();
    let mut ws = backend.workspace();
    let mut grad = vec![T::zero(); shape.scores_len()];
    let params = Params::default();
    group.throughput(Throughput::Bytes(floor_bytes::<T>(shape)));
    group.bench_function(id, |b| {
        b.iter(|| black_box(backend.energy_and_grad(&input, &params, &mut grad, &mut ws).expect("valid input")))
    });
}

fn shapes(c: &mut Criterion) {
    for (name, b, n, ch, h, w) in SHAPES {
        let shape = Shape::new_2d(b, n, ch, h, w).expect("valid shape");
        let mut group = c.benchmark_group(format!("cpu/{name}"));
        group.sample_size(20);
        bench_shape::<f32>(&mut group, BenchmarkId::new("f32", "logits"), shape, true);
        bench_shape::<f32>(&mut group, BenchmarkId::new("f32", "probs"), shape, false);
        bench_shape::<f64>(&mut group, BenchmarkId::new("f64", "logits"), shape, true);
        group.finish();
    }
}

fn sweep(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu/sweep");
    group.sample_size(10);
    for side in [64, 128, 256, 512, 1024, 2048] {
        let shape = Shape::new_2d(1, 4, 3, side, side).expect("valid shape");
        bench_shape::<f32>(&mut group, BenchmarkId::new("f32-1x4x3", format!("{side}x{side}")), shape, true);
    }
    let volume = Shape::new(1, 4, 3, 64, 64, 64).expect("valid shape");
    bench_shape::<f32>(&mut group, BenchmarkId::new("f32-1x4x3", "64x64x64"), volume, true);
    group.finish();
}

/// One core's STREAM triad `a = b + s·c` on 64 MiB arrays: 24 bytes per element.
fn triad(c: &mut Criterion) {
    const LEN: usize = 1 << 23;
    let b = vec![1.0f64; LEN];
    let cc = vec![2.0f64; LEN];
    let mut a = vec![0.0f64; LEN];
    let mut group = c.benchmark_group("cpu/triad");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((3 * 8 * LEN) as u64));
    group.bench_function("f64-64MiB", |bench| {
        bench.iter(|| {
            for ((a, b), c) in a.iter_mut().zip(&b).zip(&cc) {
                *a = b + 3.0 * c;
            }
            black_box(&mut a);
        })
    });
    group.finish();
}

criterion_group!(benches, triad, shapes, sweep);
criterion_main!(benches);
