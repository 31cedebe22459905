#!/usr/bin/env python3
"""The CPU backend's table in BENCHMARKS.md: `msloss bench` on S1-S4 and a volume, f32 and f64, logits and
probabilities, 2 threads; median of per-call medians over rounds. With --old, a second binary is timed
alternately with the first (one configuration, then the other, round after round) and the ratio printed.

    python3 bench/cpu.py [--new target/release/msloss] [--old path/to/other/msloss] [--rounds 5]
                         [--inputs logits,probs] [--dtypes f32,f64]
"""
import argparse, json, statistics, subprocess

SHAPES = {"S1": "4,2,3,256,256", "S2": "8,21,3,128,128", "S3": "1,4,3,512,512", "S4": "2,21,3,512,512",
          "V": "1,4,3,128,128,128"}


def bench(binary, shape, dtype, inp, threads, iters):
    out = subprocess.run([binary, "bench", "--shape", shape, "--threads", str(threads), "--dtype", dtype,
                          "--input", inp, "--iters", str(iters)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", default="target/release/msloss")
    ap.add_argument("--old")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--inputs", default="logits,probs",
                    help="comma-separated `msloss bench --input` values (confident: a confident network's logits)")
    ap.add_argument("--dtypes", default="f32,f64")
    a = ap.parse_args()
    print(f"| shape | dtype | input | new ms | floor GB/s |" + (" old ms | new/old |" if a.old else ""))
    print("|---|---|---|---|---|" + ("---|---|" if a.old else ""))
    for name, shape in SHAPES.items():
        for dtype in a.dtypes.split(","):
            for inp in a.inputs.split(","):
                new, old = [], []
                for _ in range(a.rounds):
                    d = bench(a.new, shape, dtype, inp, a.threads, a.iters)
                    new.append(d["median_ms"])
                    if a.old:
                        old.append(bench(a.old, shape, dtype, inp, a.threads, a.iters)["median_ms"])
                n = statistics.median(new)
                row = f"| {name} {shape} | {dtype} | {inp} | {n:.2f} | {d['floor_bytes'] / n / 1e6:.1f} |"
                if a.old:
                    o = statistics.median(old)
                    row += f" {o:.2f} | {n / o:.2f} |"
                print(row, flush=True)


if __name__ == "__main__":
    main()
