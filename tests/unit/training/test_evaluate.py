"""The evaluation's full-history path forecasts what a per-window forecast would."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model import checkpoint
from model.rimer import Rimer
from tests.helpers import TINY, tiny_model, walk
from training import evaluate, merge_eval
from training.evaluate import full_history_forecasts


def test_full_history_equals_each_window_forecast_from_its_whole_patch_history():
    """One streamed pass per patch phase must give, for every window, the forecast made from
    scratch on that window's history: every point before it, less the oldest (end mod P)."""
    model = tiny_model()
    p = model.cfg.patch_len
    x = np.stack([walk(p * 12, s).numpy() for s in (1, 2)], axis=1)  # [T, 2 vars]
    ends = np.arange(p * 5 + 3, p * 9 + 1, 3)  # stride 3: several phases, uneven spacing
    seen = []
    got = full_history_forecasts(model, x, ends, horizon=p + 5, batch=7, progress=seen.append)
    assert sum(seen) == len(ends) * 2
    for w, e in enumerate(ends):
        hist = [torch.tensor(x[e % p: e, v]) for v in range(2)]
        want = model.forecast(model.append(model.init_state(hist), hist), p + 5).numpy()
        # chunked and one-patch-at-a-time appends round differently; the randomised tiny model
        # amplifies that, so the tolerance is relative to the forecast's scale
        np.testing.assert_allclose(got[w].T, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.slow
def test_workers_give_the_same_results_as_one_process(tmp_path):
    """--workers evaluates datasets in parallel processes; the results must not depend on it."""
    torch.manual_seed(0)
    checkpoint.save(Rimer(TINY).eval(), tmp_path / "w", {"name": "tiny"})  # unperturbed: finite
    args = ["--weights", str(tmp_path / "w"), "--datasets", "ETTh1", "ETTh2", "--stride", "1999",
            "--lookback", "64", "--base-lookback", "64", "--batch", "64", "--threads", "1"]
    one = evaluate.main(args)["results"]
    two = evaluate.main([*args, "--workers", "2"])["results"]
    assert list(two) == ["ETTh1", "ETTh2"]
    for name in one:
        for h, row in one[name].items():
            for method, value in row.items():
                np.testing.assert_allclose(two[name][h][method], value, rtol=1e-6)


@pytest.mark.slow
def test_merged_parts_equal_one_evaluation_of_all_datasets(tmp_path):
    """training.merge_eval joins per-dataset runs into what one run of all datasets writes, and
    refuses parts evaluated differently."""
    torch.manual_seed(0)
    checkpoint.save(Rimer(TINY).eval(), tmp_path / "w", {"name": "tiny"})
    base = ["--weights", str(tmp_path / "w"), "--stride", "1999", "--lookback", "64",
            "--base-lookback", "64", "--batch", "64", "--threads", "1"]
    both = evaluate.main([*base, "--datasets", "ETTh1", "ETTh2", "--out", str(tmp_path / "both")])
    evaluate.main([*base, "--datasets", "ETTh1", "--out", str(tmp_path / "a")])
    evaluate.main([*base, "--datasets", "ETTh2", "--out", str(tmp_path / "b")])
    joined = merge_eval.main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == joined
    assert list(joined["results"]) == ["ETTh1", "ETTh2"]
    for name, by_h in both["results"].items():
        for h, row in by_h.items():
            for method, value in row.items():
                np.testing.assert_allclose(joined["results"][name][h][method], value, rtol=1e-6)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "--datasets ETTh1 " in report and "--datasets ETTh2 " in report
    assert "| ETTh2 | avg |" in report
    evaluate.main([*base, "--datasets", "ETTm1", "--stride", "2999", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit):  # stride differs
        merge_eval.main([str(tmp_path / "a"), str(tmp_path / "c")])
    with pytest.raises(SystemExit):  # ETTh2 twice
        merge_eval.main([str(tmp_path / "b"), str(tmp_path / "a")])
