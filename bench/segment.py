#!/usr/bin/env python3
"""The segmentation table in BENCHMARKS.md: `msloss segment` on its built-in synthetic images (Voronoi regions,
an intensity ramp, Gaussian noise) for 2-5 phases, grey and colour, 256² and 64³, noise 0.1 and 0.2, seeds 0-2,
scored against the known truth.

    python3 bench/segment.py [--bin target/release/msloss]
"""
import argparse, json, os, statistics, subprocess, tempfile


def run(binary, size, depth, noise, k, grey, seed, extra=()):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "s.json")
        args = [binary, "segment", "--size", str(size), "--noise", str(noise), "--phases", str(k), "--seed",
                str(seed), "--json", out, "--quiet"]
        if depth:
            args += ["--depth", str(depth)]
        if grey:
            args.append("--grey")
        args += extra
        subprocess.run(args, check=True, capture_output=True)
        with open(out) as f:
            return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/msloss")
    ap.add_argument("--msloss-arg", action="append", default=[], metavar="ARG",
                    help="pass ARG to every msloss run too (repeatable; e.g. --msloss-arg=--tol --msloss-arg=3e-4)")
    a = ap.parse_args()
    print("| image | K | kind | mean IoU (mean of 3) | worst mean IoU | worst adapted Rand error | steps | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for size, depth, name in ((256, 0, "256²"), (64, 64, "64³")):
        for noise in (0.1, 0.2):
            for k in (2, 3, 4, 5):
                for grey in (True, False):
                    rs = [run(a.bin, size, depth, noise, k, grey, s, a.msloss_arg) for s in (0, 1, 2)]
                    iou = [r["quality"]["mean_iou"] for r in rs]
                    are = [r["quality"]["adapted_rand_error"] for r in rs]
                    steps = statistics.median(r["iterations"] for r in rs)
                    secs = statistics.median(r["seconds"]["total"] for r in rs)
                    print(f"| {name}, σ {noise} | {k} | {'grey' if grey else 'colour'} | {statistics.mean(iou):.4f} | "
                          f"{min(iou):.4f} | {max(are):.4f} | {steps:g} | {secs:.3f} |", flush=True)


if __name__ == "__main__":
    main()
