#!/usr/bin/env bash
# Pretrain the candidate architectures side by side on one GPU (no network needed), each for the
# same wall time, and keep each one's validation-selected weights and logs as a tar under $OUT.
#
#     RIMER_DATA_DIR=.gpu_data MINUTES=6 OUT=/some/dir bash training/gpu_train.sh
#
# RIMER_DATA_DIR holds copies of ../shared/data's files (and package_series.npz, see
# training/package_series.py), since only the checkout travels to a GPU machine. VARIANTS is a
# list of "name:flags" (defaults below). A 3-step smoke run of the largest variant comes first, so
# a broken setup fails in seconds, not after the whole budget.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
MINUTES="${MINUTES:-6}"
DATA="${RIMER_DATA_DIR:-../shared/data}"
WORK="${WORK:-${TMPDIR:-/tmp}/rimer_gpu_train}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
VARIANTS="${VARIANTS:-d128-l2:--d-model 128 --layers 2 --batch 1024
d128-l2-tf:--d-model 128 --layers 2 --batch 1024 --ahead 0 --no-forecast-flag
d128-l2-mean:--d-model 128 --layers 2 --batch 1024 --quantiles=
d256-l2:--d-model 256 --layers 2 --batch 768}"

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/train_env.log"

last=$(echo "$VARIANTS" | tail -n 1)
rm -rf "$WORK/smoke"
echo "smoke: ${last%%:*}" | tee -a "$OUT/train_env.log"
# shellcheck disable=SC2086
if ! timeout 120 "$PY" -m training.pretrain --device "$DEVICE" --data-dir "$DATA" --out "$WORK/smoke" \
        --steps 3 --val-every 3 --val-windows 2 ${last#*:} >>"$OUT/train_env.log" 2>&1; then
    echo "smoke run failed" | tee -a "$OUT/train_env.log"
    tail -n 30 "$OUT/train_env.log"
    exit 2
fi
tail -n 3 "$OUT/train_env.log"

pids=()
while IFS= read -r line; do
    [ -n "$line" ] || continue
    name=${line%%:*}
    # shellcheck disable=SC2086
    "$PY" -m training.pretrain --device "$DEVICE" --data-dir "$DATA" --out "$WORK/$name" --name "$name" \
        --minutes "$MINUTES" --steps 1000000 --val-every 1000000 --val-seconds 40 ${line#*:} \
        >"$WORK/$name.log" 2>&1 &
    pids+=($!)
done <<< "$VARIANTS"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
nvidia-smi --query-gpu=memory.used --format=csv >>"$OUT/train_env.log" 2>&1
while IFS= read -r line; do
    [ -n "$line" ] || continue
    name=${line%%:*}
    tr '\r' '\n' < "$WORK/$name.log" | tail -n 40 > "$WORK/$name/train.log"
    tail -n 3 "$WORK/$name/val_log.jsonl" 2>/dev/null
    tar -C "$WORK" -czf "$OUT/$name.tgz" --exclude train_state "$name"
done <<< "$VARIANTS"
exit $status
