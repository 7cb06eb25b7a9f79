#!/usr/bin/env bash
# One GPU session, one call (the device time is short and each machine start costs minutes):
#   1. training/gpu_train.sh: the candidate architectures pretrained side by side (MINUTES each);
#   2. the default chosen by validation: among the variants with a quantile head, the smallest
#      whose validation score is within 0.01 (about 1% in MSE ratio) of the best (the better of
#      two of one size);
#   3. bench/gpu_service_check.sh on it (service and kernel figures), into $OUT/checks.tgz.
#     OUT=/some/dir RIMER_DATA_DIR=.gpu_data MINUTES=5 bash bench/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
WORK="${WORK:-${TMPDIR:-/tmp}/rimer_gpu_train}"
mkdir -p "$OUT"
OUT="$OUT" WORK="$WORK" bash training/gpu_train.sh
pick=$("$PY" - "$WORK" <<'PYEOF'
import json, sys
from pathlib import Path
order = ["d128-l2", "d128-l2-tf", "d256-l2"]  # the variants with a quantile head, smallest first
size = {"d128-l2": 1, "d128-l2-tf": 1, "d256-l2": 2}
scores = {}
for name in order:
    m = Path(sys.argv[1]) / name / "manifest.json"
    if m.is_file():
        scores[name] = json.loads(m.read_text())["metrics"]["val_log_ratio"]
print(json.dumps(scores), file=sys.stderr)
if not scores:
    sys.exit(0)
best = min(scores.values())
near = [n for n in scores if scores[n] <= best + 0.01]
print(min(near, key=lambda n: (size[n], scores[n])))
PYEOF
)
echo "chosen for the service checks: $pick" | tee "$OUT/session.log"
[ -n "$pick" ] || exit 1
# the checks' files packed into one archive in $OUT after each step (the call returns 8 files at most)
CHECKS="$WORK/checks"
rm -rf "$CHECKS" && mkdir -p "$CHECKS"
tgz="$(cd "$OUT" && pwd)/checks.tgz"
OUT="$CHECKS" CHECKS_TGZ="$tgz" WEIGHTS="$WORK/$pick" bash bench/gpu_service_check.sh \
    >> "$OUT/session.log" 2>&1
