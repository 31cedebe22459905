#!/usr/bin/env bash
# The training tables in BENCHMARKS.md: the semi_supervised example on seeds 1-5 ((a) CE on 5% labels, (b) CE + MS,
# (c) MS alone; results-<seed>.json), then RQ4 ((d) CE on all labels against (e) CE + MS on all labels) on seeds
# 1-5 (results-rq4.json). BACKEND=wgpu trains on burn's wgpu backend (built with the crate's wgpu feature).
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${BACKEND:-cpu}
features=()
[ "$backend" = wgpu ] && features=(--features wgpu)
cargo build --release -p msloss-burn "${features[@]}" --example semi_supervised
for seed in 1 2 3 4 5; do
  target/release/examples/semi_supervised --backend "$backend" --seed $seed --rq4-seeds 0 --json results-$seed.json
done
target/release/examples/semi_supervised --backend "$backend" --seed 1 --rq4-seeds 5 --json results-rq4.json
