"""The zero-shot benchmark's scoring and report (statsforecast itself is a benchmark dependency,
requirements-bench.txt, not needed here): ratios to the best naive forecast, geometric means,
the synthetic checks, and the corpus roles that keep benchmark series out of training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import corpus, protocol, zeroshot


def fake(mse_by_method: dict[str, float]) -> dict:
    return {"mse": {m: {24: v, 48: v} for m, v in mse_by_method.items()}, "windows": 3, "sample": {}}


def test_ratios_are_to_the_better_naive_and_means_are_geometric():
    results = {"a": fake({"rimer": 1.0, "repeat_last": 4.0, "seasonal_naive": 2.0, "AutoETS": 3.0,
                          "AutoTheta": 2.0, "MSTL": 1.0}),
               "b": fake({"rimer": 2.0, "repeat_last": 1.0, "AutoETS": 1.0, "AutoTheta": 4.0,
                          "MSTL": 1.0})}  # b: no period, so no seasonal naive
    s = zeroshot.summarise(results)
    assert s["ratio"]["a"]["rimer"] == 0.5 and s["ratio"]["b"]["rimer"] == 2.0
    assert math.isclose(s["geomean"]["rimer"], 1.0)
    assert math.isclose(s["geomean"]["AutoTheta"], math.sqrt(1.0 * 4.0))
    assert math.isclose(s["geomean"]["seasonal_naive"], math.sqrt(1.0 * 1.0))  # b: repeat-last's


def test_synthetic_checks_are_what_they_say():
    checks = zeroshot.synthetic_checks()
    hist, truth, _ = checks["ramp 1..512"]
    assert hist[0] == 1 and hist[-1] == 512 and truth[0] == 513 and len(truth) == 96
    hist, truth, periods = checks["sine, period 200"]
    task = zeroshot.check_task("sine", hist, truth, periods)
    assert np.allclose(protocol.seasonal_naive(task), task.truth)


@pytest.mark.slow
def test_no_benchmark_series_or_its_source_is_trained_or_validated_on():
    series = corpus.load(package_data=False)
    bench = [s for s in series if s.role == "bench"]
    assert {s.key for s in bench} >= {"m4-hourly/H261", "m4-weekly/W176", "exchange/Japan"}
    train_keys = {s.key for s in series if s.role in ("train", "val")}
    assert not train_keys & {s.key for s in bench}
    long_term = [s for s in series if s.key.startswith("ETTh1/")]
    assert {s.role for s in long_term} == {"train", "val"}  # test rows of the protocol never used
    train = next(s for s in long_term if s.role == "train")
    assert len(train.values) == 8640


def test_the_report_lists_every_series_and_the_geometric_means(tmp_path):
    results = {"x/a": fake({"rimer": 1.0, "repeat_last": 2.0, "AutoETS": 1.5, "AutoTheta": 1.5,
                            "MSTL": 1.5})}
    info = {"x/a": {"freq": "1h", "domain": "test", "period": None, "windows": 3, "horizons": (24, 48)}}
    checks = {"c": fake({"rimer": 1.0, "repeat_last": 2.0, "AutoETS": 1.0, "AutoTheta": 1.0,
                         "MSTL": 1.0})}
    zeroshot.write_report(tmp_path, "m", info, zeroshot.summarise(results), checks, "cmd")
    text = (tmp_path / "report.md").read_text()
    assert "| x/a | 1h | test |" in text and "**geometric mean**" in text and "**0.500**" in text


def test_stream_forecasts_are_the_state_over_each_whole_prefix():
    """`rimer_stream` carries one state from origin to origin: at each origin it is the forecast
    of the series sent whole up to there (streamed equals whole), however the origin falls in
    a patch, and it differs from the 512-point window's where the history is longer."""
    import torch

    from tests.helpers import tiny_model

    model = tiny_model().eval()
    rng = np.random.default_rng(3)
    values = np.cumsum(rng.standard_normal(3000)) + 5 * np.sin(np.arange(3000) / 4)
    task = protocol.make_task("walk", values, "1h", (24.0,), max_windows=5)
    assert len(task.origins) == 5 and len({o % 32 for o in task.origins}) > 1  # (not all aligned)
    got = protocol.stream_forecasts(model, task)
    h = task.truth.shape[1]
    for row, origin in zip(got, task.origins):
        whole = [torch.tensor(task.series[:origin], dtype=torch.float32)]
        with torch.no_grad():
            want = model.forecast(model.append(model.init_state(whole), whole), h)[0].double().numpy()
        p = model.cfg.patch_len  # (the random model's long rollouts blow up: two patches)
        assert np.allclose(row[:2 * p], want[:2 * p], rtol=1e-4, atol=1e-4)
    assert not np.allclose(got[:, :2 * model.cfg.patch_len],
                           protocol.model_forecast(model, task)[:, :2 * model.cfg.patch_len], atol=1e-3)
    with pytest.raises(ValueError):
        protocol.stream_forecasts(model, zeroshot.check_task("c", np.ones(64), np.ones(8), ()))
