"""model.record_metrics: an evaluation's table lands in the manifest, the tensors' hash untouched."""

from __future__ import annotations

import json
import shutil

from model import checkpoint, record_metrics
from tests.conftest import DEFAULT_WEIGHTS


def test_metrics_table_goes_into_the_manifest(tmp_path):
    weights = tmp_path / "w"
    shutil.copytree(DEFAULT_WEIGHTS, weights)
    (weights / "ev").mkdir()
    results = {"ETTh1": {"96": {"windows": 5, "rimer": [0.5, 0.4], "linear": [0.3, 0.2]},
                         "192": {"windows": 4, "rimer": [0.7, 0.6], "linear": [0.5, 0.4]}}}
    (weights / "ev" / "metrics.json").write_text(json.dumps(
        {"stride": 1, "lookback": "512", "results": results}))
    record_metrics.main([str(weights), str(weights / "ev")])
    _, manifest = checkpoint.load(weights)  # still loads: the sha256 check passes
    got = manifest["evaluation"]["ev"]
    assert got["report"] == "ev/report.md" and got["lookback"] == "512"
    etth1 = got["mse_mae"]["ETTh1"]
    assert etth1["96"] == {"mse": 0.5, "mae": 0.4}
    assert etth1["avg"] == {"mse": 0.6, "mae": 0.5}
    assert etth1["baselines_avg_mse"] == {"linear": 0.4}
