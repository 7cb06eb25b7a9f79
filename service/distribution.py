"""Forecasts with their distribution: the engine's answer, and the intervals and quantiles the
HTTP layer draws from it.

The engine returns each forecast as a `Forecast`: a list of the mean's floats (so every caller
that wants the mean treats it as before) carrying, for a model with a quantile head, the
quantiles at the model's levels [Q, H] and the series' interval calibration (model/calibration.py)
as NumPy arrays, converted to JSON only for what a client asks."""

from __future__ import annotations

import numpy as np
import torch

from model import calibration
from model.rimer import Rimer


class Forecast(list):
    """The mean forecast (the list itself) and, for a model with quantiles, `quantiles` [Q, H]
    and `calib` [tracked levels] (None otherwise)."""

    __slots__ = ("quantiles", "calib", "levels")

    def __init__(self, mean, quantiles=None, calib=None, levels=()):
        super().__init__(mean)
        self.quantiles, self.calib, self.levels = quantiles, calib, tuple(levels)


def forecasts(model: Rimer, calib: torch.Tensor | None, run) -> list[Forecast]:
    """`run(quantiles)` is the model's forecast call for some series (functional or on the pool),
    `calib` their states' calibration rows; its results as Forecasts, with quantiles and
    calibration where the model has them."""
    if not model.cfg.quantiles:
        return [Forecast(m) for m in run(False).cpu().tolist()]
    mean, q = run(True)
    qs = q.cpu().numpy()
    calib = calib.cpu().numpy()
    return [Forecast(m, qs[b], calib[b], model.cfg.quantiles) for b, m in enumerate(mean.cpu().tolist())]


def _levels_array(values, device=None) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=device)


def intervals(fc: Forecast, levels: list[float], calibrated: bool = True) -> list[dict]:
    """`{"level", "lo", "hi"}` per requested level (percent), drawn at the series' calibrated
    miscoverage (static: the nominal one)."""
    q = torch.from_numpy(fc.quantiles)[None]
    offsets = torch.from_numpy(fc.calib)[None] if calibrated and fc.calib is not None else None
    out = []
    for level in levels:
        alpha = calibration.alpha_for(offsets, float(level))
        lo_hi = calibration.at_levels(q, fc.levels, calibration.interval_levels(alpha))[0]
        out.append({"level": level, "lo": lo_hi[0].tolist(), "hi": lo_hi[1].tolist()})
    return out


def quantiles(fc: Forecast, levels: list[float]) -> list[dict]:
    """`{"q", "values"}` per requested quantile level in (0, 1) (the network's, uncalibrated)."""
    q = torch.from_numpy(fc.quantiles)[None]
    values = calibration.at_levels(q, fc.levels, _levels_array(levels))[0]
    return [{"q": level, "values": v.tolist()} for level, v in zip(levels, values)]


def outside(fc: Forecast, values: list[float], level: float) -> list[dict]:
    """The points of `values` (the points that followed the forecast `fc`) outside its calibrated
    `level` interval, as `{"index", "value", "lo", "hi"}`: anomalies."""
    n = min(len(values), len(fc))
    if n == 0 or fc.quantiles is None:
        return []
    [band] = intervals(Forecast(fc[:n], fc.quantiles[:, :n], fc.calib, fc.levels), [level])
    lo, hi, y = np.asarray(band["lo"]), np.asarray(band["hi"]), np.asarray(values[:n], dtype=float)
    # Compared as the model holds them, in float32: a series flat at 123456789 (held as
    # 123456792) has a zero-width interval there, which the exact value would fall outside.
    seen = y.astype(np.float32).astype(float)
    return [{"index": int(i), "value": float(y[i]), "lo": float(lo[i]), "hi": float(hi[i])}
            for i in np.flatnonzero((seen < lo) | (seen > hi))]
