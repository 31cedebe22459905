#!/usr/bin/env python3
"""The bias-field table in BENCHMARKS.md (issue 27): a two-phase grey image (14 disks at 0.65 on a background at
0.35, Gaussian noise σ 0.05, 256²) multiplied by a smooth bias field `1 + α·g` (`g` a ramp plus a slow sine,
scaled to [-1, 1]), for growing α. `msloss segment --phases 2` with the global fidelity (its defaults) and with the
local fidelity (`--fidelity local --sigma 16`, and 32), against scikit-image's `chan_vese` and TV denoising +
Otsu, scored as bench/quality.py scores (Hungarian matching, mean IoU over the two phases). It prints the table and
the first α at which the global fidelity's mean IoU drops below 0.8.

    pip install numpy scipy scikit-image
    cargo build --release -p msloss-cli
    python3 bench/bias.py [--bin target/release/msloss]
"""
import argparse, os, sys, time

import numpy as np
from skimage.filters import threshold_otsu
from skimage.segmentation import chan_vese

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality import biased, run_msloss, score, tv  # noqa: E402

ALPHAS = [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/msloss")
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    methods = {
        "msloss global": [],
        "msloss local σ 16": ["--fidelity", "local", "--sigma", "16"],
        "msloss local σ 32": ["--fidelity", "local", "--sigma", "32"],
    }
    print("| α | " + " | ".join(list(methods) + ["chan_vese", "tv+otsu"]) + " |")
    print("|---" * (len(methods) + 3) + "|")
    first_fail = None
    for alpha in ALPHAS:
        img, truth = biased(1, a.size, alpha)
        cells = []
        for name, extra in methods.items():
            labels, secs, summary = run_msloss(a.bin, img, 2, extra)
            iou = score(labels, truth, 2).mean()
            if name == "msloss global" and iou < 0.8 and first_fail is None:
                first_fail = alpha
            cells.append(f"{iou:.4f} ({summary['seconds']['total']:.2f} s)")
        t = time.perf_counter()
        cv = chan_vese(img[0])
        cells.append(f"{score(cv.astype(np.uint8), truth, 2).mean():.4f} ({time.perf_counter() - t:.2f} s)")
        t = time.perf_counter()
        u = tv(img)
        otsu = (u > threshold_otsu(u)).astype(np.uint8)
        cells.append(f"{score(otsu, truth, 2).mean():.4f} ({time.perf_counter() - t:.2f} s)")
        print(f"| {alpha:.1f} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nThe global fidelity's mean IoU first drops below 0.8 at α = {first_fail}.")


if __name__ == "__main__":
    main()
