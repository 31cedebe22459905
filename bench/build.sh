#!/usr/bin/env bash
# Cold release build of the CLI in an empty target directory, with cargo's per-crate timings
# (target/cargo-timings/cargo-timing.html); prints the wall time and msloss-cpu's share.
set -euo pipefail
cd "$(dirname "$0")/.."
T=$(mktemp -d)
start=$(date +%s)
CARGO_TARGET_DIR=$T cargo build --release -p msloss-cli --timings 2>&1 | tail -1
echo "wall: $(( $(date +%s) - start )) s"
python3 - "$T/cargo-timings/cargo-timing.html" <<'PY'
import json, re, sys
units = json.loads(re.search(r"const UNIT_DATA = (\[.*?\]);", open(sys.argv[1]).read(), re.S).group(1))
for u in sorted(units, key=lambda u: -u["duration"])[:6] + [u for u in units if u["name"] == "msloss-cpu"]:
    print(f'{u["name"]:<16} {u["duration"]:6.1f} s')
PY
rm -rf "$T"
