#!/usr/bin/env bash
# Accelerator throughput: BERT-base shape, seq 128, bfloat16, the largest batch that
# fits, contrastive training and encoding, with MFU (benchmarks/accelerator.py).
#   bash benchmarks/gpu.sh            # on the accelerator, after scripts/install.sh
#   bash benchmarks/gpu.sh --dry-run  # tiny shape on any device (a test runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" benchmarks/accelerator.py "$@"
