"""training.spread: the first patch gets the factor that gives it nominal coverage, every carry
of the grid the exponent that gives nominal coverage after the first patch, the best-scoring
carry is written with its spread, and the saved model's forecasts are the ones that were
scored; the first patch's factor draws every one-patch-ahead quantile (those the online
calibration scores too), and a factor of 1 changes no bit."""

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
    first = record["first_patch"]
    assert first != 1.0 and abs(float(saved.horizon_spread[0]) - first) < 1e-4
    assert torch.allclose(saved.horizon_spread,
                          spread.spread_of(best["beta"], len(table), table[0]).float())
    # the saved model's intervals are those the fit scored: re-scored, the same numbers
    tasks = [t for _, t in spread.validation_tasks(series, 4)]
    with torch.no_grad():
        runs = spread.rollouts(checkpoint.load(weights)[0], tasks)
        gap0 = spread.first_patch_gap(saved, runs, table[0])  # nominal, unless out of range
        assert abs(gap0) < 0.02 or not 0.07 < table[0] < 15.9, (gap0, table[0])
        runs = spread.first_patch_drawn(runs, saved.cfg.patch_len, table[0])
        gap, score = spread.scores(saved, runs, saved.horizon_spread.double(), record["carry"])
    assert abs(gap - best["coverage_gap"]) < 1e-3 and abs(score - best["interval_score"]) < 1e-3


def test_the_first_patch_factor_draws_every_one_patch_ahead_quantile():
    """`horizon_spread[0]` scales the next patch's quantiles about its forecast, the same in the
    forecast's first patch and in what the online calibration scores (so the calibration tracks
    the intervals it serves); 1 leaves every bit as before it existed."""
    torch.manual_seed(0)
    model = small(quantiles=(0.025, 0.1, 0.5, 0.9, 0.975)).eval()
    x = [torch.cumsum(torch.randn(200), 0) for _ in range(3)]
    with torch.no_grad():
        state = model.append(model.init_state(x), x)
        plain_q, plain_calib = model.next_quantiles(state), state.calib
        mean, q = model.forecast(state, 40, quantiles=True)
        model.horizon_spread[0] = 0.5
        half_q = model.next_quantiles(state)
        centre = state.next_patch[:, None]
        assert torch.allclose(half_q, centre + 0.5 * (plain_q - centre), atol=1e-5)
        mean2, q2 = model.forecast(state, 40, quantiles=True)
        assert torch.equal(mean, mean2)
        p = model.cfg.patch_len
        assert torch.allclose(q2[..., :p], mean[:, None, :p] + 0.5 * (q[..., :p] - mean[:, None, :p]),
                              atol=1e-4)
        half_calib = model.append(model.init_state(x), x).calib
        assert not torch.equal(half_calib, plain_calib)  # (it scored the narrower intervals)
        model.horizon_spread[0] = 1.0
        again = model.append(model.init_state(x), x)
        assert torch.equal(model.next_quantiles(again), plain_q) and torch.equal(again.calib, plain_calib)


def test_the_first_patch_factor_is_the_one_of_nominal_coverage():
    """Rollouts whose first patch's quantiles are a normal's of sd 2 around a mean of 0, and
    whose truth is drawn with sd 1.5: the fitted factor is 0.75, and nominal coverage follows."""
    from scipy.stats import norm

    levels = (0.025, 0.1, 0.5, 0.9, 0.975)
    model = small(quantiles=levels)
    p, n = model.cfg.patch_len, 4000
    rng = np.random.default_rng(1)
    z = torch.tensor(norm.ppf(levels), dtype=torch.float32)
    quantiles = (2.0 * z)[None, :, None].expand(n, -1, 2 * p).clone()
    truth = torch.full((n, 2 * p), float("nan"))
    truth[:, :p] = torch.tensor(rng.standard_normal((n, p)) * 1.5, dtype=torch.float32)
    runs = spread.Rollouts(torch.zeros(n, 2 * p), quantiles, truth, torch.zeros(n, dtype=torch.int64))
    factor = spread.fit_first_patch(model, runs)
    assert abs(factor - 0.75) < 0.02, factor  # (1.5 / 2, up to the sample's own spread)
    assert abs(spread.first_patch_gap(model, runs, factor)) < 0.005
    assert spread.first_patch_gap(model, runs, 1.0) > 0.05  # (as predicted: too wide)
