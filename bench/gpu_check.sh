#!/usr/bin/env bash
# GPU check of the Triton RWKV-7 pool kernel, for a GPU machine without network access
# (PyTorch and Triton preinstalled). Runs the kernel tests on the GPU (not the interpreter) and the
# benchmark with its launch-configuration sweep; logs and JSON go to $OUT (default bench/out).
# Budget: under 6 minutes (tests ~1 min including compiles, benchmark ~2-3 min).
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
echo "== pytest tests/test_kernels.py (GPU)" | tee "$OUT/pytest.log"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tee -a "$OUT/pytest.log" \
    || status=1
echo "== python -m bench.kernels --sweep" | tee "$OUT/bench.log"
timeout 240 "$PY" -m bench.kernels --sweep --out "$OUT/kernels.json" 2>&1 | tee -a "$OUT/bench.log" \
    || status=1
echo "gpu_check: exit $status" | tee -a "$OUT/bench.log"
exit $status
