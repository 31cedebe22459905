#!/usr/bin/env bash
# The instruction counts in BENCHMARKS.md's wgpu section: callgrind over one `msloss bench --backend wgpu`
# iteration on lavapipe, counting the instructions of lavapipe's JIT code (the unnamed functions: one per
# kernel, largest first) apart from the compiler's and the host's. Deterministic, unlike wall time on a shared
# host. Needs valgrind (apt-get install -y valgrind). Usage: bench/lavapipe_instructions.sh [SHAPE] [LENGTH]
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
shape=${1:-1,21,3,128,128}
length=${2:-l1}
cargo build --release -p msloss-cli
out=$(mktemp)
valgrind --tool=callgrind --callgrind-out-file="$out" target/release/msloss bench --backend wgpu \
  --shape "$shape" --iters 1 --length "$length" > /dev/null 2>&1
callgrind_annotate --threshold=100 "$out" 2>/dev/null | grep '\[???\]' | python3 -c '
import sys
rows = [int(l.split()[0].replace(",", "")) for l in sys.stdin if l.strip()]
for n in rows[:6]:
    print(f"{n:>15,}  a JIT function (kernel)")
print(f"{sum(rows):>15,}  all JIT code")
'
rm -f "$out"
