"""The bindings give the same bits as the Rust CPU backend run by the `msloss energy` tool.

Each case saves its arrays as .npy, runs `msloss energy ... --grad-out g.npy`, and compares the
energy's parts and centroids (printed as shortest round-trip decimals, so exact) and the
gradient (read back from .npy) with `msloss.energy` bit for bit.
"""

import json
import subprocess

import numpy as np
import pytest

import msloss
from conftest import inputs

CASES = [
    # (b, n, c, spatial, dtype, mask, probs, params)
    (2, 3, 1, (17, 23), np.float32, False, False, {}),
    (2, 3, 3, (17, 23), np.float64, True, False, {"length": "l2", "lam": 0.05}),
    (1, 4, 2, (5, 9, 11), np.float32, True, False, {"length": "charbonnier", "delta": 0.05}),
    (1, 2, 1, (4, 7, 6), np.float64, False, True, {"reduction": "mean", "lam": 0.2}),
    (3, 2, 2, (33, 40), np.float32, True, True, {"fidelity_weight": 0.5, "centroid_eps": 1e-4, "threads": 2}),
    (1, 5, 3, (130, 129), np.float32, False, False, {"length": "charbonnier", "reduction": "mean"}),
    (1, 3, 1, (64, 64), np.float64, True, False, {"backend": "reference"}),
]

FLAGS = {
    "lam": "--lambda",
    "length": "--length",
    "delta": "--delta",
    "centroid_eps": "--centroid-eps",
    "fidelity_weight": "--fidelity-weight",
    "reduction": "--reduction",
    "backend": "--backend",
    "threads": "--threads",
}


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_bits_as_cli(case, cli, tmp_path):
    b, n, c, spatial, dtype, with_mask, probs, params = CASES[case]
    rng = np.random.default_rng(100 + case)
    z, x, m = inputs(rng, b, n, c, spatial, dtype, mask=with_mask, probs=probs)
    key = "probs" if probs else "logits"
    np.save(tmp_path / "s.npy", z)
    np.save(tmp_path / "x.npy", x)
    cmd = [str(cli), "energy", "--image", str(tmp_path / "x.npy"), f"--{key}", str(tmp_path / "s.npy"),
           "--grad-out", str(tmp_path / "g.npy")]
    if m is not None:
        np.save(tmp_path / "m.npy", m)
        cmd += ["--mask", str(tmp_path / "m.npy")]
    for k, v in params.items():
        cmd += [FLAGS[k], str(v)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    want = json.loads(out)
    want_grad = np.load(tmp_path / "g.npy")

    got = msloss.energy(x, mask=m, **{key: z}, **params)
    assert got.dtype == np.dtype(dtype).name
    # Exact equality of the printed f64 values (each the backend's T widened exactly).
    for part in ("fidelity", "length", "total"):
        assert getattr(got, part) == want[part], part
    assert got.centroids.dtype == dtype and got.grad.dtype == dtype
    np.testing.assert_array_equal(got.centroids.astype(np.float64), np.array(want["centroids"]))
    assert got.grad.shape == z.shape == want_grad.shape
    np.testing.assert_array_equal(bits(got.grad), bits(want_grad))
    assert np.abs(got.grad).max() > 0
