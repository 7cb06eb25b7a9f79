#!/usr/bin/env bash
# The service's GPU figures for one checkpoint, on a GPU machine without network access: the
# whole model step (single append, B up to 32,768, against the state-traffic bound), the service
# end to end over HTTP (triton backend, CUDA graphs; single appends at 1 and 64 clients, bulk
# ingest, stateless forecasts), and the pool kernel against copy bandwidth. Each under its own
# timeout; JSON and logs under $OUT.
#
#     OUT=/some/dir WEIGHTS=weights/rimer-general-v5 bash bench/gpu_service_check.sh
#
# The service's own packages (fastapi, uvicorn, pydantic, ...) travel as wheels in .whl/ when the
# machine lacks them (see the device tool's README); they are installed to /tmp/site, no network.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
WEIGHTS="${WEIGHTS:-weights/rimer-general-v5}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
status=0
t0=$(date +%s)
stamp() {
    echo "[check +$(( $(date +%s) - t0 )) s] $*"
    # with CHECKS_TGZ, everything so far packed after each step (a call cut short keeps it)
    if [ -n "${CHECKS_TGZ:-}" ]; then tar -C "$(dirname "$OUT")" -czf "$CHECKS_TGZ" "$(basename "$OUT")"; fi
}
stamp "bench.model_step --weights $WEIGHTS" | tee "$OUT/checks.log"
timeout "${STEP_TIMEOUT:-90}" "$PY" -m bench.model_step --weights "$WEIGHTS" --out "$OUT/model_step.json" \
    2>&1 | tee -a "$OUT/checks.log" || status=1
stamp "bench.http on cuda (triton backend)" | tee -a "$OUT/checks.log"
timeout "${HTTP_TIMEOUT:-110}" "$PY" -m bench.http --weights "$WEIGHTS" --server-arg=--device \
    --server-arg=cuda --seconds 3 --warmup 1 --concurrency 1 64 --bulk-concurrency 1 4 \
    --forecast-concurrency 1 8 --note "GPU, triton backend, $WEIGHTS" --out "$OUT/http.json" \
    2>&1 | tee -a "$OUT/checks.log" || status=1
stamp "bench.kernels (pool kernel against copy)" | tee -a "$OUT/checks.log"
timeout "${KERNELS_TIMEOUT:-35}" "$PY" -m bench.kernels --out "$OUT/kernels.json" 2>&1 \
    | tee -a "$OUT/checks.log" || status=1
stamp "done, exit $status" | tee -a "$OUT/checks.log"
exit $status
