"""The engine: owns the loaded model and the streaming series' states; no HTTP here.

Every model computation goes through `model.Rimer` (append / forecast); the engine only
batches series, checks limits the model imposes, and keeps states. An append computes the new
state from the old one and swaps it in only when it succeeded, so a failed append changes nothing.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from model import checkpoint
from model.rimer import Rimer
from model.state import RimerState


class EngineError(Exception):
    """A request the engine refuses; `status` and `field` say how the HTTP layer reports it."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass
class SeriesEntry:
    state: RimerState
    lock: threading.Lock


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


class Engine:
    def __init__(self, model: Rimer, manifest: dict, max_series: int):
        self.model = model
        self.manifest = manifest
        self.name = str(manifest.get("name", "rimer"))
        self.device = model.head.weight.device
        self.max_series = max_series
        self._series: dict[str, SeriesEntry] = {}
        self._table_lock = threading.Lock()
        self.state_bytes = RimerState.zeros(model.cfg, 1).nbytes_per_series()

    @classmethod
    def load(cls, weights: str, device: str, max_series: int) -> Engine:
        model, manifest = checkpoint.load(weights, resolve_device(device))
        return cls(model, manifest, max_series)

    @property
    def patch_len(self) -> int:
        return self.model.cfg.patch_len

    # ---- limits the model imposes ----------------------------------------------------------

    def check_forecastable(self, length: int, horizon: int, field: str) -> None:
        """A forecast needs one complete patch and (sinusoidal models) enough positions."""
        cfg = self.model.cfg
        if length < cfg.patch_len:
            raise EngineError(422, f"a forecast needs at least {cfg.patch_len} points "
                                   f"(one patch); the series has {length}", field)
        if cfg.pos_emb == "sinusoidal":
            rollout = math.ceil((horizon + length % cfg.patch_len) / cfg.patch_len) - 1
            needed = length // cfg.patch_len + rollout
            if needed > cfg.max_positions:
                raise EngineError(
                    422, f"this model's sinusoidal position embedding covers {cfg.max_positions} "
                         f"patches of {cfg.patch_len} points, history and forecast together; "
                         f"{length} points plus a horizon of {horizon} need {needed}", field)

    def _require_streamable(self) -> None:
        if not self.model.cfg.streamable:
            raise EngineError(409, f"model {self.name!r} uses window normalisation, which needs "
                                   "the whole history at once; streaming series need a model "
                                   "with causal normalisation. Use POST /forecast instead.")

    # ---- stateless forecasts ---------------------------------------------------------------

    def forecast_histories(self, histories: list[list[float]], horizon: int) -> list[list[float]]:
        for i, values in enumerate(histories):
            self.check_forecastable(len(values), horizon, f"series[{i}].values")
        tensors = [torch.tensor(v, dtype=torch.float32) for v in histories]
        state = self.model.init_state(tensors)
        state = self.model.append(state, tensors)
        return self.model.forecast(state, horizon).cpu().tolist()

    # ---- streaming series ------------------------------------------------------------------

    def _entry(self, series_id: str, create: bool) -> SeriesEntry:
        with self._table_lock:
            entry = self._series.get(series_id)
            if entry is None:
                if not create:
                    raise EngineError(404, f"unknown series {series_id!r}", "id")
                if len(self._series) >= self.max_series:
                    raise EngineError(409, f"the service holds its maximum of {self.max_series} "
                                           "series; delete some first", "id")
                state = RimerState.zeros(self.model.cfg, 1, self.device)
                entry = self._series[series_id] = SeriesEntry(state, threading.Lock())
            return entry

    def append(self, series_id: str, values: list[float], horizon: int | None
               ) -> tuple[int, list[float] | None]:
        self._require_streamable()
        entry = self._entry(series_id, create=True)
        with entry.lock:
            try:
                old_length = int(entry.state.length[0])
                if horizon is not None:
                    self.check_forecastable(old_length + len(values), horizon, "horizon")
                new_state = self.model.append(entry.state,
                                              [torch.tensor(values, dtype=torch.float32)])
                mean = (self.model.forecast(new_state, horizon)[0].cpu().tolist()
                        if horizon else None)
            except BaseException:
                self._forget_if_empty(series_id, entry)
                raise
            entry.state = new_state
            return int(new_state.length[0]), mean

    def _forget_if_empty(self, series_id: str, entry: SeriesEntry) -> None:
        """Undo the creation of a series whose first append was rejected."""
        with self._table_lock:
            if self._series.get(series_id) is entry and int(entry.state.length[0]) == 0:
                del self._series[series_id]

    def forecast_series(self, series_id: str, horizon: int) -> tuple[int, list[float]]:
        self._require_streamable()
        entry = self._entry(series_id, create=False)
        with entry.lock:
            length = int(entry.state.length[0])
            self.check_forecastable(length, horizon, "horizon")
            return length, self.model.forecast(entry.state, horizon)[0].cpu().tolist()

    def describe(self, series_id: str) -> dict:
        entry = self._entry(series_id, create=False)
        with entry.lock:
            s = entry.state
            return {"id": series_id, "length": int(s.length[0]), "model": self.name,
                    "state_bytes": s.nbytes_per_series(), "patches": int(s.n_patches[0]),
                    "tail_points": int(s.tail_len[0])}

    def delete(self, series_id: str) -> None:
        with self._table_lock:
            if self._series.pop(series_id, None) is None:
                raise EngineError(404, f"unknown series {series_id!r}", "id")
