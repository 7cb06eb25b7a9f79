"""training.spread: every carry of the grid gets the exponent that gives nominal coverage after
the first patch, the best-scoring carry is written with its spread, and the saved model's
forecasts are the ones that were scored."""

from __future__ import annotations

import numpy as np
import torch

from model import checkpoint
from tests.unit.training.test_pretraining import small
from training import corpus, spread


def test_each_carry_is_calibrated_and_the_best_scoring_one_is_saved(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    series = [corpus.Series(f"walk/{i}", np.cumsum(rng.standard_normal(2500)), "1h", (24.0,),
                            "test", "test", "test", role="val") for i in range(2)]
    monkeypatch.setattr(spread.corpus, "load", lambda: series)
    weights = tmp_path / "w"
    model = small(quantiles=(0.025, 0.1, 0.5, 0.9, 0.975))
    checkpoint.save(model, weights, {"name": "tiny"})

    table = spread.main(["--weights", str(weights), "--windows", "4"])

    saved, manifest = checkpoint.load(weights)
    record = manifest["horizon_spread"]
    grid = record["grid"]
    assert [g["carry"] for g in grid] == list(spread.CARRIES)
    for g in grid:  # calibrated, unless the exponent's range ran out
        assert abs(g["coverage_gap"]) < 0.02 or g["beta"] in (-1.0, 2.0), g
    best = min(grid, key=lambda g: g["interval_score"])
    assert record["carry"] == best["carry"] == float(saved.horizon_carry)
    assert torch.allclose(saved.horizon_spread, spread.spread_of(best["beta"], len(table)).float())
    # the saved model's intervals are those the fit scored: re-scored, the same numbers
    tasks = [t for _, t in spread.validation_tasks(series, 4)]
    with torch.no_grad():
        runs = spread.rollouts(checkpoint.load(weights)[0], tasks)
        gap, score = spread.scores(saved, runs, saved.horizon_spread.double(), record["carry"])
    assert abs(gap - best["coverage_gap"]) < 1e-3 and abs(score - best["interval_score"]) < 1e-3
