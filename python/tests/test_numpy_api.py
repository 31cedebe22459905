"""The NumPy API: results, copies, options, gradcheck, segment, bad inputs, import without torch."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import msloss
from conftest import inputs


def test_result_object():
    rng = np.random.default_rng(0)
    z, x, m = inputs(rng, 2, 3, 2, (8, 9), np.float32, mask=True)
    r = msloss.energy(x, logits=z, mask=m)
    assert isinstance(r, msloss.Energy)
    assert r.total == np.float32(np.float32(r.fidelity) + np.float32(r.length)) or abs(
        r.total - (r.fidelity + r.length)) <= 1e-6 * r.total
    assert r.fidelity > 0 and r.length > 0
    assert r.centroids.shape == (2, 3, 2) and r.centroids.dtype == np.float32
    assert r.grad.shape == z.shape and r.grad.dtype == np.float32
    assert r.dtype == "float32"
    assert 0 < r.seconds < 60
    assert r.copies == ["mask"]  # a uint8 mask is converted to the scores' dtype
    assert "Energy(total=" in repr(r)
    r2 = msloss.energy(x, logits=z, mask=m, grad=False)
    assert r2.grad is None and r2.total == r.total


def test_zero_copy_and_copies():
    rng = np.random.default_rng(1)
    z, x, _ = inputs(rng, 1, 2, 1, (6, 7), np.float64)
    assert msloss.energy(x, logits=z).copies == []
    # A transposed view and an image of another dtype are copied, with the same result.
    zt = np.ascontiguousarray(z.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not zt.flags.c_contiguous
    r = msloss.energy(x.astype(np.float32), logits=zt)
    assert r.copies == ["logits", "image"]
    want = msloss.energy(x.astype(np.float32).astype(np.float64), logits=z)
    assert r.total == want.total
    np.testing.assert_array_equal(r.grad, want.grad)
    # Fortran order is not C order: copied too.
    r = msloss.energy(np.asfortranarray(x), logits=z)
    assert r.copies == ["image"]


def test_rank_4_and_5_and_mask_layouts_agree():
    rng = np.random.default_rng(2)
    z, x, m = inputs(rng, 2, 3, 1, (9, 10), np.float64, mask=True)
    r4 = msloss.energy(x, logits=z, mask=m)
    r5 = msloss.energy(x[:, :, None], logits=z[:, :, None], mask=m[:, None])
    r4b = msloss.energy(x, logits=z, mask=m[:, None].astype(bool))
    assert r4.total == r5.total == r4b.total
    np.testing.assert_array_equal(r4.grad, r5.grad[:, :, 0])


def test_threads_give_the_same_bits():
    rng = np.random.default_rng(3)
    z, x, _ = inputs(rng, 2, 4, 3, (70, 90), np.float32)
    a = msloss.energy(x, logits=z, threads=1)
    b = msloss.energy(x, logits=z, threads=2)
    c = msloss.energy(x, logits=z)
    assert a.total == b.total == c.total
    np.testing.assert_array_equal(a.grad, b.grad)
    np.testing.assert_array_equal(a.grad, c.grad)
    # More thread counts than the bindings keep pools for (4): evicted and rebuilt, the same bits.
    for t in (3, 4, 5, 6, 1, 2):
        r = msloss.energy(x, logits=z, threads=t)
        assert r.total == a.total
        np.testing.assert_array_equal(r.grad, a.grad)


def test_reference_backend_agrees():
    rng = np.random.default_rng(4)
    z, x, m = inputs(rng, 1, 3, 2, (12, 13), np.float64, mask=True)
    for length in ("l1", "l2", "charbonnier"):
        a = msloss.energy(x, logits=z, mask=m, length=length, lam=0.1)
        b = msloss.energy(x, logits=z, mask=m, length=length, lam=0.1, backend="reference")
        assert abs(a.total - b.total) <= 1e-12 * b.total
        np.testing.assert_allclose(a.grad, b.grad, rtol=0, atol=1e-12 * np.abs(b.grad).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kw", [{}, {"input": "probs", "mask": True, "length": "charbonnier"},
                                {"length": "l2", "reduction": "mean"}])
def test_gradcheck(dtype, kw):
    r = msloss.gradcheck((1, 3, 2, 5, 6), dtype=dtype, lam=0.1, **kw)
    assert r["pass"] is True, r
    assert r["mode"] == "full" and r["checks"] > 0
    assert r["dtype"] == dtype
    r = msloss.gradcheck((1, 2, 1, 6, 7, 3), dtype=dtype, full_limit=10, backend="reference")
    assert r["pass"] is True and r["mode"] == "directional", r


def test_gradcheck_fails_at_a_tight_tolerance():
    # float32 is not exact to 1e-15: the checker reports a failure rather than passing anything.
    r = msloss.gradcheck((1, 3, 1, 8, 8), dtype="float32", tol=1e-15)
    assert r["pass"] is False and r["max_rel_error"] > 1e-15


def test_segment_recovers_two_phases():
    rng = np.random.default_rng(5)
    truth = np.zeros((40, 48), dtype=np.uint8)
    truth[8:30, 10:36] = 1
    img = (0.25 + 0.5 * truth + 0.08 * rng.normal(size=truth.shape)).astype(np.float32)
    labels = msloss.segment(img, 2, seed=1)
    assert labels.shape == (40, 48) and labels.dtype == np.uint8
    assert (labels == truth).mean() > 0.99
    again, info = msloss.segment(img, 2, seed=1, info=True)
    np.testing.assert_array_equal(again, labels)
    assert info["phases"] == 2 and len(info["history"]) == info["iterations"] >= 1
    assert info["pixels_per_phase"] == [int((labels == k).sum()) for k in range(2)]
    assert abs(info["energy"]["total"] - info["history"][-1]) <= 1e-9 * abs(info["history"][-1])
    # Label 0 is the darker phase: its centroid is about 0.25, label 1's about 0.75.
    assert abs(info["centroids"][0][0] - 0.25) < 0.05 and abs(info["centroids"][1][0] - 0.75) < 0.05
    # uint8 input is divided by 255 (same segmentation); a colour image and a volume work too.
    u8 = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    assert (msloss.segment(u8, 2, seed=1) == truth).mean() > 0.99
    rgb = np.stack([img, img[::-1, ::-1].copy(), img])
    assert msloss.segment(rgb, 2, iters=5).shape == (40, 48)
    vol = np.stack([img] * 3)[None]  # (C=1, D=3, H, W)
    assert msloss.segment(vol, phases=2, iters=5).shape == (3, 40, 48)


def test_bad_inputs_raise_typed_errors():
    rng = np.random.default_rng(6)
    z, x, m = inputs(rng, 2, 3, 1, (5, 6), np.float32, mask=True)
    cases = [
        (TypeError, "logits must have dtype float32 or float64, got int64", dict(logits=z.astype(np.int64))),
        (TypeError, "logits must have dtype float32 or float64, got float16", dict(logits=z.astype(np.float16))),
        (TypeError, "image must be a numpy.ndarray, got list", dict(logits=z, image=x.tolist())),
        (TypeError, "image must have dtype float32 or float64", dict(logits=z, image=x.astype(np.int32))),
        (TypeError, "mask must have dtype", dict(logits=z, mask=m.astype(np.complex64))),
        (ValueError, "exactly one of logits and probs", dict()),
        (ValueError, "exactly one of logits and probs", dict(logits=z, probs=z)),
        (ValueError, "image has H = 4 but the scores have H = 5", dict(logits=z, image=x[:, :, :4])),
        (ValueError, "image has B = 1 but the scores have B = 2", dict(logits=z, image=x[:1])),
        (ValueError, "mask has W = 5 but the scores have W = 6", dict(logits=z, mask=m[:, :, :5])),
        (ValueError, "scores must have rank 4", dict(logits=z[0])),
        (ValueError, "zero-sized dimension", dict(logits=z[:, :0], image=x)),
        (ValueError, "logits is not finite at flat index 7", dict(logits=np.where(np.arange(z.size).reshape(z.shape) == 7, np.nan, z).astype(np.float32))),
        (ValueError, "probabilities must be >= 0", dict(probs=-np.abs(z))),
        (ValueError, "mask values must be 0 or 1", dict(logits=z, mask=m * 2)),
        (ValueError, "parameter lambda must be finite, >= 0 and <= 1e30, got -1", dict(logits=z, lam=-1.0)),
        (ValueError, "parameter delta must be between 1e-15 and 1e15, got 0", dict(logits=z, delta=0.0)),
        (ValueError, "parameter centroid_eps", dict(logits=z, centroid_eps=float("nan"))),
        (ValueError, "parameter fidelity_weight", dict(logits=z, fidelity_weight=float("inf"))),
        (ValueError, 'length must be "l1", "l2" or "charbonnier", got "tv"', dict(logits=z, length="tv")),
        (ValueError, 'reduction must be "sum" or "mean"', dict(logits=z, reduction="max")),
        (ValueError, 'backend must be "cpu" or "reference"', dict(logits=z, backend="wgpu")),
        (ValueError, "threads must be between 1 and 1024, got 0", dict(logits=z, threads=0)),
        (ValueError, "threads must be between 1 and 1024, got -2", dict(logits=z, threads=-2)),
        (ValueError, "threads must be between 1 and 1024, got 5000", dict(logits=z, threads=5000)),
        (ValueError, "the mask selects no pixel", dict(logits=z, mask=np.zeros_like(m), reduction="mean")),
        (ValueError, "came out non-finite", dict(logits=z, image=x * np.float32(1e15), fidelity_weight=1e30)),
        (ValueError, "image at flat index 0 holds 1000000015047466200000000000000, beyond", dict(logits=z, image=np.full_like(x, 1e30))),
    ]
    for exc, msg, kw in cases:
        kw = {"image": x, **kw}
        image = kw.pop("image")
        with pytest.raises(exc) as info:
            msloss.energy(image, **kw)
        assert msg in str(info.value), (msg, str(info.value))


def test_bad_gradcheck_and_segment_arguments():
    with pytest.raises(ValueError, match=r"shape must be \(B, N, C, H, W\)"):
        msloss.gradcheck((1, 2, 3))
    with pytest.raises(ValueError, match="zero-sized"):
        msloss.gradcheck((1, 0, 1, 4, 4))
    with pytest.raises(TypeError, match="dtype must be"):
        msloss.gradcheck((1, 2, 1, 4, 4), dtype="float16")
    with pytest.raises(ValueError, match="input must be"):
        msloss.gradcheck((1, 2, 1, 4, 4), input="scores")
    img = np.random.default_rng(0).uniform(size=(16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="phases must be an integer >= 2, got 1"):
        msloss.segment(img, 1)
    with pytest.raises(ValueError, match="number of phases"):
        msloss.segment(img, 300)
    with pytest.raises(ValueError, match="expected \\(H, W\\)"):
        msloss.segment(img[None, None, None], 2)
    with pytest.raises(TypeError, match="image must have a float, integer or bool dtype"):
        msloss.segment(img.astype(np.complex64), 2)
    with pytest.raises(ValueError, match="not finite"):
        msloss.segment(np.where(img > 0.5, np.nan, img), 2)
    with pytest.raises(ValueError, match="iters must be an integer >= 1"):
        msloss.segment(img, 2, iters=0)
    with pytest.raises(ValueError, match="setting tol"):
        msloss.segment(img, 2, tol=-1.0)


def test_imports_and_works_without_torch():
    # torch made unimportable: `import msloss` and the NumPy API must not need it.
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np, msloss
        r = msloss.energy(np.ones((1, 1, 2, 2), np.float32), logits=np.zeros((1, 2, 2, 2), np.float32))
        assert r.grad.shape == (1, 2, 2, 2)
        try:
            import msloss.torch
        except ImportError:
            print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "ok"


def test_gil_is_released():
    # A Python thread keeps counting while Rust computes: it could not if the GIL were held.
    import threading

    rng = np.random.default_rng(8)
    z, x, _ = inputs(rng, 1, 4, 3, (512, 512), np.float32)
    count = [0]
    stop = threading.Event()

    def counter():
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=counter)
    t.start()
    try:
        during = []
        for _ in range(3):
            c0 = count[0]
            msloss.energy(x, logits=z, threads=1, backend="reference")
            during.append(count[0] - c0)
    finally:
        stop.set()
        t.join()
    assert max(during) > 10_000, during


def test_concurrent_calls_agree():
    import threading

    rng = np.random.default_rng(9)
    z, x, _ = inputs(rng, 1, 3, 1, (128, 128), np.float32)
    want = msloss.energy(x, logits=z, threads=1).total
    results = []
    ts = [threading.Thread(target=lambda: results.append(msloss.energy(x, logits=z, threads=1).total))
          for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == [want] * 4


def test_non_finite_gradient_is_refused():
    # A finite energy whose float32 gradient overflows: probabilities, two pixels far apart in intensity, each
    # wholly in its own class; the other class's gradient there is w·(x − c)² = 1e30·1e36, past float32.
    x = np.zeros((1, 1, 1, 2), np.float32)
    x[0, 0, 0, 1] = 1e18
    p = np.zeros((1, 2, 1, 2), np.float32)
    p[0, 0, 0, 0] = p[0, 1, 0, 1] = 1
    ok = msloss.energy(x, probs=p)
    assert np.isfinite(ok.grad).all()
    with pytest.raises(ValueError, match="the gradient came out non-finite"):
        msloss.energy(x, probs=p, fidelity_weight=1e30)
    # Without the gradient, the finite energy is returned.
    assert np.isfinite(msloss.energy(x, probs=p, fidelity_weight=1e30, grad=False).total)


def test_segment_takes_the_local_fidelity():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:48, :48] / 48.0
    truth = ((y - 0.5) ** 2 + (x - 0.4) ** 2 < 0.06).astype(np.uint8)
    img = (np.array([0.35, 0.65])[truth] * (1 + 0.6 * (x - 0.5) * 2) + 0.03 * rng.standard_normal(truth.shape))
    labels, info = msloss.segment(img.astype(np.float32), 2, fidelity="local", sigma=4.0, info=True)
    assert labels.shape == (48, 48) and info["start"] in ("otsu", "kmeans") and info["rescues"] == []
    assert (labels == truth).mean() > 0.95
    with pytest.raises(ValueError, match="needs sigma"):
        msloss.segment(img, 2, fidelity="local")
