#!/usr/bin/env bash
# Peak resident memory of `msloss bench` on S4 (30 calls), and the build of the CLI from an empty target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/time -v target/release/msloss bench --shape 2,21,3,512,512 --threads 2 --iters 30 2>&1 |
  grep -E "median_ms|Maximum resident"
