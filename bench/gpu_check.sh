#!/usr/bin/env bash
# GPU check of the triton backend, for a GPU machine without network access (PyTorch and Triton
# preinstalled). In order of importance, each under its own timeout; logs and JSON go to $OUT
# (default bench/out). It took 162 s on an H100 (2026-11-27) before the five one-setting runs
# of step 1 (about 125 s more) and a sixth of two settings at once (about 25 s); each step has
# its own timeout.
#   1. bench.model_step: whole model step of the service default at B = 1 .. 32768,
#      CUDA graphs, the state-traffic bound, single-append GPU time, kernels per one-patch step
#      (profiler, with each kernel's duration), bit-identity alone vs batched; then again with
#      programmatic dependent launch off (RIMER_PDL=0), side by side; then with one setting
#      changed each: o_proj and the channel mix as two launches (RIMER_FUSE_OUT=0), the
#      block's LayerNorms as launches of their own too (RIMER_FUSE_LN=0), the
#      grouped linears' row tile pinned at 16 and at 32 rows (RIMER_LINEAR_BLOCK_M), the
#      recurrence at 8 warps (RIMER_WKV_WARPS), and the 16-row tile with 8 recurrence warps
#      together; and the GPU tests of the fused step under the 16-row pin (bit-identity alone
#      vs batched);
#   2. bench.kernels --sweep: the pool recurrence kernel alone at H = 8, N = 64 (decode B = 1 ..
#      32768, prefill 64 x 1024) against copy bandwidth, eager PyTorch and, when the fla-core wheel
#      was carried in bench/wheels/ (installed from that file, no network), fla raw and with the
#      gather/scatter around it; launch configurations swept;
#   3. the fused-kernel, kernel, linear, one-patch step, backend and pool-batch tests on the GPU
#      (not the interpreter);
#   3b. bench.engine_batch: the service's micro-batches on the pool (a bulk append of 1,000 and
#      4,096 series, forecasts, a patch each) applied batched against op by op (the single-append
#      path, which applied batches before 2026-11-28), bit-identical between the two;
#   4. bench.model_step for rimer-general (the lighter general model; rimer-small, the model of
#      the earlier H100 figures, dropped to keep the run under 6 minutes);
#   5. bench.linear_tiles: the grouped linear by row tile (16/32/64) at 1 .. 32768 rows, and
#      whether a smaller tile keeps every row's bits (the lead for a faster single append);
#   6. bench.step_settings: one table of every whole-step run above (settings, kernels, single
#      append, B = 4096 and 32768 against the bound, bit-identity), to choose the pins from.
#
# For the fla comparison, fetch its wheel first on a machine with network access (bench/wheels/ is
# git-ignored; pass it to the GPU machine with the checkout):
#     pip download fla-core==0.6.0 --no-deps -d bench/wheels
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
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 )) s] $*"; }
if ls bench/wheels/fla_core-*.whl >/dev/null 2>&1; then
    FLA_DIR="${TMPDIR:-/tmp}/gpu_check_fla"
    "$PY" -m pip install -q --no-index --no-deps --target "$FLA_DIR" bench/wheels/fla_core-*.whl \
        2>&1 | tail -2 | tee -a "$OUT/env.log" && export PYTHONPATH="$FLA_DIR${PYTHONPATH:+:$PYTHONPATH}"
fi

stamp "python -m bench.model_step (default weights)" | tee "$OUT/model_step.log"
timeout 130 "$PY" -m bench.model_step --out "$OUT/model_step.json" 2>&1 | tee -a "$OUT/model_step.log" \
    || status=1
stamp "RIMER_PDL=0 python -m bench.model_step (default weights, PDL off for comparison)" | tee -a "$OUT/model_step.log"
RIMER_PDL=0 timeout 60 "$PY" -m bench.model_step --out "$OUT/model_step-nopdl.json" 2>&1 \
    | tee -a "$OUT/model_step.log" || status=1
# The same with one setting changed each: o_proj and the channel mix as two launches; the LayerNorms
# as launches of their own; the grouped linears' row tile pinned at 16 and 32 rows; the recurrence
# kernel at 8 warps.
# The last entry changes two at once (comma-separated): the two most likely to shorten a single
# append, so that a pin of both needs no second GPU run.
for setting in RIMER_FUSE_OUT=0 RIMER_FUSE_LN=0 RIMER_LINEAR_BLOCK_M=16 RIMER_LINEAR_BLOCK_M=32 \
               RIMER_WKV_WARPS=8 RIMER_LINEAR_BLOCK_M=16,RIMER_WKV_WARPS=8; do
    stamp "${setting//,/ } python -m bench.model_step (default weights)" | tee -a "$OUT/model_step.log"
    name=$(echo "$setting" | sed 's/RIMER_//g' | tr 'A-Z=_,' 'a-z---')  # e.g. model_step-fuse-ln-0.json
    IFS=, read -r -a assigns <<< "$setting"
    env "${assigns[@]}" timeout 60 "$PY" -m bench.model_step --out "$OUT/model_step-$name.json" 2>&1 \
        | tee -a "$OUT/model_step.log" || status=1
done
stamp "RIMER_LINEAR_BLOCK_M=16 pytest fused, step, backend (GPU)" | tee "$OUT/pytest-bm16.log"
RIMER_LINEAR_BLOCK_M=16 timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/unit/kernels/test_fused.py \
    tests/unit/kernels/test_step_io.py tests/unit/kernels/test_block_out.py tests/unit/service/test_backend.py 2>&1 | tee -a "$OUT/pytest-bm16.log" \
    || status=1
stamp "python -m bench.kernels --sweep" | tee "$OUT/kernels.log"
timeout 170 "$PY" -m bench.kernels --sweep --out "$OUT/kernels.json" 2>&1 | tee -a "$OUT/kernels.log" \
    || status=1
stamp "pytest kernels, fused, linear, step, backend (GPU)" | tee "$OUT/pytest.log"
timeout 90 "$PY" -m pytest -q -p no:cacheprovider tests/unit/kernels/test_fused.py tests/unit/kernels/test_kernels.py \
    tests/unit/kernels/test_linear.py tests/unit/kernels/test_step_io.py tests/unit/kernels/test_block_out.py tests/unit/service/test_backend.py \
    tests/unit/service/test_pool_batch.py 2>&1 | tee -a "$OUT/pytest.log" || status=1
stamp "python -m bench.engine_batch (micro-batches on the pool: batched vs op by op)" | tee "$OUT/engine_batch.log"
timeout 100 "$PY" -m bench.engine_batch --out "$OUT/engine_batch.json" 2>&1 | tee -a "$OUT/engine_batch.log" \
    || status=1
for w in rimer-general; do
    stamp "python -m bench.model_step --weights weights/$w" | tee -a "$OUT/model_step.log"
    timeout 70 "$PY" -m bench.model_step --weights "weights/$w" --out "$OUT/model_step-$w.json" \
        2>&1 | tee -a "$OUT/model_step.log" || status=1
done
stamp "python -m bench.linear_tiles" | tee "$OUT/linear_tiles.log"
timeout 60 "$PY" -m bench.linear_tiles --out "$OUT/linear_tiles.json" 2>&1 | tee -a "$OUT/linear_tiles.log" \
    || status=1
stamp "python -m bench.step_settings (the whole-step runs side by side)" | tee "$OUT/step_settings.log"
timeout 30 "$PY" -m bench.step_settings "$OUT" 2>&1 | tee -a "$OUT/step_settings.log" || status=1
stamp "gpu_check: exit $status" | tee -a "$OUT/pytest.log"
exit $status
