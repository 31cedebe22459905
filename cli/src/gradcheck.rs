//! `msloss gradcheck`: central differences in f64 against a backend's analytic gradient.

use msloss::gradcheck::{self, Mode, Options};
use msloss::{Input, Shape};

use crate::backends::{AnyBackend, BackendArgs};
use crate::params::{DtypeArg, InputArg, ParamArgs, parse_shape};
use crate::sys;

/// Arguments of `msloss gradcheck`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The shape B,N,C,H,W or B,N,C,H,W,D (D: depth of a 3D volume).
    #[arg(long, value_parser = parse_shape)]
    shape: Shape,
    /// The backend and its threads.
    #[command(flatten)]
    backend: BackendArgs,
    /// The float type the backend computes in.
    #[arg(long, value_enum, default_value_t = DtypeArg::F64)]
    dtype: DtypeArg,
    /// Differentiate wrt logits or probabilities.
    #[arg(long, value_enum, default_value_t = InputArg::Logits)]
    input: InputArg,
    /// Use a random mask (about 80% valid pixels).
    #[arg(long)]
    mask: bool,
    /// Seed of the random inputs and directions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Relative tolerance, finite and > 0 (default: 1e-6 for f64, 1e-4 for f32).
    #[arg(long, value_parser = parse_tol)]
    tol: Option<f64>,
    /// Tensors up to this many elements get a full check, larger ones random directional checks.
    #[arg(long, default_value_t = Options::default().full_limit)]
    full_limit: usize,
    /// The loss parameters (λ defaults higher here, so the length term is visible in the check).
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

/// Runs `msloss gradcheck`; returns whether the gradient agreed.
pub(crate) fn run(args: &Args) -> anyhow::Result<bool> {
    let backend = args.backend.build()?;
    match args.dtype {
        DtypeArg::F32 => check::<f32>(args, &backend),
        DtypeArg::F64 => check::<f64>(args, &backend),
    }
}

fn check<T: msloss::cpu::CpuFloat>(args: &Args, backend: &AnyBackend) -> anyhow::Result<bool> {
    let params = args.params.params()?;
    let shape = args.shape;
    let elem = size_of::<T>();
    // Seeded inputs and the gradient in `T`, and the check's copies in f64.
    let need =
        sys::bytes(&[(shape.scores_len(), 3 * elem + 32), (shape.image_len(), elem + 8), (shape.mask_len(), elem + 8)]);
    sys::ensure_memory(need, "this shape")?;
    if args.input == InputArg::Confident {
        anyhow::bail!(
            "--input confident is for `msloss bench` (it times the L1 sign recomputation); its gradients, about 1e-6 \
             of the energy's scale, are below what central differences resolve: use --input logits or probs"
        );
    }
    let data = args.input.data::<T>(shape, args.seed);
    let scores = args.input.scores(&data);
    let input = Input::new(shape, scores, &data.image, args.mask.then_some(&data.mask[..]))?;
    let options = Options { full_limit: args.full_limit, seed: args.seed, ..Options::default() };
    let report = gradcheck::check(backend, &input, &params, &options)?;
    let tol = args.tol.unwrap_or(if T::NAME == "f64" { 1e-6 } else { 1e-4 });
    let pass = report.passes(tol);
    let json = serde_json::json!({
        "backend": msloss::Backend::<T>::name(backend),
        "shape": shape.to_string(),
        "dtype": T::NAME,
        "input": if input.scores().is_logits() { "logits" } else { "probs" },
        "length": params.length.name(),
        "reduction": params.reduction.name(),
        "fidelity": params.fidelity.name(),
        "sigma": match params.fidelity { msloss::Fidelity::Local { sigma } => Some(sigma), msloss::Fidelity::Global => None },
        "mask": args.mask,
        "mode": match report.mode { Mode::Full => "full", Mode::Directional => "directional" },
        "checks": report.checks,
        "skipped_kinks": report.skipped_kinks,
        "max_abs_error": report.max_abs_error,
        "max_rel_error": report.max_rel_error,
        "grad_scale": report.grad_scale,
        "energy_rel_error": report.energy_rel_error,
        "tolerance": tol,
        "pass": pass,
    });
    sys::print_json(&json)?;
    Ok(pass)
}

/// `--tol`: a finite number above 0.
fn parse_tol(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 => Ok(t),
        Ok(t) => Err(format!("the tolerance must be finite and > 0, got {t}")),
        Err(e) => Err(format!("`{s}` is not a number: {e}")),
    }
}
