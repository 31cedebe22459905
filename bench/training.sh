#!/usr/bin/env bash
# The training table in BENCHMARKS.md: the semi-supervised example (CE on 5% labels, CE + MS, MS alone) for
# seeds 1-5; each run prints its table and writes results-<seed>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
for seed in 1 2 3 4 5; do
  cargo run --release -p msloss-burn --example semi_supervised -- --seed $seed --json results-$seed.json
done
