//! `msloss bench`: times the loss and gradient on seeded inputs and prints one JSON object.
//!
//! The memory floor is the traffic a perfect implementation cannot avoid: reading the scores and
//! the image twice (the centroids need a full pass before any gradient) and writing the
//! gradient once, `(3N + 2C)·B·D·H·W` elements. `gbps` is that traffic divided by the median
//! time; with `--triad` the machine's one-core STREAM-triad bandwidth is measured in the same
//! run, so the two can be compared.

use std::time::Instant;

use msloss::{Backend, Input, Shape};

use crate::backends::{AnyBackend, BackendArgs};
use crate::params::{DtypeArg, InputArg, ParamArgs, parse_shape};
use crate::sys;

/// Arguments of `msloss bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The shape B,N,C,H,W or B,N,C,H,W,D (D: depth of a 3D volume).
    #[arg(long, value_parser = parse_shape)]
    shape: Shape,
    /// The backend and its threads.
    #[command(flatten)]
    backend: BackendArgs,
    /// The float type.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// Differentiate wrt logits or probabilities.
    #[arg(long, value_enum, default_value_t = InputArg::Logits)]
    input: InputArg,
    /// Timed iterations (after one untimed warm-up call), 1 to 1,000,000.
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    iters: usize,
    /// Use a random mask (about 80% valid pixels).
    #[arg(long)]
    mask: bool,
    /// Also measure one core's triad bandwidth (adds "triad_gbps" and "floor_ms").
    #[arg(long)]
    triad: bool,
    /// The loss parameters.
    #[command(flatten)]
    params: ParamArgs,
}

impl Args {
    /// The loss parameters' flags.
    pub(crate) fn params(&self) -> &ParamArgs {
        &self.params
    }
    /// The backend's flags.
    pub(crate) fn backend(&self) -> &BackendArgs {
        &self.backend
    }
}

/// Runs `msloss bench`.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let backend = args.backend.build()?;
    let (times, elem) = match args.dtype {
        DtypeArg::F32 => (time::<f32>(args, &backend)?, 4),
        DtypeArg::F64 => (time::<f64>(args, &backend)?, 8),
    };
    let s = args.shape;
    let floor_bytes = (3 * s.classes() + 2 * s.channels()) * s.batch() * s.spatial() * elem;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let (Some(&min), Some(&median)) = (sorted.first(), sorted.get(sorted.len() / 2)) else {
        anyhow::bail!("no timings: --iters must be at least 1");
    };
    let shape = format!("{},{},{},{},{},{}", s.batch(), s.classes(), s.channels(), s.height(), s.width(), s.depth());
    let threads = match args.backend.threads {
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut json = serde_json::json!({
        "backend": Backend::<f32>::name(&backend),
        "shape": shape,
        "dtype": match args.dtype { DtypeArg::F32 => "f32", DtypeArg::F64 => "f64" },
        "threads": threads,
        "median_ms": round3(median * 1e3),
        "min_ms": round3(min * 1e3),
        "floor_bytes": floor_bytes,
        "gbps": round3(floor_bytes as f64 / median / 1e9),
    });
    if let Some(fields) = json.as_object_mut() {
        if let AnyBackend::Cpu(cpu) = &backend {
            fields.insert("isa".into(), cpu.isa().name().into());
        }
        if args.triad {
            let bw = triad_bandwidth();
            fields.insert("triad_gbps".into(), round3(bw / 1e9).into());
            fields.insert("floor_ms".into(), round3(floor_bytes as f64 / bw * 1e3).into());
        }
    }
    sys::print_json(&json)
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

/// Seconds per call of loss and gradient, one entry per timed iteration.
fn time<T: msloss::cpu::CpuFloat>(args: &Args, backend: &AnyBackend) -> anyhow::Result<Vec<f64>> {
    let params = args.params.params()?;
    let shape = args.shape;
    let elem = size_of::<T>();
    // Seeded logits, probabilities, image and mask, and the gradient.
    let need = sys::bytes(&[(shape.scores_len(), 3 * elem), (shape.image_len(), elem), (shape.mask_len(), elem)]);
    sys::ensure_memory(need, "this shape")?;
    let data = args.input.data::<T>(shape, 1);
    let scores = args.input.scores(&data);
    let input = Input::new(shape, scores, &data.image, args.mask.then_some(&data.mask[..]))?;
    let mut ws = Backend::<T>::workspace(backend);
    let mut grad = vec![T::zero(); shape.scores_len()];
    backend.energy_and_grad(&input, &params, &mut grad, &mut ws)?;
    let mut times = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t = Instant::now();
        let e = backend.energy_and_grad(&input, &params, &mut grad, &mut ws)?;
        times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(e);
    }
    Ok(times)
}

/// One core's STREAM triad `a = b + s·c` over arrays well beyond the caches, counting 24 bytes
/// per element (two reads, one write); the best of a few runs, in bytes per second.
fn triad_bandwidth() -> f64 {
    const LEN: usize = 1 << 23; // 64 MiB per array
    let b = vec![1.0f64; LEN];
    let c = vec![2.0f64; LEN];
    let mut a = vec![0.0f64; LEN];
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let t = Instant::now();
        for ((a, b), c) in a.iter_mut().zip(&b).zip(&c) {
            *a = b + 3.0 * c;
        }
        std::hint::black_box(&mut a);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (3 * 8 * LEN) as f64 / best
}
