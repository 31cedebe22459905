//! The peer: the multiphase Mumford–Shah loss written in burn tensor operations and
//! differentiated by burn's autodiff, as a burn user would write it without msloss. It is an
//! independent check of msloss's values and gradients, and the baseline its speed is compared
//! with. 2D only (`[B, N, H, W]`), every parameter of the definition.

#![allow(dead_code, reason = "each test binary and bench uses a part")]

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use msloss_core::{LengthKind, Params, Reduction};

/// Forward differences along axis `axis` (2: H, 3: W) of `t` `[B, K, H, W]`, zero-padded at the
/// end of the axis so the result is `[B, K, H, W]` with the difference that starts at each
/// pixel; and the pairs' validity from the mask `m` `[B, 1, H, W]` (1 where both pixels are
/// valid and the pair exists).
fn forward_diff(t: Tensor<4>, m: Tensor<4>, axis: usize) -> (Tensor<4>, Tensor<4>) {
    let len = t.dims()[axis];
    if len < 2 {
        return (t.zeros_like(), m.zeros_like());
    }
    let d = t.clone().narrow(axis, 1, len - 1) - t.narrow(axis, 0, len - 1);
    let v = m.clone().narrow(axis, 1, len - 1) * m.narrow(axis, 0, len - 1);
    let pad = |x: Tensor<4>| {
        let mut dims = x.dims();
        dims[axis] = 1;
        let zeros = Tensor::<4>::zeros(dims, (&x.device(), x.dtype()));
        Tensor::cat(vec![x, zeros], axis)
    };
    (pad(d), pad(v))
}

/// `E` of `logits` `[B, N, H, W]` for `image` `[B, C, H, W]` and `mask` `[B, 1, H, W]` (0/1) or
/// none, as a `[1]` tensor; differentiable wrt the logits by burn's autodiff.
pub(crate) fn peer_loss(logits: Tensor<4>, image: Tensor<4>, mask: Option<Tensor<4>>, p: &Params) -> Tensor<1> {
    let [b, n, h, w] = logits.dims();
    let c = image.dims()[1];
    let device = logits.device();
    let m = mask.unwrap_or_else(|| Tensor::<4>::ones([b, 1, h, w], (&device, logits.dtype())));
    let y = softmax(logits, 1);
    // Centroids c_bnk = Σ m·y·x_k / (Σ m·y + ε), [B, N, C].
    let my = y.clone() * m.clone();
    let area = my.clone().sum_dims(&[2, 3]).reshape([b, n, 1]);
    let flat_my = my.clone().reshape([b, n, h * w]);
    let flat_x = image.clone().reshape([b, c, h * w]);
    let moment = flat_my.matmul(flat_x.clone().swap_dims(1, 2));
    let cent = moment / (area + p.centroid_eps);
    // ‖x − c_n‖², [B, N, S], summed over the channels as the definition reads.
    let diff = flat_x.unsqueeze_dim::<4>(1) - cent.unsqueeze_dim::<4>(3);
    let dist2 = diff.powf_scalar(2.0).sum_dim(2).reshape([b, n, h * w]);
    let fidelity = (my.reshape([b, n, h * w]) * dist2).sum();
    // Length over forward differences whose two pixels are valid.
    let (dh, vh) = forward_diff(y.clone(), m.clone(), 2);
    let (dw, vw) = forward_diff(y, m.clone(), 3);
    let length = match p.length {
        LengthKind::L1 => (dh.abs() * vh).sum() + (dw.abs() * vw).sum(),
        LengthKind::L2 => (dh.powf_scalar(2.0) * vh).sum() + (dw.powf_scalar(2.0) * vw).sum(),
        LengthKind::Charbonnier => {
            let sq = dh.powf_scalar(2.0) * vh + dw.powf_scalar(2.0) * vw;
            (sq.add_scalar(p.delta * p.delta).sqrt().sub_scalar(p.delta)).sum()
        }
    };
    let e = fidelity * p.fidelity_weight + length * p.lambda;
    match p.reduction {
        Reduction::Sum => e,
        Reduction::Mean => e / m.sum(),
    }
}
