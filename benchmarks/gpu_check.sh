#!/usr/bin/env bash
# GPU correctness checks and the GPU benchmark, in one go, for a machine with an NVIDIA GPU
# and CuPy (pip install -e ".[gpu]"). CI has no GPU: there these tests skip.
#
#   bash benchmarks/gpu_check.sh            # writes benchmarks/bench_gpu.json
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python

"$PY" -c "from whitebox.backend import require_gpu; require_gpu()"

# 1. correctness: CuPy against NumPy, fused kernels against the plain path (outputs and
#    gradients within float32 / float64 tolerance), every layer and model on the GPU
"$PY" -m pytest -q -m gpu tests/test_kernels.py tests/test_nn.py tests/test_models.py \
    tests/test_backend.py

# 2. the GPU benchmark: TSSA against its bandwidth floor, digits training GPU vs CPU
"$PY" -m whitebox.bench --device gpu --out "${OUT:-benchmarks}"
