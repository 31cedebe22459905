//! The semi-supervised objective of the paper: `L = α·CE(labelled pixels) + β·MS(all samples)`.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use crate::{Error, MsLoss};

/// The mean cross-entropy over the labelled pixels.
///
/// - `logits`: `[B, N, …]` (rank 4 or 5);
/// - `one_hot`: the labels one-hot over `N`, the logits' shape;
/// - `weight`: `[B, 1, …]`, 1 where a pixel is labelled and 0 elsewhere (any non-negative
///   weights work).
///
/// Returns `−Σ w·Σ_n t_n·log softmax(z)_n / Σ w` as a one-element tensor, `0` when no pixel
/// is labelled (so a batch without labels contributes nothing).
pub fn masked_cross_entropy<const D: usize>(logits: Tensor<D>, one_hot: Tensor<D>, weight: Tensor<D>) -> Tensor<1> {
    let logp = log_softmax(logits, 1);
    let per_pixel = (logp * one_hot).sum_dim(1); // [B, 1, …]
    let count = weight.clone().sum().clamp_min(1.0);
    (per_pixel * weight).sum().neg() / count
}

/// The parts of one semi-supervised evaluation.
#[derive(Debug, Clone)]
pub struct SemiSupervisedParts {
    /// `α·CE + β·MS`, differentiable; call `backward` on it.
    pub total: Tensor<1>,
    /// The cross-entropy on the labelled pixels (before `α`), if labels were given.
    pub cross_entropy: Option<Tensor<1>>,
    /// The Mumford–Shah loss (before `β`).
    pub mumford_shah: Tensor<1>,
}

/// `L = α·CE(labelled pixels) + β·MS(all samples)` (Kim & Ye 2020, the semi-supervised setting).
///
/// The Mumford–Shah term runs on every sample of the batch; the cross-entropy only where labels
/// are given.
#[derive(Debug)]
pub struct SemiSupervised {
    /// Weight `α` of the cross-entropy.
    pub alpha: f64,
    /// Weight `β` of the Mumford–Shah loss.
    pub beta: f64,
    /// The Mumford–Shah loss.
    pub ms: MsLoss,
}

impl SemiSupervised {
    /// The objective with weights `alpha`, `beta` and the loss `ms`.
    pub fn new(alpha: f64, beta: f64, ms: MsLoss) -> Self {
        Self { alpha, beta, ms }
    }

    /// Evaluates the objective.
    ///
    /// `labels`, when given, is `(one_hot, weight)` as in [`masked_cross_entropy`]; `mask` is
    /// the Mumford–Shah mask of [`MsLoss::forward`]. With `beta == 0` the Mumford–Shah term is
    /// still evaluated (for reporting) but contributes no gradient.
    ///
    /// # Errors
    /// As [`MsLoss::forward`].
    pub fn forward<const D: usize>(
        &self,
        logits: Tensor<D>,
        image: Tensor<D>,
        mask: Option<Tensor<D>>,
        labels: Option<(Tensor<D>, Tensor<D>)>,
    ) -> Result<SemiSupervisedParts, Error> {
        let cross_entropy = labels.map(|(one_hot, weight)| masked_cross_entropy(logits.clone(), one_hot, weight));
        let ms_logits = if self.beta == 0.0 { logits.detach() } else { logits };
        let mumford_shah = self.ms.forward(ms_logits, image, mask)?;
        let mut total = mumford_shah.clone() * self.beta;
        if let Some(ce) = &cross_entropy {
            total = total + ce.clone() * self.alpha;
        }
        Ok(SemiSupervisedParts { total, cross_entropy, mumford_shah })
    }
}
