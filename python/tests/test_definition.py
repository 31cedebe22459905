"""msloss against a float64 autodiff (PyTorch) of the definition written out independently here.

The definition (README, `core/src/reference.rs`), per sample b and class n, over pixels s of a
volume (D, H, W) with mask m (0/1, default ones):

    A_bn  = Σ_s m·y_bns
    c_bnk = Σ_s m·y_bns·x_bks / (A_bn + ε_c)
    F     = Σ_b Σ_n Σ_s m·y_bns·Σ_k (x_bks − c_bnk)²
    Len   = Σ_b Σ_n over forward differences d = y(s+e_a) − y(s) along each spatial axis of
            extent > 1, a pair counting only when both pixels are valid:
              l1 Σ|d|, l2 Σd², charbonnier Σ_s (sqrt(Σ_a d_a(s)² + δ²) − δ) with d_a(s) = 0
              where the pair is missing or invalid
    E     = w·F + λ·Len, both divided by V = Σ_b Σ_s m under the mean reduction.

Autograd of |d| has subgradient 0 at 0, as msloss's. Energies and gradients must agree within
1e-9 relative (f64).
"""

import numpy as np
import pytest

import msloss
from conftest import inputs, torch_or_skip


def definition(torch, scores, image, mask, *, logits=True, lam=1e-3, length="l1", delta=1e-2,
               centroid_eps=1e-8, fidelity_weight=1.0, reduction="sum"):
    """The energy of scores (B,N,D,H,W), image (B,C,D,H,W), mask (B,D,H,W) or None, in float64."""
    y = torch.softmax(scores, dim=1) if logits else scores
    b, n, d_, h, w = y.shape
    m = torch.ones((b, d_, h, w), dtype=y.dtype) if mask is None else mask
    my = m[:, None] * y                                          # (B,N,S...)
    area = my.sum(dim=(2, 3, 4))                                 # (B,N)
    moment = torch.einsum("bndhw,bcdhw->bnc", my, image)         # (B,N,C)
    c = moment / (area[..., None] + centroid_eps)
    dist2 = ((image[:, None] - c[..., None, None, None]) ** 2).sum(dim=2)  # (B,N,D,H,W)
    fid = (my * dist2).sum()

    # Forward differences along each spatial axis of extent > 1, valid where both pixels are.
    diffs = []
    for axis, extent in ((2, d_), (3, h), (4, w)):
        if extent <= 1:
            continue
        lo = [slice(None)] * 5
        hi = [slice(None)] * 5
        lo[axis] = slice(0, extent - 1)
        hi[axis] = slice(1, extent)
        dy = y[tuple(hi)] - y[tuple(lo)]
        mlo = [slice(None)] * 4
        mhi = [slice(None)] * 4
        mlo[axis - 1] = slice(0, extent - 1)
        mhi[axis - 1] = slice(1, extent)
        valid = (m[tuple(mhi)] * m[tuple(mlo)])[:, None]
        diffs.append((axis, dy * valid))
    if length == "l1":
        ln = sum(dd.abs().sum() for _, dd in diffs)
    elif length == "l2":
        ln = sum((dd ** 2).sum() for _, dd in diffs)
    else:
        # Each pixel s gathers d_a(s) of every axis; missing pairs (the last slice) are 0.
        sq = torch.zeros_like(y)
        for axis, dd in diffs:
            pad = [0, 0] * (4 - axis) + [0, 1]  # pad the end of `axis`
            sq = sq + torch.nn.functional.pad(dd ** 2, pad)
        ln = (torch.sqrt(sq + delta * delta) - delta).sum()
    fid = fidelity_weight * fid
    ln = lam * ln
    if reduction == "mean":
        v = m.sum()
        fid, ln = fid / v, ln / v
    return fid, ln


CASES = [
    # (b, n, c, spatial (D,H,W), mask, logits, params)
    (2, 3, 1, (1, 9, 11), False, True, {}),
    (1, 3, 2, (1, 12, 10), True, True, {"length": "l2", "lam": 0.3}),
    (2, 4, 3, (1, 8, 8), True, True, {"length": "charbonnier", "lam": 0.1, "delta": 0.05}),
    (1, 2, 1, (4, 5, 6), True, True, {"length": "charbonnier", "lam": 0.2, "reduction": "mean"}),
    (1, 3, 2, (3, 6, 5), True, False, {"lam": 0.05, "fidelity_weight": 2.0, "centroid_eps": 1e-3}),
    (2, 2, 1, (1, 7, 1), False, False, {"length": "l2", "lam": 0.5, "reduction": "mean"}),
    (1, 3, 1, (2, 1, 9), True, True, {"lam": 0.1, "centroid_eps": 0.5}),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_f64_autodiff_of_definition(case):
    torch = torch_or_skip()
    b, n, c, spatial, with_mask, logits, params = CASES[case]
    rng = np.random.default_rng(7 + case)
    z, x, m = inputs(rng, b, n, c, spatial, np.float64, mask=with_mask, probs=not logits)
    key = "logits" if logits else "probs"
    got = msloss.energy(x, mask=m, **{key: z}, **params)

    zt = torch.tensor(z, requires_grad=True)
    mt = None if m is None else torch.tensor(m, dtype=torch.float64)
    fid, ln = definition(torch, zt, torch.tensor(x), mt, logits=logits, **params)
    (fid + ln).backward()
    want_grad = zt.grad.numpy()

    for name, g, w in (("fidelity", got.fidelity, fid.item()), ("length", got.length, ln.item()),
                       ("total", got.total, fid.item() + ln.item())):
        assert abs(g - w) <= 1e-9 * abs(w), (name, g, w)
    assert ln.item() > 0 and fid.item() > 0
    scale = np.abs(want_grad).max()
    err = np.abs(got.grad - want_grad).max()
    assert err <= 1e-9 * scale, (err, scale)


def test_centroids_match_definition():
    rng = np.random.default_rng(3)
    z, x, m = inputs(rng, 2, 3, 2, (1, 6, 7), np.float64, mask=True)
    got = msloss.energy(x, logits=z, mask=m, centroid_eps=1e-8)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    my = m[:, None].astype(np.float64) * y
    want = np.einsum("bndhw,bcdhw->bnc", my, x) / (my.sum(axis=(2, 3, 4))[..., None] + 1e-8)
    np.testing.assert_allclose(got.centroids, want, rtol=1e-12, atol=0)
