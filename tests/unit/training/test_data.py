"""The benchmark splits and scaler follow the standard protocol (checked against its known figure)."""

from __future__ import annotations

import numpy as np
import pytest

from training import data, evaluate


@pytest.mark.slow
def test_repeat_last_on_etth1_matches_the_protocol_check():
    """../shared/data/README.md: repeat-last scores ETTh1 MSE 1.294 (H=96) and 1.321 (avg), L=96."""
    ds = data.load("ETTh1")
    x = evaluate.scaled(ds)
    scores = []
    for h in evaluate.HORIZONS:
        ends = evaluate.window_ends(ds, h, 1)
        ends = ends[ends + h <= ds.borders["test"][1]]
        last = x[ends - 1][:, None, :]
        true = np.stack([x[e: e + h] for e in ends])
        scores.append(evaluate.metrics(np.broadcast_to(last, true.shape), true)[0])
    assert abs(scores[0] - 1.294) < 5e-4
    assert abs(np.mean(scores) - 1.321) < 5e-4


def test_borders_and_scaler():
    ds = data.load("weather")
    assert ds.borders == {"train": (0, 36887), "val": (36887, 42157), "test": (42157, 52696)}
    train = ds.split("train")
    assert np.allclose(train.mean(0), 0, atol=1e-9) and np.allclose(train.std(0), 1, atol=1e-9)
    assert ds.split("test", lookback=512).shape[0] == 52696 - 42157 + 512
