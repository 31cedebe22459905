//! The paper's semi-, un- and fully supervised claims, reproduced small, on the CPU or a GPU.
//!
//! A small U-Net-like CNN segments procedurally generated images (several shapes in two
//! intensity classes on a background, with per-image gain, illumination gradient and noise;
//! the ground truth is known). Three runs with the same seed, initial weights and step budget:
//!
//! - (a) `ce_only`: cross-entropy on 5% of the training images (the labelled ones);
//! - (b) `ce_plus_ms`: the same cross-entropy + β·Mumford–Shah on all training images;
//! - (c) `ms_only`: Mumford–Shah alone, no labels; its classes are matched to the truth by
//!   the optimal one-to-one assignment (exhaustive over the N! permutations — what the
//!   Hungarian algorithm computes — on the test set's confusion matrix).
//!
//! Then the fourth claim (RQ4: the loss as a regulariser of fully supervised training), over
//! several seeds (each with its own data, initial weights and batches, shared by the pair):
//!
//! - (d) `ce_all`: cross-entropy on every image of each batch (all training images labelled);
//! - (e) `ce_all_plus_ms`: the same cross-entropy + β·Mumford–Shah on the same batches.
//!
//! Each is scored on a held-out test set: Dice and IoU per class from the pooled confusion
//! matrix, averaged over the classes (background included).
//!
//! ```text
//! cargo run --release -p msloss-burn --example semi_supervised -- [--seed S] [--json results.json] [--steps N]
//!     [--rq4-seeds K] [--backend cpu|wgpu]
//! ```
//!
//! `--backend wgpu` trains on burn's wgpu backend with the loss on the device (zero-copy); it
//! needs the crate's `wgpu` feature (`--features wgpu`).

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{DType, Device, Tensor, TensorData};
use msloss_burn::{MsLoss, SemiSupervised, Timing};
use unet::UNet;

#[path = "common/unet.rs"]
mod unet;
use msloss_core::rng::SplitMix64;
use msloss_core::{LengthKind, Params, Reduction};

/// Image side.
const SIZE: usize = 32;
/// Classes: background, "grey" objects, "bright" objects.
const CLASSES: usize = 3;
const N_TRAIN: usize = 200;
const N_TEST: usize = 100;
/// 5% of the training images carry labels.
const N_LABELLED: usize = N_TRAIN / 20;
const LABELLED_BATCH: usize = 4;
const UNLABELLED_BATCH: usize = 8;
/// Weight α of the cross-entropy in `α·CE + β·MS`.
const ALPHA: f64 = 1.0;

// ---------------------------------------------------------------------------------------------
// The data set.

/// Images `[n, 1, SIZE, SIZE]` in `[0, 1]`-ish and labels `[n, SIZE, SIZE]` in `0..CLASSES`.
struct Data {
    images: Vec<f32>,
    labels: Vec<u8>,
    n: usize,
}

impl Data {
    /// `n` images drawn from `rng`.
    fn generate(n: usize, rng: &mut SplitMix64) -> Self {
        let px = SIZE * SIZE;
        let mut images = vec![0.0f32; n * px];
        let mut labels = vec![0u8; n * px];
        for i in 0..n {
            let lab = &mut labels[i * px..(i + 1) * px];
            // Which shape covers each pixel (0: background; a later shape covers an earlier one).
            let mut owner = vec![0usize; px];
            // Class intensities before gain: background, grey, bright; each shape varies a little.
            let class_level = [rng.range(0.05, 0.2), rng.range(0.45, 0.55), rng.range(0.8, 0.95)];
            let shapes = 2 + rng.below(3);
            let mut level = vec![class_level[0]];
            for s in 1..=shapes {
                let class = 1 + rng.below(2);
                level.push(class_level[class] + rng.range(-0.04, 0.04));
                let (cy, cx) = (rng.range(5.0, 27.0), rng.range(5.0, 27.0));
                let r = rng.range(3.5, 7.5);
                let kind = rng.below(3);
                let (ry, rx) = (r * rng.range(0.6, 1.2), r * rng.range(0.6, 1.2));
                for y in 0..SIZE {
                    for x in 0..SIZE {
                        let (dy, dx) = (y as f64 + 0.5 - cy, x as f64 + 0.5 - cx);
                        let inside = match kind {
                            0 => (dy / ry).powi(2) + (dx / rx).powi(2) <= 1.0, // ellipse
                            1 => dy.abs() <= ry && dx.abs() <= rx,             // rectangle
                            _ => dy.abs() <= ry && dx.abs() <= (dy + ry) * 0.5 * rx / ry, // triangle
                        };
                        if inside {
                            lab[y * SIZE + x] = class as u8;
                            owner[y * SIZE + x] = s;
                        }
                    }
                }
            }
            // Per-image gain and offset, an illumination gradient, and noise.
            let gain = rng.range(0.7, 1.3);
            let offset = rng.range(-0.05, 0.05);
            let (gy, gx) = (rng.range(-0.1, 0.1), rng.range(-0.1, 0.1));
            let img = &mut images[i * px..(i + 1) * px];
            for y in 0..SIZE {
                for x in 0..SIZE {
                    let s = y * SIZE + x;
                    let base = level[owner[s]];
                    let illum = gy * (y as f64 / SIZE as f64 - 0.5) + gx * (x as f64 / SIZE as f64 - 0.5);
                    img[s] = (gain * base + offset + illum + 0.06 * rng.normal()) as f32;
                }
            }
        }
        Self { images, labels, n }
    }

    /// The images `idx` as a `[b, 1, SIZE, SIZE]` tensor.
    fn image_batch(&self, idx: &[usize], device: &Device) -> Tensor<4> {
        let px = SIZE * SIZE;
        let v: Vec<f32> = idx.iter().flat_map(|&i| self.images[i * px..(i + 1) * px].iter().copied()).collect();
        Tensor::from_data(TensorData::new(v, [idx.len(), 1, SIZE, SIZE]), (device, DType::F32))
    }

    /// One-hot labels `[b, CLASSES, SIZE, SIZE]` of the images `idx`.
    fn one_hot_batch(&self, idx: &[usize], device: &Device) -> Tensor<4> {
        let px = SIZE * SIZE;
        let mut v = vec![0.0f32; idx.len() * CLASSES * px];
        for (j, &i) in idx.iter().enumerate() {
            for s in 0..px {
                v[(j * CLASSES + self.labels[i * px + s] as usize) * px + s] = 1.0;
            }
        }
        Tensor::from_data(TensorData::new(v, [idx.len(), CLASSES, SIZE, SIZE]), (device, DType::F32))
    }
}

// ---------------------------------------------------------------------------------------------
// Training and scoring.

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    CeOnly,
    CePlusMs,
    MsOnly,
    CeAll,
    CeAllPlusMs,
}

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Mode::CeOnly => "ce_only",
            Mode::CePlusMs => "ce_plus_ms",
            Mode::MsOnly => "ms_only",
            Mode::CeAll => "ce_all",
            Mode::CeAllPlusMs => "ce_all_plus_ms",
        }
    }
}

#[derive(Default)]
struct RunStats {
    wall: Duration,
    ms: Timing,
    ms_calls: u32,
}

impl RunStats {
    /// Adds one loss call's timing.
    fn add(&mut self, t: Timing) {
        self.ms.path = t.path;
        self.ms.download += t.download;
        self.ms.compute += t.compute;
        self.ms.upload += t.upload;
        self.ms_calls += 1;
    }
}

fn train(
    mode: Mode,
    train: &Data,
    seed: u64,
    args: &Args,
    device: &Device,
) -> Result<(UNet, RunStats), msloss_burn::Error> {
    let steps = args.steps;
    device.seed(seed);
    let mut model = UNet::new(12, CLASSES, device);
    let mut optim = AdamConfig::new().init();
    let params = Params::default().with_lambda(args.lambda).with_length(LengthKind::L1).with_reduction(Reduction::Mean);
    let (alpha, beta) = match mode {
        Mode::CeOnly | Mode::CeAll => (ALPHA, 0.0),
        Mode::CePlusMs | Mode::CeAllPlusMs => (ALPHA, args.beta),
        Mode::MsOnly => (0.0, args.beta),
    };
    let objective = SemiSupervised::new(alpha, beta, MsLoss::new(params));
    // The same batches in every run: one generator for the sampling, seeded alike.
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    let mut stats = RunStats::default();
    let start = Instant::now();
    for step in 0..steps {
        let labelled: Vec<usize> = (0..LABELLED_BATCH).map(|_| rng.below(N_LABELLED)).collect();
        let any: Vec<usize> = (0..UNLABELLED_BATCH).map(|_| rng.below(train.n)).collect();
        let total = match mode {
            Mode::CeOnly => {
                let logits = model.forward(train.image_batch(&labelled, device));
                let w = Tensor::<4>::ones([LABELLED_BATCH, 1, SIZE, SIZE], (device, DType::F32));
                msloss_burn::masked_cross_entropy(logits, train.one_hot_batch(&labelled, device), w) * alpha
            }
            Mode::CePlusMs | Mode::MsOnly => {
                // One batch: the labelled images first (CE weight 1), then images from the
                // whole training set (weight 0); the Mumford–Shah term sees all of them.
                let idx: Vec<usize> =
                    if mode == Mode::CePlusMs { labelled.iter().chain(&any).copied().collect() } else { any.clone() };
                let image = train.image_batch(&idx, device);
                let logits = model.forward(image.clone());
                let labels = (mode == Mode::CePlusMs).then(|| {
                    let w: Vec<f32> = (0..idx.len())
                        .flat_map(|j| [if j < LABELLED_BATCH { 1.0 } else { 0.0 }; SIZE * SIZE])
                        .collect();
                    let w = Tensor::from_data(TensorData::new(w, [idx.len(), 1, SIZE, SIZE]), (device, DType::F32));
                    (train.one_hot_batch(&idx, device), w)
                });
                let parts = objective.forward(logits, image, None, labels)?;
                stats.add(objective.ms.last().1);
                parts.total
            }
            Mode::CeAll | Mode::CeAllPlusMs => {
                // Every image is labelled: 12 images from the whole training set (the 8 drawn
                // above and 4 more), the same in both runs of the pair.
                let extra: Vec<usize> = (0..LABELLED_BATCH).map(|_| rng.below(train.n)).collect();
                let idx: Vec<usize> = any.iter().chain(&extra).copied().collect();
                let image = train.image_batch(&idx, device);
                let logits = model.forward(image.clone());
                let one_hot = train.one_hot_batch(&idx, device);
                let w = Tensor::<4>::ones([idx.len(), 1, SIZE, SIZE], (device, DType::F32));
                if mode == Mode::CeAll {
                    msloss_burn::masked_cross_entropy(logits, one_hot, w) * alpha
                } else {
                    let parts = objective.forward(logits, image, None, Some((one_hot, w)))?;
                    stats.add(objective.ms.last().1);
                    parts.total
                }
            }
        };
        if step % 50 == 0 || step + 1 == steps {
            let v = total.to_data().try_into_vec_as::<f64>().map_or(f64::NAN, |v| v[0]);
            eprintln!("  {:>10} step {step:>4}: loss {v:.5}", mode.key());
        }
        let grads = GradientsParams::from_grads(total.backward(), &model);
        model = optim.step(args.lr, model, grads);
    }
    stats.wall = start.elapsed();
    Ok((model, stats))
}

/// The pooled confusion matrix `[truth][prediction]` on `data`.
fn confusion(model: &UNet, data: &Data, device: &Device) -> [[u64; CLASSES]; CLASSES] {
    let model = model.valid();
    let mut m = [[0u64; CLASSES]; CLASSES];
    let px = SIZE * SIZE;
    for chunk in (0..data.n).collect::<Vec<_>>().chunks(25) {
        let logits = model.forward(data.image_batch(chunk, &device.clone().without_autodiff()));
        let pred = logits.argmax(1).to_data().try_into_vec_as::<i64>().unwrap_or_default();
        for (j, &i) in chunk.iter().enumerate() {
            for s in 0..px {
                let p = pred.get(j * px + s).copied().unwrap_or(0) as usize;
                m[data.labels[i * px + s] as usize][p.min(CLASSES - 1)] += 1;
            }
        }
    }
    m
}

/// The prediction relabelling `perm[p] = t` maximising the matched pixels.
fn best_matching(m: &[[u64; CLASSES]; CLASSES]) -> [usize; CLASSES] {
    let score = |p: &[usize; CLASSES]| (0..CLASSES).map(|k| m[p[k]][k]).sum::<u64>();
    // Heap's algorithm enumerates the N! permutations (N = 3 here: exact and instant).
    let mut perm: [usize; CLASSES] = core::array::from_fn(|k| k);
    let mut best = (perm, score(&perm));
    let mut c = [0usize; CLASSES];
    let mut i = 1;
    while i < CLASSES {
        if c[i] < i {
            perm.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
            if score(&perm) > best.1 {
                best = (perm, score(&perm));
            }
            c[i] += 1;
            i = 1;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
    best.0
}

/// Mean Dice and mean IoU over the classes, predictions relabelled by `perm`.
fn scores(m: &[[u64; CLASSES]; CLASSES], perm: [usize; CLASSES]) -> (f64, f64) {
    let mut r = [[0u64; CLASSES]; CLASSES];
    for t in 0..CLASSES {
        for p in 0..CLASSES {
            r[t][perm[p]] += m[t][p];
        }
    }
    let (mut dice, mut iou) = (0.0, 0.0);
    for (k, row) in r.iter().enumerate() {
        let tp = row[k] as f64;
        let truth: f64 = row.iter().sum::<u64>() as f64;
        let pred: f64 = (0..CLASSES).map(|t| r[t][k]).sum::<u64>() as f64;
        dice += if truth + pred > 0.0 { 2.0 * tp / (truth + pred) } else { 1.0 };
        iou += if truth + pred - tp > 0.0 { tp / (truth + pred - tp) } else { 1.0 };
    }
    (dice / CLASSES as f64, iou / CLASSES as f64)
}

/// The command line; the defaults are the hyper-parameters reported in BENCHMARKS.md.
struct Args {
    seed: u64,
    json: Option<String>,
    steps: usize,
    /// Adam's learning rate.
    lr: f64,
    /// Weight β of the Mumford–Shah loss (in (b), (c) and (e)).
    beta: f64,
    /// λ of the length term (mean reduction, L1 length as published).
    lambda: f64,
    /// RQ4 runs on seeds `seed .. seed + rq4_seeds` (0: not run).
    rq4_seeds: u64,
    /// `cpu` (burn's flex backend) or `wgpu`.
    backend: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seed: 1,
        json: None,
        steps: 300,
        lr: 3e-3,
        beta: 20.0,
        lambda: 1e-4,
        rq4_seeds: 3,
        backend: "cpu".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--seed" => args.seed = value("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--steps" => args.steps = value("--steps")?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--json" => args.json = Some(value("--json")?),
            "--lr" => args.lr = value("--lr")?.parse().map_err(|e| format!("--lr: {e}"))?,
            "--beta" => args.beta = value("--beta")?.parse().map_err(|e| format!("--beta: {e}"))?,
            "--lambda" => args.lambda = value("--lambda")?.parse().map_err(|e| format!("--lambda: {e}"))?,
            "--rq4-seeds" => args.rq4_seeds = value("--rq4-seeds")?.parse().map_err(|e| format!("--rq4-seeds: {e}"))?,
            "--backend" => args.backend = value("--backend")?,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; expected --seed S, --json FILE, --steps N, --lr X, --beta X, \
                     --lambda X, --rq4-seeds K, --backend cpu|wgpu"
                ));
            }
        }
    }
    Ok(args)
}

/// The autodiff device of `backend`.
fn open_device(backend: &str) -> Result<Device, String> {
    match backend {
        "cpu" => Ok(Device::flex().autodiff()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(msloss_burn::gpu::default_device().map_err(|e| e.to_string())?.autodiff()),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => Err("--backend wgpu needs msloss-burn's wgpu feature: add --features wgpu to cargo run".into()),
        other => Err(format!("--backend {other:?}: expected cpu or wgpu")),
    }
}

/// The training and test sets of `seed`.
fn data_sets(seed: u64) -> (Data, Data) {
    let mut rng = SplitMix64::new(seed);
    let train_set = Data::generate(N_TRAIN, &mut rng);
    (train_set, Data::generate(N_TEST, &mut rng))
}

/// Trains `mode` on `seed`'s data and scores it on the test set: `(dice, miou, stats, perm)`.
fn run(
    mode: Mode,
    seed: u64,
    sets: &(Data, Data),
    args: &Args,
    device: &Device,
) -> Result<(f64, f64, RunStats, [usize; CLASSES]), msloss_burn::Error> {
    let (model, stats) = train(mode, &sets.0, seed, args, device)?;
    let m = confusion(&model, &sets.1, device);
    let perm = if mode == Mode::MsOnly { best_matching(&m) } else { core::array::from_fn(|k| k) };
    let (dice, miou) = scores(&m, perm);
    Ok((dice, miou, stats, perm))
}

/// One seed of RQ4: (Dice, mIoU) of (d) and (e), and their training times in seconds.
struct Rq4 {
    ce: [f64; 2],
    ce_ms: [f64; 2],
    wall: [f64; 2],
}

/// Mean and sample standard deviation.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { f64::NAN };
    (mean, var.sqrt())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let device = open_device(&args.backend)?;
    let sets = data_sets(args.seed);
    eprintln!(
        "data: {N_TRAIN} training images ({N_LABELLED} labelled), {N_TEST} test images, {SIZE}x{SIZE}, {CLASSES} classes; \
         {} steps, Adam lr {}, alpha {ALPHA}, beta {}, lambda {} (L1, mean), seed {}, backend {}",
        args.steps, args.lr, args.beta, args.lambda, args.seed, args.backend
    );
    let mut rows = Vec::new();
    for mode in [Mode::CeOnly, Mode::CePlusMs, Mode::MsOnly] {
        let (dice, miou, stats, perm) = run(mode, args.seed, &sets, &args, &device)?;
        rows.push((mode, dice, miou, stats, perm));
    }
    // RQ4: the pair on each seed; the first seed's data are the ones above.
    let rq4_seeds: Vec<u64> = (args.seed..args.seed.saturating_add(args.rq4_seeds)).collect();
    let mut rq4 = Vec::new();
    for &seed in &rq4_seeds {
        let own;
        let sets = if seed == args.seed {
            &sets
        } else {
            own = data_sets(seed);
            &own
        };
        let (d0, m0, s0, _) = run(Mode::CeAll, seed, sets, &args, &device)?;
        let (d1, m1, s1, _) = run(Mode::CeAllPlusMs, seed, sets, &args, &device)?;
        eprintln!("  rq4 seed {seed}: ce_all Dice {d0:.4} mIoU {m0:.4}; ce_all_plus_ms Dice {d1:.4} mIoU {m1:.4}");
        rq4.push(Rq4 { ce: [d0, m0], ce_ms: [d1, m1], wall: [s0.wall.as_secs_f64(), s1.wall.as_secs_f64()] });
    }
    println!(
        "\n| run | test Dice | test mIoU | train time | MS per call: host round trip (download / msloss / upload) or device |"
    );
    println!("|---|---|---|---|---|");
    let per_call = |s: &RunStats| {
        let per = |d: Duration| if s.ms_calls > 0 { d.as_secs_f64() * 1e3 / f64::from(s.ms_calls) } else { 0.0 };
        match (s.ms_calls, s.ms.path) {
            (0, _) => "—".to_string(),
            (_, msloss_burn::Path::Host) => {
                format!("{:.3} / {:.3} / {:.3} ms", per(s.ms.download), per(s.ms.compute), per(s.ms.upload))
            }
            (_, msloss_burn::Path::Device) => format!("device, {:.3} ms to record", per(s.ms.compute)),
        }
    };
    for (mode, dice, miou, s, perm) in &rows {
        let matched = if *mode == Mode::MsOnly { format!(" (classes matched {perm:?})") } else { String::new() };
        println!(
            "| {}{matched} | {dice:.4} | {miou:.4} | {:.1} s | {} |",
            mode.key(),
            s.wall.as_secs_f64(),
            per_call(s)
        );
    }
    let column = |f: &dyn Fn(&Rq4) -> f64| rq4.iter().map(f).collect::<Vec<_>>();
    let series = [
        ("ce_all", column(&|r| r.ce[0]), column(&|r| r.ce[1])),
        ("ce_all_plus_ms", column(&|r| r.ce_ms[0]), column(&|r| r.ce_ms[1])),
        ("difference (e) − (d)", column(&|r| r.ce_ms[0] - r.ce[0]), column(&|r| r.ce_ms[1] - r.ce[1])),
    ];
    if !rq4.is_empty() {
        let times = [mean_sd(&column(&|r| r.wall[0])).0, mean_sd(&column(&|r| r.wall[1])).0, f64::NAN];
        for ((name, dice, miou), t) in series.iter().zip(times) {
            let ((dm, ds), (mm, msd)) = (mean_sd(dice), mean_sd(miou));
            let t = if t.is_nan() { "—".to_string() } else { format!("{t:.1} s") };
            println!(
                "| RQ4 {name}, seeds {}..={} (mean ± sd) | {dm:.4} ± {ds:.4} | {mm:.4} ± {msd:.4} | {t} | |",
                rq4_seeds[0],
                rq4_seeds[rq4_seeds.len() - 1]
            );
        }
    }
    if let Some(path) = &args.json {
        let mut obj: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(mode, dice, miou, _, _)| (mode.key().to_string(), serde_json::json!({ "dice": dice, "miou": miou })))
            .collect();
        obj.insert("backend".into(), args.backend.clone().into());
        if !rq4.is_empty() {
            let stat = |v: &[f64]| {
                let (mean, sd) = mean_sd(v);
                serde_json::json!({ "per_seed": v, "mean": mean, "sd": if sd.is_nan() { None } else { Some(sd) } })
            };
            let mut r: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
            r.insert("seeds".into(), serde_json::json!(rq4_seeds));
            r.insert("beta".into(), args.beta.into());
            for (name, dice, miou) in &series {
                let key = if name.starts_with("difference") { "difference" } else { name };
                r.insert(key.to_string(), serde_json::json!({ "dice": stat(dice), "miou": stat(miou) }));
            }
            obj.insert("rq4".into(), r.into());
        }
        std::fs::write(path, serde_json::to_string_pretty(&serde_json::Value::Object(obj))? + "\n")?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
