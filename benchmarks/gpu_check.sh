#!/usr/bin/env bash
# The GPU check in one go (see benchmarks/gpu_check.py): results in $WHITEBOX_GPU_OUT
# (default benchmarks/): gpu_check.json, gpu_tests.xml (JUnit), bench_gpu.json.
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --fake --quick   # on a CPU, with the CuPy stand-in
cd "$(dirname "$0")/.." || exit 1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
