"""The history-length benchmark compares histories that end on a patch boundary."""

from __future__ import annotations

import numpy as np

from tests.helpers import tiny_model, walk
from training.long_history import mse_by_history


def test_histories_are_rounded_to_whole_patches():
    """N + p - 1 points are scored as N (whole patches): without the rounding the two histories
    would differ in their last patch's phase and score differently."""
    model = tiny_model()
    p = model.cfg.patch_len
    x = walk(p * 40, 3).numpy().astype(np.float64)
    ends = [np.array([p * 30 + 5, p * 34 + 5])]
    n = p * 20
    scores = mse_by_history(model, [x], ends, [n, n + p - 1], horizon=p)
    assert scores[n] == scores[n + p - 1]
