#!/usr/bin/env python3
"""The local fidelity's table in BENCHMARKS.md: loss + gradient of the local (region-scalable) fidelity, f32 logits,
λ = 1e-3, L1 length, sum reduction, 2 threads, through the NumPy call `msloss.energy(..., fidelity="local")`
against the same formula written by hand in PyTorch and in JAX:

- PyTorch: separable Gaussian convolutions as two 1D `conv2d`s, zero padding (which is exactly "pixels outside the
  image are absent"), differentiated by eager autograd;
- JAX, the loss and its gradient with respect to the logits as one `jax.jit(jax.value_and_grad(...))` (XLA fuses
  the pointwise work), timed up to `block_until_ready` on inputs already on the (CPU) device, after a warm-up call
  that compiles it; two ways of writing the separable convolutions, both zero-padded, both timed:
  "lax.conv": two 1D `jax.lax.conv_general_dilated`s, as `torch_local` does it (what a JAX user reaches for first;
  the depthwise form, `feature_group_count`, ran no faster); "shifts": `jnp.pad` and the sum of the 2r + 1 shifted
  slices times the kernel's taps, which XLA's CPU backend ran faster than its convolution in every trial.

Threads: `torch.set_num_threads`, msloss's `threads=`, and for JAX the XLA flags of `shared/bench/peer.py`
(`--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=N`, set before jax is imported unless XLA_FLAGS is
already set). So that a reader sees what each actually used, the table also prints how many cores each call kept busy
(CPU seconds over wall seconds of the timed calls, the whole process counted). The speed-up is msloss's over the fastest peer.

First, once, both JAX versions in f64 (`jax_enable_x64`) against msloss's f64 energy and gradient on a small shape.
Then every row first checks, in f32, the loss (relative difference) and the gradient (largest difference over the
largest gradient magnitude, leaving out the few pixels at a tie of the L1 length, see `kinks`) of each peer against
msloss, and of each JAX version against PyTorch. A disagreement past
the tolerances below stops the script. Medians over rounds, the four calls alternating. The memory floor is the global
fidelity's (the scores and the image read once, the gradient written once): every convolution's planes can stay in
cache.

Needs torch, numpy, msloss and JAX on CPU:  pip install "jax[cpu]"

    python bench/local.py [--threads 2] [--rounds 5]
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import msloss  # noqa: E402

SHAPES = {"S1": (4, 2, 3, 256, 256), "S3": (1, 4, 3, 512, 512)}
SIGMAS = (2.0, 5.0)
JAX_CONVS = ("lax.conv", "shifts")
# f32: loss relative difference, gradient difference over the largest gradient magnitude; f64: both.
TOL_LOSS_F32, TOL_GRAD_F32, TOL_F64 = 1e-5, 1e-4, 1e-9


def torch_local(z, x, sigma, lam=1e-3, eps=1e-8):
    r = int(np.ceil(3 * sigma))
    d = torch.arange(-r, r + 1, dtype=z.dtype)
    k = torch.exp(-d * d / (2 * sigma * sigma))
    k = k / k.sum()
    kh, kw = k.view(1, 1, -1, 1), k.view(1, 1, 1, -1)

    def conv(v):  # [B, M, H, W], each of the M planes on its own
        b, m, h, w = v.shape
        v = v.reshape(b * m, 1, h, w)
        v = torch.nn.functional.conv2d(torch.nn.functional.conv2d(v, kh, padding=(r, 0)), kw, padding=(0, r))
        return v.reshape(b, m, h, w)

    return local_formula(torch.softmax(z, 1), x, conv, lam, eps)


def local_formula(y, x, conv, lam, eps):
    """The local fidelity plus λ·L1 length of probabilities `y` [B, N, H, W] and image `x` [B, C, H, W], with `conv`
    the separable window: written once for PyTorch tensors and JAX arrays alike."""
    a = conv(y)
    fid = conv(y * (x * x).sum(1)[:, None]).sum()
    for k_ in range(x.shape[1]):
        b = conv(y * x[:, k_:k_ + 1])
        f = b / (a + eps)
        fid = fid + (f * f * a - 2 * f * b).sum()
    tv = abs(y[:, :, 1:] - y[:, :, :-1]).sum() + abs(y[:, :, :, 1:] - y[:, :, :, :-1]).sum()
    return fid + lam * tv


def jax_local(z, x, sigma, conv="lax.conv", lam=1e-3, eps=1e-8):
    """`torch_local` in JAX: the same kernel (built in the logits' dtype), and `local_formula`;
    `conv` picks how the separable convolutions are written ("lax.conv" or "shifts", see the module's docstring)."""
    import jax
    import jax.numpy as jnp

    r = int(np.ceil(3 * sigma))
    d = jnp.arange(-r, r + 1, dtype=z.dtype)
    k = jnp.exp(-d * d / (2 * sigma * sigma))
    k = k / k.sum()

    def conv_lax(v):  # [B, M, H, W], each of the M planes on its own
        b, m, h, w = v.shape
        v = v.reshape(b * m, 1, h, w)
        v = jax.lax.conv_general_dilated(v, k.reshape(1, 1, -1, 1), (1, 1), ((r, r), (0, 0)))
        v = jax.lax.conv_general_dilated(v, k.reshape(1, 1, 1, -1), (1, 1), ((0, 0), (r, r)))
        return v.reshape(b, m, h, w)

    def conv_shifts(v):
        h, w = v.shape[2:]
        p = jnp.pad(v, ((0, 0), (0, 0), (r, r), (0, 0)))
        v = sum(k[i] * p[:, :, i:i + h] for i in range(2 * r + 1))
        p = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (r, r)))
        return sum(k[i] * p[:, :, :, i:i + w] for i in range(2 * r + 1))

    conv = {"lax.conv": conv_lax, "shifts": conv_shifts}[conv]
    return local_formula(jax.nn.softmax(z, axis=1), x, conv, lam, eps)


def jax_value_and_grad(sigma, conv):
    import jax
    return jax.jit(jax.value_and_grad(lambda z, x: jax_local(z, x, sigma, conv)))


def rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


def grad_diff(g, ref, skip=None):
    """The largest |g - ref| over the largest |ref|, leaving out the pixels `skip` ([B, H, W]) if given."""
    g, ref = np.asarray(g, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    d = np.abs(g - ref)
    if skip is not None:
        d[np.broadcast_to(skip[:, None], d.shape)] = 0
    return float(d.max() / np.abs(ref).max())


def kinks(y):
    """[B, H, W]: the pixels where some class's probability equals its neighbour's (below, above, left or right).
    There the L1 length has no derivative, and each implementation picks its own subgradient (PyTorch's |·| takes
    0, JAX's 1), so an f32 tie that the exact probabilities do not have moves the gradient at those two pixels by up
    to about λ (seen at S3: two pixels, where PyTorch's softmax rounds two probabilities of class 2 that differ by
    1.2e-8 to the same f32)."""
    y = np.asarray(y)
    t = np.zeros(y.shape[:1] + y.shape[2:], dtype=bool)
    v, h = (y[:, :, 1:] == y[:, :, :-1]).any(1), (y[:, :, :, 1:] == y[:, :, :, :-1]).any(1)
    t[:, 1:] |= v
    t[:, :-1] |= v
    t[:, :, 1:] |= h
    t[:, :, :-1] |= h
    return t


def check(what, value, tol):
    if not value <= tol:
        raise SystemExit(f"{what}: {value:.2e} exceeds {tol:.0e}")


def check_f64(threads):
    """JAX in f64 against msloss's f64 energy and gradient, once, on a small shape with a σ whose 3σ is not whole."""
    import jax
    jax.config.update("jax_enable_x64", True)
    try:
        b, n, c, h, w, sigma = 2, 3, 2, 40, 48, 2.5
        rng = np.random.default_rng(1)
        zn, xn = rng.standard_normal((b, n, h, w)), rng.random((b, c, h, w))
        ref = msloss.energy(xn, logits=zn, fidelity="local", sigma=sigma, threads=threads)
        for conv in JAX_CONVS:
            v, g = jax_value_and_grad(sigma, conv)(jax.numpy.asarray(zn), jax.numpy.asarray(xn))
            assert v.dtype == np.float64 and g.dtype == np.float64
            dl, dg = rel(v, ref.total), grad_diff(g, ref.grad)
            print(f"f64, {b},{n},{c},{h},{w}, σ {sigma:g}: JAX ({conv}) against msloss: loss {dl:.1e} relative, "
                  f"gradient {dg:.1e} of the largest magnitude (tolerance {TOL_F64:.0e})")
            check(f"f64 JAX ({conv}) loss", dl, TOL_F64)
            check(f"f64 JAX ({conv}) gradient", dg, TOL_F64)
    finally:
        jax.config.update("jax_enable_x64", False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={'true' if a.threads > 1 else 'false'} "
                                       f"intra_op_parallelism_threads={a.threads}")
    import jax
    import jax.numpy as jnp

    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, jax {jax.__version__}, numpy {np.__version__}, {a.threads} threads "
          f"(XLA_FLAGS={os.environ['XLA_FLAGS']}), f32 logits, load average {os.getloadavg()[0]:.2f}")
    check_f64(a.threads)
    print("| shape | σ | PyTorch ms | JAX lax.conv ms | JAX shifts ms | msloss ms | fastest peer / msloss "
          "| msloss floor GB/s | cores busy PyTorch/lax.conv/shifts/msloss |")
    print("|---|---|---|---|---|---|---|---|---|")
    agree = []
    for name, (b, n, c, h, w) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        z = torch.randn(b, n, h, w, generator=g, requires_grad=True)
        x = torch.rand(b, c, h, w, generator=g)
        zn, xn = z.detach().numpy(), x.numpy()
        zj, xj = jnp.asarray(zn), jnp.asarray(xn)
        floor = (3 * n + 2 * c) * b * h * w * 4
        skip = kinks(torch.softmax(z.detach(), 1).numpy()) | kinks(jax.nn.softmax(zj, axis=1))
        for sigma in SIGMAS:
            def peer():
                z.grad = None
                loss = torch_local(z, x, sigma)
                loss.backward()
                return loss.item(), z.grad

            def jax_call(conv):
                f = jax_value_and_grad(sigma, conv)

                def call():
                    v, gr = f(zj, xj)
                    return v.block_until_ready(), gr.block_until_ready()
                return call

            def ours():
                return msloss.energy(xn, logits=zn, fidelity="local", sigma=sigma, threads=a.threads)

            calls = {"PyTorch": peer, **{f"JAX {conv}": jax_call(conv) for conv in JAX_CONVS}, "msloss": ours}
            # Agreement; these calls are also the warm-up (each JAX version's first call compiles it).
            ref = ours()
            lt, gt = peer()
            gt = gt.numpy().copy()
            for who, f in calls.items():
                if who == "msloss":
                    continue
                lv, gv = (lt, gt) if who == "PyTorch" else f()
                row = [rel(lv, ref.total), grad_diff(gv, ref.grad, skip)]
                if who != "PyTorch":
                    row += [rel(lv, lt), grad_diff(gv, gt, skip)]
                for what, v, tol in zip(("loss", "gradient", "loss against PyTorch", "gradient against PyTorch"),
                                        row, (TOL_LOSS_F32, TOL_GRAD_F32) * 2):
                    check(f"{name} σ {sigma:g}, {who}: {what}", v, tol)
                agree.append((f"{name} {b},{n},{c},{h},{w}", sigma, who, int(skip.sum()), row))

            wall = {k: [] for k in calls}
            cpu = {k: 0.0 for k in calls}
            for _ in range(a.rounds):
                for k, f in calls.items():
                    c0, t = time.process_time(), time.perf_counter()
                    f()
                    wall[k].append(time.perf_counter() - t)
                    cpu[k] += time.process_time() - c0
            med = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
            mo = med.pop("msloss")
            best = min(med, key=med.get)
            busy = "/".join(f"{cpu[k] / sum(wall[k]):.1f}" for k in calls)
            print(f"| {name} {b},{n},{c},{h},{w} | {sigma:g} | " + " | ".join(f"{v:.1f}" for v in med.values())
                  + f" | {mo:.1f} | {med[best] / mo:.1f}× ({best}) | {floor / (mo * 1e-3) / 1e9:.2f} | {busy} |",
                  flush=True)
    print()
    print("| shape | σ | peer | loss against msloss | gradient against msloss | loss against PyTorch "
          "| gradient against PyTorch | pixels left out (L1 kink) |")
    print("|---|---|---|---|---|---|---|---|")
    for s, sigma, who, n_skip, row in agree:
        print(f"| {s} | {sigma:g} | {who} | " + " | ".join(f"{v:.1e}" for v in row) + " | —" * (4 - len(row))
              + f" | {n_skip} |")
    print(f"(f32; loss: relative difference, tolerance {TOL_LOSS_F32:.0e}; gradient: largest difference over the "
          f"largest magnitude, tolerance {TOL_GRAD_F32:.0e}, leaving out the pixels where PyTorch's or JAX's "
          "probabilities tie with a neighbour's, see kinks())")


if __name__ == "__main__":
    main()
