"""training/whole_history.py: origins on whole patches with room on both sides, and the three
forecasts scored on the same windows."""

from __future__ import annotations

import numpy as np

from tests.helpers import head_model
from training import whole_history


def test_origins_are_whole_patches_in_the_test_rows_with_room_before_and_after():
    o = whole_history.origins_of(20_000, 32, 24, 336)
    assert len(o) > 1 and (o % 32 == 0).all() and (o >= 16_000 - 32).all()
    assert (o >= 2048).all() and (o + 336 <= 20_000).all()
    assert len(whole_history.origins_of(2_300, 32, 24, 336)) == 0  # (no room for 2,048 before)


def test_the_three_forecasts_are_scored_on_the_same_windows():
    model = head_model()
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal(12_000)) + 10 * np.sin(np.arange(12_000) / 8)
    got = whole_history.score(model, x, "1h", windows=3)
    assert got["windows"] == 3 and got["length"] == 12_000
    assert all(np.isfinite(got[k]) and got[k] > 0 for k in ("whole", "last512", "last2048"))
    assert got["whole"] != got["last512"]  # (different histories, different forecasts)
