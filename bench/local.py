#!/usr/bin/env python3
"""The local fidelity's table in BENCHMARKS.md: loss + gradient of the local (region-scalable) fidelity, f32 logits,
λ = 1e-3, L1 length, sum reduction, 2 threads, through the NumPy call `msloss.energy(..., fidelity="local")`
against the same formula written in PyTorch (separable Gaussian convolutions as two 1D `conv2d`s, zero padding, which
is exactly "pixels outside the image are absent"), differentiated by eager autograd. Medians over rounds, calls
alternating. The memory floor is the global fidelity's (the scores and the image read once, the gradient written
once): every convolution's planes can stay in cache.

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

    y = torch.softmax(z, 1)
    n_cls, c = z.shape[1], x.shape[1]
    a = conv(y)
    e = conv(y * (x * x).sum(1, keepdim=True))
    fid = e.sum()
    for k_ in range(c):
        b = conv(y * x[:, k_:k_ + 1])
        f = b / (a + eps)
        fid = fid + (f * f * a - 2 * f * b).sum()
    tv = (y[:, :, 1:] - y[:, :, :-1]).abs().sum() + (y[:, :, :, 1:] - y[:, :, :, :-1]).abs().sum()
    return fid + lam * tv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {a.threads} threads, f32 logits, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| shape | σ | PyTorch ms | msloss ms | PyTorch / msloss | msloss floor GB/s | |Δloss|/loss |")
    print("|---|---|---|---|---|---|---|")
    for name, (b, n, c, h, w) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        z = torch.randn(b, n, h, w, generator=g, requires_grad=True)
        x = torch.rand(b, c, h, w, generator=g)
        zn, xn = z.detach().numpy(), x.numpy()
        floor = (3 * n + 2 * c) * b * h * w * 4
        for sigma in (2.0, 5.0):
            def peer():
                z.grad = None
                loss = torch_local(z, x, sigma)
                loss.backward()
                return loss.item()

            def ours():
                return msloss.energy(xn, logits=zn, fidelity="local", sigma=sigma, threads=a.threads).total

            want, got = peer(), ours()
            tp, to = [], []
            for _ in range(a.rounds):
                t = time.perf_counter(); peer(); tp.append(time.perf_counter() - t)
                t = time.perf_counter(); ours(); to.append(time.perf_counter() - t)
            mp, mo = statistics.median(tp) * 1e3, statistics.median(to) * 1e3
            print(f"| {name} {b},{n},{c},{h},{w} | {sigma:g} | {mp:.1f} | {mo:.1f} | {mp / mo:.1f}× "
                  f"| {floor / (mo * 1e-3) / 1e9:.2f} | {abs(got - want) / abs(want):.1e} |", flush=True)


if __name__ == "__main__":
    main()
