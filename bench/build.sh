#!/usr/bin/env bash
# Cold release build of the CLI in an empty target directory, with cargo's per-crate timings
# (target/cargo-timings/cargo-timing.html); prints the wall time and msloss-cpu's share.
set -euo pipefail
cd "$(dirname "$0")/.."
T=$(mktemp -d)
start=$(date +%s)
CARGO_TARGET_DIR=$T cargo build --release -p msloss-cli --timings 2>&1 | tail -1
echo "wall: $(( $(date +%s) - start )) s"
grep -o '"name":"msloss-cpu"[^}]*"duration":[0-9.]*' $T/cargo-timings/cargo-timing.html | grep -o '"duration":[0-9.]*' || true
cp $T/cargo-timings/cargo-timing.html target/ 2>/dev/null || true
rm -rf "$T"
