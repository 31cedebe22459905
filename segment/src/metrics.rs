//! Segmentation quality against a ground truth: Hungarian label matching, IoU per class, mean
//! IoU and the adapted Rand error.
//!
//! Label values are arbitrary integers; only which pixels share a label matters. The predicted
//! labels are matched one-to-one to the true labels so as to maximise the number of pixels on
//! which they agree (the Hungarian algorithm on the contingency table, through
//! [`pathfinding::kuhn_munkres`]); each true class's IoU is then taken against the predicted class
//! matched to it (0 when none is).

use std::collections::BTreeMap;

use pathfinding::matrix::Matrix;
use serde::Serialize;

use crate::SegmentError;

/// The most distinct labels a label map may have in [`evaluate`].
pub const MAX_LABELS: usize = 1024;

/// The quality of a predicted label map against the truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    /// The true labels, ascending.
    pub classes: Vec<u64>,
    /// For each true class, the predicted label matched to it (`None` when there are fewer
    /// predicted labels than true ones).
    pub matched: Vec<Option<u64>>,
    /// The IoU of each true class with its matched predicted class.
    pub per_class_iou: Vec<f64>,
    /// The mean of `per_class_iou`.
    pub mean_iou: f64,
    /// The fraction of pixels whose predicted label is matched to their true label.
    pub accuracy: f64,
    /// The adapted Rand error: `1 − F`, where `F` is the harmonic mean of the Rand precision and
    /// recall over pixel pairs (0 for a perfect segmentation up to renaming; no label is ignored).
    pub adapted_rand_error: f64,
}

/// Scores `pred` against `truth` (equal lengths, any integer labels).
///
/// # Errors
/// [`SegmentError::ShapeMismatch`] when the lengths differ, [`SegmentError::BadImage`] when they
/// are empty or either has more than [`MAX_LABELS`] distinct labels.
pub fn evaluate<P, T>(pred: &[P], truth: &[T]) -> Result<Quality, SegmentError>
where
    P: Copy + Into<u64>,
    T: Copy + Into<u64>,
{
    if pred.len() != truth.len() {
        return Err(SegmentError::ShapeMismatch { pred: vec![pred.len()], truth: vec![truth.len()] });
    }
    if pred.is_empty() {
        return Err(SegmentError::BadImage("the label maps are empty".into()));
    }
    // Each map's labels, numbered in ascending order; refused past `MAX_LABELS` (the table and
    // the matching grow with their product and cube).
    let index = |vals: &mut dyn Iterator<Item = u64>, which: &str| {
        let mut map = BTreeMap::new();
        for v in vals {
            map.entry(v).or_insert(0usize);
            if map.len() > MAX_LABELS {
                return Err(SegmentError::BadImage(format!(
                    "the {which} has more than {MAX_LABELS} distinct labels; eval matches at most {MAX_LABELS} classes"
                )));
            }
        }
        for (i, slot) in map.values_mut().enumerate() {
            *slot = i;
        }
        Ok(map)
    };
    let pmap = index(&mut pred.iter().map(|&v| v.into()), "prediction")?;
    let tmap = index(&mut truth.iter().map(|&v| v.into()), "ground truth")?;
    let (np, nt) = (pmap.len(), tmap.len());
    // Contingency table, rows = predicted, columns = true.
    let mut table = vec![0u64; np * nt];
    for (&p, &t) in pred.iter().zip(truth) {
        table[pmap[&p.into()] * nt + tmap[&t.into()]] += 1;
    }
    let psum: Vec<u64> = (0..np).map(|i| table[i * nt..(i + 1) * nt].iter().sum()).collect();
    let tsum: Vec<u64> = (0..nt).map(|j| (0..np).map(|i| table[i * nt + j]).sum()).collect();

    // Hungarian matching on a square, zero-padded table (maximise agreeing pixels).
    let side = np.max(nt);
    let weights = Matrix::from_fn(side, side, |(i, j)| if i < np && j < nt { table[i * nt + j] as i64 } else { 0 });
    let (_, assign) = pathfinding::kuhn_munkres::kuhn_munkres(&weights);
    let pkeys: Vec<u64> = pmap.keys().copied().collect();
    let mut matched = vec![None; nt];
    for (i, &j) in assign.iter().enumerate() {
        if i < np && j < nt {
            matched[j] = Some(i);
        }
    }
    let mut iou = vec![0.0; nt];
    let mut agree = 0u64;
    for (j, m) in matched.iter().enumerate() {
        if let Some(i) = *m {
            let inter = table[i * nt + j];
            agree += inter;
            iou[j] = inter as f64 / (psum[i] + tsum[j] - inter) as f64;
        }
    }
    let n = pred.len() as f64;
    let mean_iou = iou.iter().sum::<f64>() / nt as f64;

    // Adapted Rand error over ordered pixel pairs (sums of squares minus the diagonal n).
    let sq = |v: &mut dyn Iterator<Item = u64>| v.map(|x| (x as f64) * (x as f64)).sum::<f64>() - n;
    let both = sq(&mut table.iter().copied());
    let in_pred = sq(&mut psum.iter().copied());
    let in_truth = sq(&mut tsum.iter().copied());
    let precision = if in_pred > 0.0 { both / in_pred } else { 1.0 };
    let recall = if in_truth > 0.0 { both / in_truth } else { 1.0 };
    let f = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };

    Ok(Quality {
        classes: tmap.keys().copied().collect(),
        matched: matched.iter().map(|m| m.map(|i| pkeys[i])).collect(),
        per_class_iou: iou,
        mean_iou,
        accuracy: agree as f64 / n,
        adapted_rand_error: 1.0 - f,
    })
}
