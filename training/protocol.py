"""The single-series forecasting protocol that the zero-shot benchmark and model selection share.

A series of N points is split by time 70/10/20: train rows [0, 0.7 N), validation rows up to
0.8 N, test rows the rest. A StandardScaler fitted on the train rows scales everything; errors are
MSE on scaled values. Forecast origins slide through the scored rows (the test rows for the
benchmark, the validation rows for model selection), each with the `lookback` points before it
(fewer where the series has fewer), and every horizon of the frequency is scored on the same
origins (a shorter forecast is a prefix of the longest).

The naive references: repeat-last, and seasonal naive (the value one period before, for every
step of the horizon) at the best of the series' natural periods. A method's *ratio* on a series is
its MSE (averaged over the four horizons) over the better of the two naive forecasts' MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.rimer import Rimer

LOOKBACK = 512
# four horizons per sampling step, short to long (about a day to a week for sub-daily steps)
HORIZONS = {
    "5min": (48, 96, 288, 576), "10min": (36, 72, 144, 288), "15min": (24, 48, 96, 192),
    "30min": (48, 96, 192, 336), "1h": (24, 48, 96, 168), "1d": (7, 14, 30, 60),
    "1w": (4, 13, 26, 52), "1mo": (6, 12, 18, 24), "1q": (4, 8, 12, 16), "1y": (5, 10, 20, 30),
    "1min": (60, 120, 240, 480),
}
OTHER_HORIZONS = (32, 64, 128, 256)  # signals sampled in seconds or finer, irregular steps


@dataclass
class Task:
    """The windows of one series: histories (scaled, oldest first) and the scaled truth after."""

    key: str
    histories: list[np.ndarray]
    truth: np.ndarray  # [windows, max horizon]
    horizons: tuple[int, ...]
    period: int | None  # the natural (main) period rounded to points, None when it has none
    periods: tuple[int, ...]  # every natural period, rounded
    # The whole scaled series and each window's origin (its history ends there): what a stream
    # has seen at the origin (`stream_forecasts`). None for tasks made of windows alone.
    series: np.ndarray | None = None
    origins: tuple[int, ...] | None = None


def train_scaled(x: np.ndarray, train_end: int) -> np.ndarray:
    """The series standardised by its first `train_end` points' mean and std (1 if constant)."""
    train = x[:train_end]
    sd = train.std()
    return (x - train.mean()) / (sd if sd > 0 else 1.0)


def make_task(key: str, values: np.ndarray, freq: str, periods: tuple[float, ...], part: str = "test",
              lookback: int = LOOKBACK, max_windows: int = 48, horizons: tuple[int, ...] | None = None,
              val_range: tuple[int, int] | None = None) -> Task | None:
    """Windows of `part` ("test" or "val") of a series, or None where it is too short.

    `val_range` (rows) replaces the 70/10/20 borders, for series whose splits are fixed elsewhere
    (the long-term datasets' validation rows); scaling then uses the rows before it."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    horizons = horizons or HORIZONS.get(freq, OTHER_HORIZONS)
    h_max = max(horizons)
    if val_range is not None:
        lo, hi = val_range
        train_end = lo
    else:
        train_end = int(0.7 * n)
        lo, hi = (int(0.7 * n), int(0.8 * n)) if part == "val" else (int(0.8 * n), n)
    xs = train_scaled(x, train_end)
    last_origin = hi - h_max
    if part == "val" and val_range is None:
        last_origin = min(hi, n - h_max)  # validation windows may read into the test rows' truth
    first = max(lo, 32)
    if last_origin < first:
        return None
    count = min(max_windows, last_origin - first + 1)
    origins = np.unique(np.linspace(first, last_origin, count).round().astype(int))
    hist = [xs[max(0, o - lookback): o] for o in origins]
    truth = np.stack([xs[o: o + h_max] for o in origins])
    rounded = tuple(int(round(p)) for p in periods)
    return Task(key, hist, truth, tuple(horizons), rounded[0] if rounded else None, rounded,
                xs, tuple(int(o) for o in origins))


def repeat_last(task: Task) -> np.ndarray:
    h = task.truth.shape[1]
    return np.stack([np.repeat(hist[-1], h) for hist in task.histories])


def seasonal_naive(task: Task, period: int | None = None) -> np.ndarray | None:
    """The value one period back (repeated every period; the main period unless given); None for
    a series without a period or windows whose history is shorter than the period."""
    m, h = period or task.period, task.truth.shape[1]
    if not m or m < 2 or any(len(hist) < m for hist in task.histories):
        return None
    steps = np.arange(h)
    return np.stack([hist[len(hist) - m + steps % m] for hist in task.histories])


def model_forecast(model: Rimer, task: Task, batch: int = 256) -> np.ndarray:
    """[windows, max horizon] forecasts of a Rimer from each window's history."""
    return model_forecasts(model, [task], batch)[0]


def model_forecasts(model: Rimer, tasks: list[Task], batch: int = 256) -> list[np.ndarray]:
    """`model_forecast` of several tasks, their windows batched together (one rollout to the
    longest horizon; each task keeps its own prefix)."""
    hist = [x for task in tasks for x in task.histories]
    h = max(task.truth.shape[1] for task in tasks)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(hist), batch):
        part = [torch.tensor(x, dtype=torch.float32, device=device) for x in hist[i: i + batch]]
        with torch.no_grad():
            state = model.append(model.init_state(part), part)
            out.append(model.forecast(state, h).double().cpu().numpy())
    flat = np.concatenate(out)
    pieces, at = [], 0
    for task in tasks:
        n = len(task.histories)
        pieces.append(flat[at: at + n, : task.truth.shape[1]])
        at += n
    return pieces


def stream_forecasts(model: Rimer, task: Task) -> np.ndarray:
    """[windows, max horizon] forecasts of the streaming API at the task's origins: from the
    state over every point of the series before the origin (not the last `LOOKBACK`), the
    points appended in order, one state carried from origin to origin, forecast as the API
    forecasts (`Rimer.forecast`: from inside a patch, afresh over the last whole patches)."""
    if task.series is None or task.origins is None:
        raise ValueError(f"task {task.key!r} holds windows only, not its series")
    x = np.asarray(task.series, dtype=np.float32)
    h = task.truth.shape[1]
    device = next(model.parameters()).device
    out, state, at = [], None, 0
    with torch.no_grad():
        for origin in task.origins:
            part = [torch.from_numpy(x[at:origin]).to(device)]
            state = model.append(model.init_state(part) if state is None else state, part)
            at = origin
            out.append(model.forecast(state, h).double().cpu().numpy()[0])
    return np.stack(out)


def mse_by_horizon(task: Task, pred: np.ndarray) -> dict[int, float]:
    return {h: float(np.mean((pred[:, :h] - task.truth[:, :h]) ** 2)) for h in task.horizons}


def average(by_h: dict[int, float]) -> float:
    return float(np.mean(list(by_h.values())))


def naive_scores(task: Task) -> tuple[float, dict[str, dict[int, float]]]:
    """(the best naive forecast's average MSE, each naive method's MSE by horizon).

    Seasonal naive is scored at each natural period that fits the histories and reported at the
    best of them, chosen on these very windows: the strictest naive reference there is."""
    scores = {"repeat_last": mse_by_horizon(task, repeat_last(task))}
    seasonal = [mse_by_horizon(task, f) for f in (seasonal_naive(task, m) for m in task.periods)
                if f is not None]
    if seasonal:
        scores["seasonal_naive"] = min(seasonal, key=average)
    return min(average(s) for s in scores.values()), scores
