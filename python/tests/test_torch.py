"""msloss.torch: the autograd Function, its gradient, dtypes, copies and a small training loop."""

import numpy as np
import pytest

import msloss
from conftest import torch_or_skip

torch = torch_or_skip()
from msloss.torch import MumfordShahLoss, mumford_shah_loss  # noqa: E402


def data(b=2, n=3, c=1, h=10, w=12, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (2 * torch.randn(b, n, h, w, generator=g, dtype=torch.float64)).to(dtype)
    x = torch.rand(b, c, h, w, generator=g, dtype=torch.float64).to(dtype)
    m = torch.rand(b, h, w, generator=g) < 0.8
    return z, x, m


@pytest.mark.parametrize("length", ["l1", "l2", "charbonnier"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_autograd_gradcheck_float64(length, reduction):
    z, x, m = data(b=1, n=3, c=2, h=5, w=6)
    z.requires_grad_(True)

    def f(z):
        return mumford_shah_loss(z, x, m, lam=0.2, length=length, reduction=reduction, delta=0.1)

    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_probs_and_3d():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(1, 2, 3, 4, 5, generator=g, dtype=torch.float64) + 0.1
    x = torch.rand(1, 1, 3, 4, 5, generator=g, dtype=torch.float64)
    p.requires_grad_(True)
    f = lambda p: mumford_shah_loss(p, x, input="probs", lam=0.1, length="charbonnier")  # noqa: E731
    assert torch.autograd.gradcheck(f, (p,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_forward_and_grad_equal_numpy_api():
    z, x, m = data(dtype=torch.float32)
    z.requires_grad_(True)
    loss = MumfordShahLoss(lam=0.01, length="l2")(z, x, m)
    loss.backward()
    r = msloss.energy(x.numpy(), logits=z.detach().numpy(), mask=m.numpy(), lam=0.01, length="l2")
    assert loss.dtype == torch.float32 and loss.item() == np.float32(r.total)
    assert torch.equal(z.grad, torch.from_numpy(r.grad))


def test_grad_output_scales_gradient():
    z, x, m = data()
    z.requires_grad_(True)
    (3.0 * mumford_shah_loss(z, x, m)).backward()
    g3 = z.grad.clone()
    z.grad = None
    mumford_shah_loss(z, x, m).backward()
    torch.testing.assert_close(g3, 3.0 * z.grad, rtol=1e-15, atol=0)


def test_gradient_is_handed_over_without_copy_and_backward_twice_works():
    z, x, m = data(dtype=torch.float32)
    z.requires_grad_(True)
    loss = mumford_shah_loss(z, x, m)
    ptr = loss.grad_fn.grad.__array_interface__["data"][0]
    loss.backward(retain_graph=True)
    assert z.grad.data_ptr() == ptr  # msloss's buffer became z.grad
    first = z.grad.clone()
    loss.backward()  # computed again: accumulated, the same bits
    assert torch.equal(z.grad, 2 * first)


def test_in_place_change_of_the_scores_is_reported():
    z, x, m = data()
    w = z.clone().requires_grad_(True)
    y = w * 1.0
    loss = mumford_shah_loss(y, x, m)
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_contiguous_cpu_tensors_are_not_copied(monkeypatch):
    import msloss.torch as mt

    seen = []
    real = mt._msloss.energy

    def spy(*a, **k):
        r = real(*a, **k)
        seen.append(list(r.copies))
        return r

    monkeypatch.setattr(mt._msloss, "energy", spy)
    z, x, _ = data(dtype=torch.float32)
    m = torch.ones(2, 10, 12, dtype=torch.float32)
    z.requires_grad_(True)
    mumford_shah_loss(z, x, m).backward()
    assert seen == [[]]
    # A transposed (non-contiguous) image is made contiguous on the torch side: still no copy in Rust,
    # and the same result as the contiguous one.
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous()
    assert mumford_shah_loss(z, xt, m).item() == mumford_shah_loss(z, x, m).item()


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_computed_in_float32(half):
    dtype = getattr(torch, half)
    z32, x, m = data(dtype=torch.float32)
    z = z32.to(dtype).requires_grad_(True)
    loss = mumford_shah_loss(z, x, m, lam=0.01)
    assert loss.dtype == torch.float32
    loss.backward()
    assert z.grad.dtype == dtype and z.grad.shape == z.shape
    want = msloss.energy(x.numpy(), logits=z.detach().float().numpy(), mask=m.numpy(), lam=0.01)
    assert loss.item() == np.float32(want.total)
    assert torch.equal(z.grad, torch.from_numpy(want.grad).to(dtype))


def test_training_loop_three_steps():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # Two-phase image: a bright square on a dark background, with noise.
    x = torch.full((2, 1, 24, 24), 0.2)
    x[:, :, 6:18, 6:18] = 0.8
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = MumfordShahLoss(lam=1e-3, reduction="mean")
    losses = []
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        opt.zero_grad()
        loss = criterion(model(x), x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    with torch.no_grad():
        final = criterion(model(x), x).item()
    assert final < losses[0], (losses, final)


def test_no_grad_forward_computes_no_gradient(monkeypatch):
    import msloss.torch as mt

    grads = []
    real = mt._msloss.energy
    monkeypatch.setattr(mt._msloss, "energy", lambda *a, **k: grads.append(k["grad"]) or real(*a, **k))
    z, x, m = data()
    with torch.no_grad():
        mumford_shah_loss(z, x, m)
    mumford_shah_loss(z, x, m)  # z does not require grad either
    mumford_shah_loss(z.requires_grad_(True), x, m)
    assert grads == [False, False, True]


def test_bad_inputs():
    z, x, m = data()
    with pytest.raises(TypeError):
        mumford_shah_loss(z.numpy(), x)
    with pytest.raises(TypeError):
        mumford_shah_loss(z.to(torch.int64), x)
    with pytest.raises(TypeError):
        mumford_shah_loss(z, x.to(torch.int32))
    with pytest.raises(TypeError):
        mumford_shah_loss(z, x, m.numpy())
    with pytest.raises(ValueError, match="no gradient with respect to the image"):
        mumford_shah_loss(z, x.clone().requires_grad_(True))
    with pytest.raises(ValueError, match="image has H"):
        mumford_shah_loss(z, x[:, :, :5])
    with pytest.raises(ValueError, match="not finite"):
        mumford_shah_loss(z.clone().fill_(float("nan")), x)
    with pytest.raises(ValueError, match="mask values must be 0 or 1"):
        mumford_shah_loss(z, x, m.to(torch.int32) * 2)
    with pytest.raises(ValueError, match="lambda"):
        mumford_shah_loss(z, x, lam=-1.0)
    with pytest.raises(ValueError, match="input"):
        mumford_shah_loss(z, x, input="scores")
    with pytest.raises(TypeError, match="unexpected keyword argument 'lamda'"):
        MumfordShahLoss(lamda=1.0)
    with pytest.raises(ValueError, match="parameter delta"):
        MumfordShahLoss(length="charbonnier", delta=0.0)(z, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_tensors_round_trip():
    z, x, m = data(dtype=torch.float32)
    zc = z.cuda().requires_grad_(True)
    loss = mumford_shah_loss(zc, x.cuda(), m.cuda())
    assert loss.device == zc.device
    loss.backward()
    assert zc.grad.device == zc.device
    r = msloss.energy(x.numpy(), logits=z.numpy(), mask=m.numpy())
    assert loss.item() == np.float32(r.total)
    assert torch.equal(zc.grad.cpu(), torch.from_numpy(r.grad))


def local_definition(z, x, m, sigma, lam, eps=1e-8):
    """The local fidelity (2D) written with torch convolutions, differentiated by autograd: zero
    padding is exactly "pixels outside the image do not exist", since every window sum is of
    m·y·(...)."""
    r = int(np.ceil(3 * sigma))
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    k1 = torch.exp(-d * d / (2 * sigma * sigma))
    k1 = k1 / k1.sum()
    k2 = (k1[:, None] * k1[None, :])[None, None]
    conv = lambda v: torch.nn.functional.conv2d(v[:, None], k2, padding=r)[:, 0]  # noqa: E731
    y = torch.softmax(z, 1)
    mf = m.to(torch.float64)
    fid = 0.0
    for n in range(z.shape[1]):
        wy = mf * y[:, n]
        a = conv(wy)
        e = sum(conv(wy * x[:, k] ** 2) for k in range(x.shape[1]))
        f_part = 0.0
        for k in range(x.shape[1]):
            b = conv(wy * x[:, k])
            f = b / (a + eps)
            f_part = f_part - 2 * f * b + f * f * a
        fid = fid + (e + f_part).sum()
    # The L1 length, as in the global definition's tests.
    valid_h = mf[:, 1:] * mf[:, :-1]
    valid_w = mf[:, :, 1:] * mf[:, :, :-1]
    tv = ((y[:, :, 1:] - y[:, :, :-1]).abs() * valid_h[:, None]).sum() + \
        ((y[:, :, :, 1:] - y[:, :, :, :-1]).abs() * valid_w[:, None]).sum()
    return fid + lam * tv


@pytest.mark.parametrize("sigma", [0.8, 2.0])
def test_local_fidelity_matches_f64_autodiff(sigma):
    z, x, m = data(b=2, n=3, c=2, h=9, w=11)
    z.requires_grad_(True)
    want = local_definition(z, x, m, sigma, lam=0.05)
    (want_grad,) = torch.autograd.grad(want, z)
    z2 = z.detach().clone().requires_grad_(True)
    got = mumford_shah_loss(z2, x, m, lam=0.05, fidelity="local", sigma=sigma)
    got.backward()
    assert abs(got.item() - want.item()) <= 1e-9 * abs(want.item())
    assert torch.allclose(z2.grad, want_grad, rtol=1e-9, atol=1e-9 * want_grad.abs().max().item())


def test_local_fidelity_autograd_gradcheck():
    z, x, m = data(b=1, n=2, c=1, h=6, w=7)
    z.requires_grad_(True)
    f = lambda z: mumford_shah_loss(z, x, m, lam=0.2, fidelity="local", sigma=1.2)  # noqa: E731
    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_local_fidelity_arguments_are_checked():
    z, x, m = data(b=1, n=2, c=1, h=6, w=7)
    for kw, msg in [(dict(fidelity="local"), "needs sigma"), (dict(sigma=2.0), "sigma is for"),
                    (dict(fidelity="local", sigma=0.0), "sigma must be finite, > 0"),
                    (dict(fidelity="local", sigma=8.0), "at most the largest spatial extent"),
                    (dict(fidelity="regional", sigma=1.0), 'fidelity must be "global" or "local"')]:
        with pytest.raises(ValueError, match=msg):
            mumford_shah_loss(z, x, m, **kw)
