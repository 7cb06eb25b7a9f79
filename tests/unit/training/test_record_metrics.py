"""training.record_metrics: an evaluation's table lands in the manifest, the tensors' hash untouched."""

from __future__ import annotations

import json
import shutil

import pytest

from model import checkpoint, cli
from tests.conftest import DEFAULT_WEIGHTS
from training import record_metrics


def test_metrics_table_goes_into_the_manifest(tmp_path):
    weights = tmp_path / "w"
    shutil.copytree(DEFAULT_WEIGHTS, weights)
    (weights / "ev").mkdir()
    results = {"ETTh1": {"96": {"windows": 5, "rimer": [0.5, 0.4], "linear": [0.3, 0.2]},
                         "192": {"windows": 4, "rimer": [0.7, 0.6], "linear": [0.5, 0.4]}}}
    name = json.loads((weights / "manifest.json").read_text())["name"]
    (weights / "ev" / "metrics.json").write_text(json.dumps(
        {"model": name, "stride": 1, "lookback": "512", "results": results}))
    record_metrics.main([str(weights), str(weights / "ev")])
    _, manifest = checkpoint.load(weights)  # still loads: the sha256 check passes
    got = manifest["evaluation"]["ev"]
    assert got["report"] == "ev/report.md" and got["lookback"] == "512"
    etth1 = got["mse_mae"]["ETTh1"]
    assert etth1["96"] == {"mse": 0.5, "mae": 0.4}
    assert etth1["avg"] == {"mse": 0.6, "mae": 0.5}
    assert etth1["baselines_avg_mse"] == {"linear": 0.4}


def test_another_models_evaluation_is_refused(tmp_path):
    """An evaluation of other weights (copied beside these) must not land in their manifest,
    nor one outside their directory (the manifest names it by its path there)."""
    weights = tmp_path / "w"
    shutil.copytree(DEFAULT_WEIGHTS, weights)
    before = (weights / "manifest.json").read_text()
    for where, model in ((weights / "other", "rimer-other"), (tmp_path / "outside", None)):
        where.mkdir()
        if model is None:
            model = json.loads(before)["name"]
        (where / "metrics.json").write_text(json.dumps(
            {"model": model, "stride": 1, "lookback": "512", "results": {}}))
        with pytest.raises(cli.CliError):
            record_metrics.main([str(weights), str(where)])
    assert (weights / "manifest.json").read_text() == before
    record_metrics.main([str(weights), str(weights / "other"), "--renamed"])
    assert "other" in json.loads((weights / "manifest.json").read_text())["evaluation"]
