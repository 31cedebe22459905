//! `msloss segment`: unsupervised multiphase segmentation of an image or volume by minimising the
//! Mumford–Shah energy over per-pixel logits (see `msloss_segment::segment`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use msloss::LengthKind;
use msloss_segment::auto::AUTO_RANGE;
use msloss_segment::output::{self, Format, Staged};
use msloss_segment::synth::{self, SynthSpec};
use msloss_segment::{SegmentConfig, Summary, Volume, metrics, segment, segment_auto};

use crate::backends::BackendArgs;
use crate::params::{FidelityArg, LengthArg};

/// Arguments of `msloss segment`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The image (PNG, JPEG or TIFF; grey or colour; 8 or 16 bit: divided by 255 or 65535; grey float TIFFs as
    /// they are) or an .npy array `[H,W]`, `[C,H,W]` or `[C,D,H,W]` (uint8/uint16 scaled likewise, floats as
    /// they are).
    /// Without it, a built-in synthetic image with known ground truth is segmented and scored.
    input: Option<PathBuf>,
    /// The number of phases K (2 to 255), or `auto`: K from 2 to 8, the one whose segmentation has the
    /// shortest description length (residuals + phase means + boundaries; see README). Default for the
    /// built-in images: 3 (Voronoi), 4 (small-close).
    #[arg(long, short = 'k', value_parser = parse_phases)]
    phases: Option<Phases>,
    /// Length weight, in units of the image's within-phase variance σ̂² (so the default suits any
    /// image size and intensity range), raised where the two closest phases are only r noise
    /// deviations apart: λ = lambda·σ̂²·(1 + 12/max(r, 2)²).
    #[arg(long, default_value_t = SegmentConfig::default().lambda)]
    lambda: f64,
    /// How boundaries are measured.
    #[arg(long, value_enum, default_value_t = LengthArg::Charbonnier)]
    length: LengthArg,
    /// The fidelity: global phase means, or local ones (Gaussian-weighted, for uneven illumination;
    /// needs --sigma).
    #[arg(long, value_enum, default_value_t = FidelityArg::Global)]
    fidelity: FidelityArg,
    /// The local fidelity's Gaussian σ in pixels: a few times the structures' size, well below the
    /// scale over which the illumination drifts.
    #[arg(long, allow_hyphen_values = true, required_if_eq("fidelity", "local"))]
    sigma: Option<f64>,
    /// The most optimiser (Adam) steps.
    #[arg(long, default_value_t = SegmentConfig::default().max_iters)]
    iters: usize,
    /// Stop when the relative energy change stays below this for 3 steps.
    #[arg(long, default_value_t = SegmentConfig::default().tol)]
    tol: f64,
    /// Adam's learning rate in logit units.
    #[arg(long, default_value_t = SegmentConfig::default().learning_rate)]
    lr: f64,
    /// The backend and its threads.
    #[command(flatten)]
    backend: BackendArgs,
    /// Seed of the k-means++ initialisation (and of the built-in image).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the label map: an indexed PNG (2D) or .npy of uint8 labels; label k is the k-th
    /// darkest phase.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the input with phase tints and boundaries (PNG; a volume's middle slice).
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// Write the energy per step as an SVG plot.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write a JSON summary (phases, steps, energy and parts, centroids, seconds).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Built-in image: which one.
    #[arg(long, value_enum, default_value_t = Builtin::Voronoi, help_heading = "Built-in image")]
    image: Builtin,
    /// Built-in image: width and height.
    #[arg(long, default_value_t = 256, help_heading = "Built-in image")]
    size: usize,
    /// Built-in image: depth (> 1 makes a volume; Voronoi image only).
    #[arg(long, default_value_t = 1, help_heading = "Built-in image")]
    depth: usize,
    /// Built-in image: noise standard deviation, 0 to 0.5 (Voronoi image only; default 0.1).
    #[arg(long, help_heading = "Built-in image")]
    noise: Option<f64>,
    /// Built-in image: grey instead of colour (the small-close image is always grey).
    #[arg(long, help_heading = "Built-in image")]
    grey: bool,
    /// Built-in image: also write it (16-bit PNG for 2D, float32 .npy `[C,D,H,W]`).
    #[arg(long, help_heading = "Built-in image")]
    save_input: Option<PathBuf>,
    /// Built-in image: also write its true labels (indexed PNG or .npy).
    #[arg(long, help_heading = "Built-in image")]
    save_truth: Option<PathBuf>,
}

/// `--image`: the built-in images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Builtin {
    /// Voronoi regions of 2K seeds, one colour or grey level per phase, a slight ramp and noise
    /// (`--phases` 2 to 5, `--grey`, `--noise`, `--depth`).
    Voronoi,
    /// Four grey phases at 0, 0.2, 0.3 and 1.0 with noise σ 0.04, one of them small (4%) and
    /// close to a large one: the image on which the k-means start lost a phase (issue 27).
    SmallClose,
}

/// `--phases`: a number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phases {
    /// This many phases.
    Fixed(usize),
    /// Chosen in [`AUTO_RANGE`].
    Auto,
}

fn parse_phases(s: &str) -> Result<Phases, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Phases::Auto);
    }
    s.parse::<usize>()
        .map(Phases::Fixed)
        .map_err(|_| format!("expected a number of phases (2 to 255) or `auto`, got `{s}`"))
}

impl Args {
    /// The backend's flags.
    pub(crate) fn backend(&self) -> &BackendArgs {
        &self.backend
    }
}

/// The outputs asked for, with their formats, checked before any work.
fn planned_outputs(args: &Args) -> anyhow::Result<Vec<(&Path, Format)>> {
    if args.input.is_some() {
        anyhow::ensure!(
            args.save_input.is_none() && args.save_truth.is_none(),
            "--save-input and --save-truth apply to the built-in image only (no INPUT)"
        );
    }
    const IMAGE: &[Format] = &[Format::Png, Format::Npy];
    let wanted: [(&Option<PathBuf>, &[Format]); 6] = [
        (&args.out, IMAGE),
        (&args.overlay, &[Format::Png]),
        (&args.plot, &[Format::Svg]),
        (&args.json, &[Format::Json]),
        (&args.save_input, IMAGE),
        (&args.save_truth, IMAGE),
    ];
    let mut plan = Vec::new();
    for (path, allowed) in wanted {
        if let Some(p) = path {
            let f = Format::of(p, allowed)?;
            output::check_writable(p, &args.input.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
            plan.push((p.as_path(), f));
        }
    }
    for (i, (a, _)) in plan.iter().enumerate() {
        if plan.iter().take(i).any(|(b, _)| b == a) {
            anyhow::bail!("{} is named for two outputs", a.display());
        }
    }
    Ok(plan)
}

/// Runs `msloss segment`.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let plan = planned_outputs(args)?;
    // The built-in image's own number of phases, when --phases is not given.
    let builtin_phases = if args.image == Builtin::SmallClose { 4 } else { 3 };
    let (vol, truth, name) = match &args.input {
        Some(p) => {
            anyhow::ensure!(
                args.phases.is_some(),
                "give the number of phases with --phases K (K >= 2) or --phases auto"
            );
            (Volume::load(p)?, None, p.display().to_string())
        }
        None => {
            // The image and its labels, and the optimiser's planes (see `msloss_segment::segment`).
            let k = match args.phases {
                Some(Phases::Fixed(k)) => k,
                Some(Phases::Auto) => *AUTO_RANGE.end(),
                None => builtin_phases,
            };
            let small_close = args.image == Builtin::SmallClose;
            if small_close {
                anyhow::ensure!(
                    args.depth == 1 && args.noise.is_none(),
                    "--depth and --noise apply to the Voronoi image only (the small-close image is 2D, noise σ 0.04)"
                );
            }
            let c = if args.grey || small_close { 1 } else { 3 };
            let pixels = args.depth.checked_mul(args.size).and_then(|p| p.checked_mul(args.size));
            let need = pixels.and_then(|n| crate::sys::bytes(&[(n, 4 * c + 1), (n, k.saturating_mul(20))]));
            crate::sys::ensure_memory(need, "the built-in image of this size")?;
            let s = if small_close {
                synth::small_close_phases(args.size, args.seed)
            } else {
                synth::generate(&SynthSpec {
                    phases: if let Some(Phases::Fixed(k)) = args.phases { k } else { 3 },
                    colour: !args.grey,
                    dims: [args.depth, args.size, args.size],
                    noise: args.noise.unwrap_or(0.1),
                    ramp: 0.05,
                    seed: args.seed,
                })
            };
            let s = s.context("cannot make the built-in image")?;
            (s.volume, Some(s.truth), "built-in synthetic image".to_owned())
        }
    };
    let auto = args.phases == Some(Phases::Auto);
    let cfg = SegmentConfig {
        phases: match args.phases {
            Some(Phases::Fixed(k)) => k,
            Some(Phases::Auto) => *AUTO_RANGE.start(),
            None => builtin_phases,
        },
        lambda: args.lambda,
        length: match args.length {
            LengthArg::L1 => LengthKind::L1,
            LengthArg::L2 => LengthKind::L2,
            LengthArg::Charbonnier => LengthKind::Charbonnier,
        },
        max_iters: args.iters,
        tol: args.tol,
        learning_rate: args.lr,
        seed: args.seed,
        fidelity: args.fidelity.with_sigma(args.sigma)?,
        ..SegmentConfig::default()
    };
    cfg.validate(vol.pixels())?;
    if vol.is_3d()
        && let Some((p, Format::Png)) = plan.iter().find(|(p, _)| Some(*p) == args.out.as_deref())
    {
        anyhow::bail!("{}: a volume's label map must be written as .npy", p.display());
    }
    let backend = args.backend.build()?;
    let backend_name = msloss::Backend::<f32>::name(&backend);

    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(cfg.max_iters as u64) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] energy {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = |k: Option<usize>, p: &msloss_segment::Progress| {
        bar.set_length(p.max_iters as u64);
        bar.set_position(p.iteration as u64);
        match k {
            Some(k) => bar.set_message(format!("{:.6e} (K {k})", p.energy.total)),
            None => bar.set_message(format!("{:.6e}", p.energy.total)),
        }
    };
    let (seg, chosen) = if auto {
        let a = segment_auto(&backend, &vol, &cfg, AUTO_RANGE, |k, p| report(Some(k), p))?;
        (a.segmentation, Some((a.candidates, a.reason)))
    } else {
        (segment(&backend, &vol, &cfg, |p| report(None, p))?, None)
    };
    bar.finish_and_clear();
    let phases = seg.phases;
    let cfg = cfg.with_phases(phases);

    let quality = truth.as_ref().map(|t| metrics::evaluate(&seg.labels, t)).transpose()?;
    let mut files = Vec::new();
    for &(path, format) in &plan {
        let bytes = if Some(path) == args.out.as_deref() {
            match format {
                Format::Png => output::label_png(&seg, path)?,
                _ => output::label_npy(&seg, path)?,
            }
        } else if Some(path) == args.overlay.as_deref() {
            output::overlay_png(&vol, &seg, path)?
        } else if Some(path) == args.plot.as_deref() {
            output::energy_svg(&seg.history, path)?
        } else if Some(path) == args.save_input.as_deref() {
            output::volume_bytes(&vol, format, path)?
        } else if Some(path) == args.save_truth.as_deref() {
            let Some(t) = truth.as_deref() else { continue };
            match format {
                Format::Png => output::labels_png(t, vol.dims(), phases, path)?,
                _ => output::labels_npy(t, vol.dims(), path)?,
            }
        } else {
            continue; // the JSON summary, below
        };
        files.push((path.to_owned(), bytes));
    }
    let summary = Summary::new(&seg, &vol, &cfg, backend_name, t0.elapsed().as_secs_f64());
    if let Some(p) = &args.json {
        let mut v = serde_json::to_value(&summary)?;
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("input".into(), name.clone().into());
            if let Some(q) = &quality {
                m.insert("quality".into(), serde_json::to_value(q)?);
            }
            if let Some((candidates, reason)) = &chosen {
                let auto = serde_json::json!({
                    "range": [AUTO_RANGE.start(), AUTO_RANGE.end()],
                    "criterion": "minimum description length in nats: (N*C/2)*ln(RSS/(N*C)) + (K*C/2)*ln(N) + ln(3)*boundary_pairs",
                    "candidates": candidates,
                    "reason": reason,
                });
                m.insert("auto".into(), auto);
            }
        }
        files.push((p.clone(), serde_json::to_vec_pretty(&v)?));
    }
    // Outputs are staged, then the report printed, then the outputs put in place: a report
    // that cannot be written leaves no output behind.
    let mut staged = Staged::new();
    for (path, bytes) in &files {
        staged.add_bytes(path, bytes)?;
    }

    if !args.quiet {
        let mut r = String::new();
        let [c, d, h, w] = summary.shape;
        let size = if d > 1 { format!("{d}×{h}×{w}") } else { format!("{h}×{w}") };
        let kind = match c {
            1 => "grey".to_owned(),
            3 => "colour".to_owned(),
            _ => format!("{c} channels"),
        };
        writeln!(r, "segmented {name} ({size}, {kind}) into {phases} phases on the {backend_name} backend")?;
        if let Some((_, reason)) = &chosen {
            writeln!(r, "  --phases auto chose K = {phases}: {reason}")?;
        }
        let stop = if seg.converged { "converged" } else { "step limit" };
        writeln!(
            r,
            "  {} steps ({stop}); energy {:.6e} = fidelity {:.6e} + length {:.6e}; {:.3} s",
            seg.iterations, seg.energy.total, seg.energy.fidelity, seg.energy.length, summary.seconds.total
        )?;
        let start = if seg.start == "otsu" { "multi-level Otsu" } else { "k-means++" };
        let tries: Vec<String> = seg
            .rescues
            .iter()
            .map(|t| {
                let kind = match t.kind {
                    msloss_segment::RescueKind::Refill => "refill",
                    msloss_segment::RescueKind::SplitMerge => "split+merge",
                };
                format!("{kind} {}", if t.kept { "kept" } else { "not kept" })
            })
            .collect();
        let tries = if tries.is_empty() { "none needed".to_owned() } else { tries.join(", ") };
        writeln!(r, "  start: {start} on the denoised image; rescue tries: {tries}")?;
        for (k, (cen, pixels)) in summary.centroids.iter().zip(&seg.pixels_per_phase).enumerate() {
            let cen: Vec<String> = cen.iter().map(|v| format!("{v:.3}")).collect();
            writeln!(r, "  phase {k}: {pixels:>8} pixels, centroid [{}]", cen.join(", "))?;
        }
        if let Some(q) = &quality {
            let per: Vec<String> = q.per_class_iou.iter().map(|v| format!("{v:.4}")).collect();
            writeln!(
                r,
                "  against the truth: mean IoU {:.4} (per phase {}), adapted Rand error {:.4}",
                q.mean_iou,
                per.join(", "),
                q.adapted_rand_error
            )?;
        }
        let empty = seg.pixels_per_phase.iter().filter(|&&p| p == 0).count();
        if empty > 0 {
            writeln!(r, "  note: {empty} of the {phases} phases ended empty: the image may have fewer phases")?;
        }
        for (p, _) in &plan {
            writeln!(r, "  wrote {}", p.display())?;
        }
        crate::sys::print_stdout(&r)?;
    }
    staged.commit()?;
    Ok(())
}
