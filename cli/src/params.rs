//! The loss parameters as command-line flags, shared by every subcommand that evaluates the loss.

use msloss::{Fidelity, LengthKind, Params, Reduction};

/// `--length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LengthArg {
    /// Anisotropic total variation Σ|d| (published).
    L1,
    /// Squared differences Σd².
    L2,
    /// Isotropic, smooth: Σ (sqrt(Σ_a d_a² + δ²) − δ).
    Charbonnier,
}

/// `--reduction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReductionArg {
    /// Plain sum (published).
    Sum,
    /// Divided by the number of valid pixels.
    Mean,
}

/// `--fidelity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FidelityArg {
    /// One soft mean per class and sample (published).
    Global,
    /// Gaussian-weighted local means per pixel and class (region-scalable fitting; needs --sigma).
    Local,
}

impl FidelityArg {
    /// The fidelity `--fidelity` and `--sigma` ask for: σ goes with the local fidelity only (clap
    /// already requires it there; a missing one is left as NaN for `Params::validate` to name).
    pub(crate) fn with_sigma(self, sigma: Option<f64>) -> Result<Fidelity, msloss::Error> {
        match (self, sigma) {
            (FidelityArg::Local, sigma) => Ok(Fidelity::Local { sigma: sigma.unwrap_or(f64::NAN) }),
            (FidelityArg::Global, None) => Ok(Fidelity::Global),
            (FidelityArg::Global, Some(value)) => {
                Err(msloss::Error::BadParam { name: "sigma", expected: "given only with --fidelity local", value })
            }
        }
    }
}

/// Loss parameters (defaults: those of `msloss_core::Params::default()`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ParamArgs {
    /// Weight λ of the length term.
    #[arg(long, allow_hyphen_values = true, default_value_t = Params::default().lambda)]
    pub(crate) lambda: f64,
    /// How the length term measures boundaries.
    #[arg(long, value_enum, default_value_t = LengthArg::L1)]
    pub(crate) length: LengthArg,
    /// Charbonnier's δ (1e-15 to 1e15).
    #[arg(long, allow_hyphen_values = true, default_value_t = Params::default().delta)]
    pub(crate) delta: f64,
    /// ε_c of the centroid denominator (1e-30 to 1e15).
    #[arg(long, allow_hyphen_values = true, default_value_t = Params::default().centroid_eps)]
    pub(crate) centroid_eps: f64,
    /// Weight w of the fidelity term.
    #[arg(long, allow_hyphen_values = true, default_value_t = Params::default().fidelity_weight)]
    pub(crate) fidelity_weight: f64,
    /// Sum (published) or mean over valid pixels.
    #[arg(long, value_enum, default_value_t = ReductionArg::Sum)]
    pub(crate) reduction: ReductionArg,
    /// What the fidelity compares each pixel with.
    #[arg(long, value_enum, default_value_t = FidelityArg::Global)]
    pub(crate) fidelity: FidelityArg,
    /// The local fidelity's Gaussian σ in pixels (> 0, at most the largest spatial extent).
    #[arg(long, allow_hyphen_values = true, required_if_eq("fidelity", "local"))]
    pub(crate) sigma: Option<f64>,
}

impl ParamArgs {
    /// The core parameters, validated.
    pub(crate) fn params(&self) -> Result<Params, msloss::Error> {
        let p = Params {
            lambda: self.lambda,
            fidelity_weight: self.fidelity_weight,
            length: match self.length {
                LengthArg::L1 => LengthKind::L1,
                LengthArg::L2 => LengthKind::L2,
                LengthArg::Charbonnier => LengthKind::Charbonnier,
            },
            delta: self.delta,
            centroid_eps: self.centroid_eps,
            reduction: match self.reduction {
                ReductionArg::Sum => Reduction::Sum,
                ReductionArg::Mean => Reduction::Mean,
            },
            fidelity: self.fidelity.with_sigma(self.sigma)?,
        };
        p.validate()?;
        Ok(p)
    }
}

/// `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DtypeArg {
    /// 32-bit floats.
    F32,
    /// 64-bit floats.
    F64,
}

/// `--input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum InputArg {
    /// Logits (softmax applied over classes).
    Logits,
    /// Probabilities.
    Probs,
    /// Logits like a confident network's (`RandomInputs::confident`, gap 12, noise 1e-3):
    /// L1's signs in doubt on most pairs (`msloss bench` only).
    Confident,
}

impl InputArg {
    /// The seeded inputs for this input: a confident network's logits in place of the seeded
    /// ones where asked.
    pub(crate) fn data<T: msloss::Real>(self, shape: msloss::Shape, seed: u64) -> msloss::rng::RandomInputs<T> {
        let data = msloss::rng::RandomInputs::new(shape, seed);
        if self == InputArg::Confident { data.confident(shape, 12.0, 1e-3) } else { data }
    }

    /// The scores of `data` this input names.
    pub(crate) fn scores<T>(self, data: &msloss::rng::RandomInputs<T>) -> msloss::Scores<'_, T> {
        match self {
            InputArg::Logits | InputArg::Confident => msloss::Scores::Logits(&data.logits[..]),
            InputArg::Probs => msloss::Scores::Probs(&data.probs[..]),
        }
    }
}

/// Parses `B,N,C,H,W[,D]` into a shape.
pub(crate) fn parse_shape(s: &str) -> Result<msloss::Shape, String> {
    let dims: Vec<usize> = s
        .split(',')
        .map(|t| t.trim().parse::<usize>().map_err(|e| format!("`{t}` in --shape is not a size: {e}")))
        .collect::<Result<_, _>>()?;
    let shape = match dims[..] {
        [b, n, c, h, w] => msloss::Shape::new(b, n, c, 1, h, w),
        [b, n, c, h, w, d] => msloss::Shape::new(b, n, c, d, h, w),
        _ => return Err(format!("--shape takes B,N,C,H,W or B,N,C,H,W,D (5 or 6 sizes), got {} in `{s}`", dims.len())),
    };
    shape.map_err(|e| e.to_string())
}
