#!/usr/bin/env bash
# The same loss and gradient in JAX and PyTorch (../shared/bench/peer.py), 2 threads, S1-S4, beside msloss.
# Set up once: python3 -m venv /tmp/peer && /tmp/peer/bin/pip install "jax[cpu]" torch
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PEER_PYTHON:-/tmp/peer/bin/python}
S="--shape 4,2,3,256,256 --shape 8,21,3,128,128 --shape 1,4,3,512,512 --shape 2,21,3,512,512"
$PY ../shared/bench/peer.py --threads 2 $S
