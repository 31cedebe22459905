#!/usr/bin/env bash
# The "loss on burn's wgpu device" table in BENCHMARKS.md: msloss's op (device path) against the burn-ops peer
# on the same burn wgpu device, per loss call (forward + backward, synced) and per training step of the example's
# U-Net (CE alone, CE + MS with msloss, with the peer), then the bytes each dispatch moves.
# Without a GPU, wgpu runs on Mesa's lavapipe. MSLOSS_BENCH_SHAPES="2,21,3,512,512" for the issue's shape.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
cargo bench -p msloss-burn --features wgpu --bench gpu
cargo test -p msloss-wgpu --test traffic -- --nocapture
