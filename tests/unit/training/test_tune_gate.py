"""training.tune_gate: the gate and sharpness shifts land where the lag head reads them, and the
pair written into the weights is the grid's best by the validation the weights are re-scored on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import checkpoint
from model.config import RimerConfig
from model.rimer import Rimer
from tests.unit.training.test_pretraining import small
from training import corpus, protocol, tune_gate
from training.pretrain import validation_score, validation_tasks


def lag_model() -> Rimer:
    return small(lag_window=32, lag_match=16, lag_drift=True)


def test_shift_moves_only_the_gate_and_sharpness_logits():
    model = lag_model()
    h = torch.randn(3, 5, model.cfg.d_model)
    before = model.lag_parts(model.extra_heads(h)["lag"])
    tune_gate.shift(model, model.lag_head.bias.data.clone(), 0.7, -0.3)
    after = model.lag_parts(model.extra_heads(h)["lag"])
    logits0, gate0, sharp0, drift0 = before
    logits1, gate1, sharp1, drift1 = after
    assert torch.equal(logits1, logits0) and torch.equal(drift1, drift0)
    assert torch.allclose(gate1 - gate0, torch.full_like(gate0, 0.7), atol=1e-5)
    raw0 = sharp0.expm1().log()  # softplus inverted
    assert torch.allclose(sharp1, F.softplus(raw0 - 0.3), atol=1e-5)


def test_the_grid_best_is_written_and_rescoring_the_saved_weights_gives_its_score(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    series = [corpus.Series(f"m4-hourly/H{i}", np.sin(2 * np.pi * t / 24) * 3 + rng.standard_normal(3000),
                            "1h", (24.0,), "test", "test", "test", role="val") for i in range(2)]
    monkeypatch.setattr(tune_gate.corpus, "load", lambda: series)
    weights = tmp_path / "w"
    checkpoint.save(lag_model(), weights, {"name": "tiny"})
    base = checkpoint.load(weights)[0].lag_head.bias.data.clone()

    result = tune_gate.main(["--weights", str(weights), "--gates", "0,1.5", "--sharps=-1,0",
                             "--windows", "2"])

    scores = {(r["gate"], r["sharp"]): r["score"] for r in result["grid"]}
    assert len(scores) == 4 and len(set(scores.values())) > 1  # the shifts change the forecasts
    chosen = result["chosen"]
    assert chosen["score"] == min(scores.values())
    assert result["unshifted_score"] == scores[(0.0, 0.0)]
    model, manifest = checkpoint.load(weights)
    assert manifest["gate_tuning"]["chosen"] == chosen
    gates, sharpness = tune_gate.gate_bias(model)
    bias = model.lag_head.bias.data
    assert torch.allclose(bias[gates], base[gates] + chosen["gate"])
    assert torch.allclose(bias[sharpness], base[sharpness] + chosen["sharp"])
    rest = torch.ones_like(bias, dtype=torch.bool)
    rest[gates] = False
    rest[sharpness] = False
    assert torch.equal(bias[rest], base[rest])
    tasks = validation_tasks(series, 2, long_term_horizons=True)
    naive = [protocol.naive_scores(task)[0] for _, task in tasks]
    with torch.no_grad():
        again, _ = validation_score(model, tasks, naive)
    assert again == pytest.approx(chosen["score"], abs=1e-5)


def test_a_bad_grid_and_a_model_without_a_lag_head_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        tune_gate.main(["--weights", str(tmp_path), "--gates", "0,x"])
    plain = Rimer(RimerConfig(patch_len=8, d_model=32, n_layers=1, head_size=16, w_rank=8, a_rank=8,
                              v_rank=8, g_rank=8, pos_emb="none"))
    checkpoint.save(plain, tmp_path / "plain", {"name": "plain"})
    with pytest.raises(SystemExit):
        tune_gate.main(["--weights", str(tmp_path / "plain")])
