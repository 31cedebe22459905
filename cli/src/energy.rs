//! `msloss energy`: the loss of arrays in `.npy` files, for cross-checking against NumPy/PyTorch.

use std::path::{Path, PathBuf};

use msloss::{Backend, Input, Scores, Shape};
use msloss_segment::output::{self, Staged};

use crate::backends::{AnyBackend, BackendArgs};
use crate::npy::{self, FloatData};
use crate::params::ParamArgs;
use crate::sys;

/// Arguments of `msloss energy`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The image, (B,C,H,W) or (B,C,D,H,W), float32 or float64.
    #[arg(long)]
    image: PathBuf,
    /// Logits (B,N,H,W) or (B,N,D,H,W) (softmax over N); float32 or float64.
    #[arg(long, required_unless_present = "probs", conflicts_with = "probs")]
    logits: Option<PathBuf>,
    /// Probabilities (B,N,H,W) or (B,N,D,H,W) (finite, >= 0).
    #[arg(long)]
    probs: Option<PathBuf>,
    /// Mask (B,H,W) or (B,D,H,W) (also (B,1,...)) of 0/1 values; bool, integer or float.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// The loss parameters.
    #[command(flatten)]
    params: ParamArgs,
    /// The backend and its threads.
    #[command(flatten)]
    backend: BackendArgs,
    /// Where to write ∂E/∂(logits or probabilities), in the scores' dtype and shape.
    #[arg(long)]
    grad_out: Option<PathBuf>,
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

/// Runs `msloss energy`.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let params = args.params.params()?;
    let (scores_path, logits) = match (&args.logits, &args.probs) {
        (Some(p), None) => (p, true),
        (None, Some(p)) => (p, false),
        _ => anyhow::bail!("give exactly one of --logits and --probs"),
    };
    let what = if logits { "logits" } else { "probabilities" };
    // Headers first: shapes, the output path and memory are checked before any data is read.
    let scores = npy::open(scores_path, what)?;
    let image = npy::open(&args.image, "image")?;
    let mask = args.mask.as_deref().map(|p| npy::open(p, "mask")).transpose()?;
    let shape = Shape::from_dims(scores.dims(), image.dims(), mask.as_ref().map(npy::Header::dims))?;
    if let Some(out) = &args.grad_out {
        let inputs: Vec<&Path> = [Some(scores_path), Some(&args.image), args.mask.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect();
        output::check_writable(out, &inputs)?;
    }
    // The scores (in f64 at most) and their gradient, the image and mask as read (f64) and as
    // computed (f64 at most), and the centroids.
    let need = sys::bytes(&[
        (shape.scores_len(), 16),
        (shape.image_len(), 16),
        (if mask.is_some() { shape.mask_len() } else { 0 }, 16),
        (shape.centroids_len(), 8),
    ]);
    sys::ensure_memory(need, "this input")?;
    let backend = args.backend.build()?;
    let scores_dims = scores.dims().to_vec();
    let scores = npy::read_float(scores)?;
    let image = npy::read_float(image)?.to_f64();
    let mask = mask.map(npy::read_mask).transpose()?;
    let job = Job { shape, logits, image: &image, mask: mask.as_deref(), params, backend: &backend };
    let mut staged = Staged::new();
    let json = match &scores {
        FloatData::F32(s) => job.run(s, args.grad_out.as_ref().map(|p| (p.as_path(), &mut staged)), &scores_dims)?,
        FloatData::F64(s) => job.run(s, args.grad_out.as_ref().map(|p| (p.as_path(), &mut staged)), &scores_dims)?,
    };
    // The result is printed before the gradient file is put in place: if stdout fails, no
    // output is left behind.
    sys::print_json(&json)?;
    staged.commit()?;
    Ok(())
}

struct Job<'a> {
    shape: Shape,
    logits: bool,
    image: &'a [f64],
    mask: Option<&'a [f64]>,
    params: msloss::Params,
    backend: &'a AnyBackend,
}

impl Job<'_> {
    fn run<T: msloss::cpu::CpuFloat + npyz::AutoSerialize>(
        &self,
        scores: &[T],
        grad_out: Option<(&Path, &mut Staged)>,
        scores_dims: &[usize],
    ) -> anyhow::Result<serde_json::Value> {
        let image: Vec<T> = self.image.iter().map(|&v| T::from_f64_lossy(v)).collect();
        let mask: Option<Vec<T>> = self.mask.map(|m| m.iter().map(|&v| T::from_f64_lossy(v)).collect());
        let s = if self.logits { Scores::Logits(scores) } else { Scores::Probs(scores) };
        let input = Input::new(self.shape, s, &image, mask.as_deref())?;
        let mut centroids = vec![T::zero(); self.shape.centroids_len()];
        let mut grad = grad_out.as_ref().map(|_| vec![T::zero(); self.shape.scores_len()]);
        let mut ws = Backend::<T>::workspace(self.backend);
        let e = self.backend.evaluate(
            &input,
            &self.params,
            msloss::Outputs { grad: grad.as_deref_mut(), centroids: Some(&mut centroids) },
            &mut ws,
        )?;
        // Every backend refuses a non-finite gradient (`Error::NonFiniteResult`), so what is
        // staged is finite.
        if let (Some((path, staged)), Some(g)) = (grad_out, &grad) {
            npy::stage(staged, path, scores_dims, g)?;
        }
        let (n, c) = (self.shape.classes(), self.shape.channels());
        let cents: Vec<Vec<Vec<f64>>> = centroids
            .chunks(n * c)
            .map(|sample| sample.chunks(c).map(|k| k.iter().map(|v| v.to_f64_lossless()).collect()).collect())
            .collect();
        let json = serde_json::json!({
            "fidelity": e.fidelity.to_f64_lossless(),
            "length": e.length.to_f64_lossless(),
            "total": e.total.to_f64_lossless(),
            "centroids": cents,
        });
        Ok(json)
    }
}
