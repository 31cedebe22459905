#!/usr/bin/env python3
"""The Python table in BENCHMARKS.md: loss + backward from a PyTorch CPU tensor through msloss.torch, against the
authors' formulation written in PyTorch (eager autograd, as ../shared/bench/peer.py times it), on S1-S4, f32
logits, λ = 1e-3, L1 length, sum reduction, 2 threads for both; with the NumPy call and the Rust evaluation alone
(Energy.seconds, read in the same calls), so the Python call's overhead, wall time less the Rust evaluation, is
measured call by call. Calls alternate between the three round after round; medians over all calls.

Needs the msloss wheel and torch in the running Python:
    python bench/python.py [--threads 2] [--rounds 7] [--shapes S1,S2,S3,S4]
"""
import argparse
import os
import statistics
import time

# torch's OpenMP workers spin after each parallel region by default; on a 2-core machine shared with other work that
# slows the eager peer many times over and takes msloss's cores between calls too (BENCHMARKS.md has the figures).
# Passive waiting is set before torch loads; it favours the PyTorch peer, so the ratios are conservative.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

import msloss
import msloss.torch
from msloss.torch import mumford_shah_loss

SHAPES = {"S1": (4, 2, 3, 256, 256), "S2": (8, 21, 3, 128, 128), "S3": (1, 4, 3, 512, 512),
          "S4": (2, 21, 3, 512, 512)}


def authors_loss(z, x, lam=1e-3):
    """The published PyTorch formulation: softmax, per-channel centroids, fidelity, anisotropic TV."""
    y = torch.softmax(z, 1)
    fid = 0.0
    for k in range(x.shape[1]):
        xk = x[:, k:k + 1]
        c = (xk * y).sum((2, 3), keepdim=True) / y.sum((2, 3), keepdim=True)
        fid = fid + ((xk - c) ** 2 * y).sum()
    tv = (y[:, :, 1:] - y[:, :, :-1]).abs().sum() + (y[:, :, :, 1:] - y[:, :, :, :-1]).abs().sum()
    return fid + lam * tv


class Bare(torch.autograd.Function):
    """The least an autograd.Function around the same NumPy call can do: the floor of the torch path."""
    seen = []  # Energy.seconds of its calls

    @staticmethod
    def forward(ctx, z, x, threads):
        r = msloss.energy(x.numpy(), logits=z.detach().numpy(), threads=threads)
        Bare.seen.append(r.seconds)
        ctx.grad = r.grad
        return torch.tensor(r.total)

    @staticmethod
    def backward(ctx, grad_out):
        return torch.from_numpy(ctx.grad), None, None


def clock(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=10, help="msloss calls per round (the peer: one)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="which of S1-S4, comma-separated")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {a.threads} threads, f32 logits, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average {os.getloadavg()[0]:.2f}")
    print("| shape | PyTorch (authors') ms | msloss.torch ms | msloss.energy ms | Rust evaluation ms "
          "| overhead: torch path | of which a bare Function's | overhead: NumPy call | PyTorch / msloss.torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in a.shapes.split(","):
        b, n, c, h, w = SHAPES[name]
        g = torch.Generator().manual_seed(0)
        z = torch.randn(b, n, h, w, generator=g, requires_grad=True)
        x = torch.rand(b, c, h, w, generator=g)
        zn, xn = z.detach().numpy(), x.numpy()

        def peer():
            z.grad = None
            authors_loss(z, x).backward()

        def ours():
            z.grad = None
            mumford_shah_loss(z, x, threads=a.threads).backward()

        def bare():
            z.grad = None
            Bare.apply(z, x, a.threads).backward()

        seen = []  # Energy.seconds of every msloss call, in order
        real = msloss.torch._msloss.energy

        def spy(*args, **kw):
            r = real(*args, **kw)
            seen.append(r.seconds)
            return r

        msloss.torch._msloss.energy = spy

        def numpy_call():
            seen.append(msloss.energy(xn, logits=zn, threads=a.threads).seconds)

        for f in (peer, ours, bare, numpy_call):  # warm up: pools, workspaces, allocator
            f()
        t_peer, torch_path, bare_path, numpy_path = [], [], [], []  # (wall, rust) pairs for msloss
        for _ in range(a.rounds):
            t_peer.append(clock(peer))
            for _ in range(a.calls):
                torch_path.append((clock(ours), seen[-1]))
            for _ in range(a.calls):
                bare_path.append((clock(bare), Bare.seen[-1]))
            for _ in range(a.calls):
                numpy_path.append((clock(numpy_call), seen[-1]))
        msloss.torch._msloss.energy = real
        med = lambda v: statistics.median(v) * 1e3  # noqa: E731
        mp = med(t_peer)
        mo, mn = med([w for w, _ in torch_path]), med([w for w, _ in numpy_path])
        mr = med([r for _, r in torch_path + numpy_path])
        over = lambda path: med([w - r for w, r in path]) / med([r for _, r in path])  # noqa: E731
        over_t, over_b, over_n = over(torch_path), over(bare_path), over(numpy_path)
        print(f"| {name} {b},{n},{c},{h},{w} | {mp:.2f} | {mo:.2f} | {mn:.2f} | {mr:.2f} "
              f"| {100 * over_t:.1f}% | {100 * over_b:.1f}% | {100 * over_n:.1f}% | {mp / mo:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
