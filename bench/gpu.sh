#!/usr/bin/env bash
# The GPU table in BENCHMARKS.md: criterion's device-resident and host paths of the wgpu backend, then
# `msloss bench` on the CPU backend beside the wgpu backend. Without a GPU, wgpu runs on Mesa's lavapipe.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
cargo bench -p msloss-wgpu --bench wgpu
cargo build --release -p msloss-cli
for s in 4,4,3,256,256 1,2,1,1024,1024 1,3,1,64,64,64; do
  for b in cpu wgpu; do
    target/release/msloss bench --backend $b --shape $s --iters 10 --mask --length charbonnier
  done
done
