//! `msloss eval`: the quality of a label map against a ground truth, as JSON.

use std::path::PathBuf;

use msloss_segment::{SegmentError, metrics, output};

/// Arguments of `msloss eval`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The predicted labels: a PNG (indexed or grey values; each colour of an RGB PNG is one
    /// label) or an .npy of integers.
    pred: PathBuf,
    /// The ground truth, in the same forms.
    gt: PathBuf,
}

/// Runs `msloss eval`: prints per-class IoU (after Hungarian matching), mean IoU, adapted Rand
/// error and accuracy as one JSON object.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let pred = output::load_labels(&args.pred)?;
    let gt = output::load_labels(&args.gt)?;
    if pred.dims != gt.dims {
        return Err(SegmentError::ShapeMismatch { pred: pred.dims, truth: gt.dims }.into());
    }
    let q = metrics::evaluate(&pred.labels, &gt.labels)?;
    let per_class: serde_json::Map<String, serde_json::Value> =
        q.classes.iter().zip(&q.per_class_iou).map(|(c, v)| (c.to_string(), (*v).into())).collect();
    let json = serde_json::json!({
        "per_class_iou": per_class,
        "mean_iou": q.mean_iou,
        "adapted_rand_error": q.adapted_rand_error,
        "accuracy": q.accuracy,
        "matching": q.classes.iter().zip(&q.matched)
            .map(|(c, m)| (c.to_string(), serde_json::to_value(m).unwrap_or_default()))
            .collect::<serde_json::Map<_, _>>(),
        "pixels": pred.labels.len(),
    });
    crate::sys::print_stdout(&(serde_json::to_string_pretty(&json)? + "\n"))
}
