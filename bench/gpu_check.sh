#!/usr/bin/env bash
# GPU check of the triton backend, for a GPU machine without network access (PyTorch and Triton
# preinstalled). In order of importance, each under its own timeout; logs and JSON go to $OUT
# (default bench/out). Budget: under 6 minutes (most of it Triton compiles).
#   1. bench.model_step: whole model step (the service default, rimer-general; then rimer-small,
#      the model of the earlier H100 figures) at B = 1 .. 32768, CUDA graphs,
#      the state-traffic bound, single-append GPU time, kernels per one-patch step (profiler),
#      bit-identity alone vs batched;
#   2. the fused-kernel, kernel, linear, one-patch step and backend tests on the GPU (not the
#      interpreter);
#   3. (BENCH_KERNELS=1 only) bench.kernels: the unfused recurrence kernel alone.
#
#     OUT=/some/dir bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    "$PY" -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.log"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible; this script is for a GPU machine" | tee -a "$OUT/env.log"
    exit 2
fi

status=0
echo "== python -m bench.model_step" | tee "$OUT/model_step.log"
timeout 150 "$PY" -m bench.model_step --out "$OUT/model_step.json" 2>&1 | tee -a "$OUT/model_step.log" \
    || status=1
echo "== python -m bench.model_step --weights weights/rimer-small" | tee -a "$OUT/model_step.log"
timeout 120 "$PY" -m bench.model_step --weights weights/rimer-small --out "$OUT/model_step_small.json" \
    2>&1 | tee -a "$OUT/model_step.log" || status=1
echo "== pytest kernels, linear, step, backend (GPU)" | tee "$OUT/pytest.log"
timeout 100 "$PY" -m pytest -q -p no:cacheprovider tests/test_fused.py tests/test_kernels.py \
    tests/test_linear.py tests/test_step_io.py tests/test_backend.py 2>&1 | tee -a "$OUT/pytest.log" || status=1
if [ "${BENCH_KERNELS:-0}" = 1 ]; then
    echo "== python -m bench.kernels" | tee "$OUT/bench.log"
    timeout 50 "$PY" -m bench.kernels --out "$OUT/kernels.json" 2>&1 | tee -a "$OUT/bench.log" \
        || status=1
fi
echo "gpu_check: exit $status" | tee -a "$OUT/pytest.log"
exit $status
