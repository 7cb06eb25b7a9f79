"""The engine: owns the loaded model and the streaming series' states; no HTTP here.

Every model computation goes through `model.Rimer`; the engine only batches series, checks limits
the model imposes, and keeps states. Two backends:

* `torch`: a dict id -> RimerState; an append computes the new state from the old one
  (`Rimer.append`) and swaps it in only when it succeeded, so a failed append changes nothing.
* `triton` (default with CUDA): one preallocated pool of states on the device (a RimerState of
  max_series + scratch + 1 rows), an id -> slot map and a free list; appends update the pool in
  place (`Rimer.append_slots`; on a GPU one-patch appends replay a CUDA graph of `step_slots`),
  forecasts roll out in scratch slots (`Rimer.forecast_slots`). Everything a request could be
  refused for is checked before the pool is touched, so a rejected append changes nothing.
  Lengths are kept on the host, so the checks need no device round trip. One lock serialises
  pool operations.
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


BACKENDS = ("torch", "triton", "auto")
SCRATCH_SLOTS = 256  # rows of the pool for forecasts and POST /forecast (series per batch)


def resolve_backend(name: str, device: torch.device) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


class SlotPool:
    """The triton backend's states: a RimerState of preallocated rows (slots) on the device."""

    def __init__(self, model: Rimer, max_series: int, scratch: int, graphs: bool):
        device = model.head.weight.device
        self.pool = RimerState.zeros(model.cfg, max_series + scratch + 1, device)
        self.scratch = torch.arange(max_series, max_series + scratch, device=device)
        self.spare = max_series + scratch  # padding rows of CUDA-graph batches name this slot
        self.free = list(range(max_series - 1, -1, -1))
        self.slot: dict[str, int] = {}
        self.length: dict[str, int] = {}  # points seen, on the host
        self.lock = threading.Lock()
        self.graphs = None
        if graphs:
            from kernels.graphs import StepGraphs
            self.graphs = StepGraphs(model, self.pool, self.spare)

    def rows(self, slots: list[int]) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.int64, device=self.pool.tail.device)


class Engine:
    def __init__(self, model: Rimer, manifest: dict, max_series: int, backend: str = "torch",
                 scratch_slots: int = SCRATCH_SLOTS, cuda_graphs: bool | None = None):
        self.model = model
        self.manifest = manifest
        self.name = str(manifest.get("name", "rimer"))
        self.device = model.head.weight.device
        self.max_series = max_series
        self.backend = resolve_backend(backend, self.device)
        self._series: dict[str, SeriesEntry] = {}
        self._table_lock = threading.Lock()
        self.state_bytes = RimerState.zeros(model.cfg, 1).nbytes_per_series()
        self._pool: SlotPool | None = None
        if self.backend == "triton":
            if cuda_graphs is None:
                cuda_graphs = self.device.type == "cuda"
            self._pool = SlotPool(model, max_series, scratch_slots, cuda_graphs)

    @classmethod
    def load(cls, weights: str, device: str, max_series: int, backend: str = "auto") -> Engine:
        model, manifest = checkpoint.load(weights, resolve_device(device))
        return cls(model, manifest, max_series, backend)

    @property
    def patch_len(self) -> int:
        return self.model.cfg.patch_len

    @property
    def series_held(self) -> int:
        """Streaming series held now (read without a lock: a gauge, not a decision)."""
        return len(self._pool.slot) if self._pool is not None else len(self._series)

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
        if self._pool is not None:
            return self._pool_forecast_histories(tensors, horizon)
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
        if self._pool is not None:
            return self._pool_append(series_id, values, horizon)
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
        if self._pool is not None:
            return self._pool_forecast_series(series_id, horizon)
        entry = self._entry(series_id, create=False)
        with entry.lock:
            length = int(entry.state.length[0])
            self.check_forecastable(length, horizon, "horizon")
            return length, self.model.forecast(entry.state, horizon)[0].cpu().tolist()

    def describe(self, series_id: str) -> dict:
        if self._pool is not None:
            with self._pool.lock:
                length = self._pool.length.get(series_id)
            if length is None:
                raise EngineError(404, f"unknown series {series_id!r}", "id")
            return {"id": series_id, "length": length, "model": self.name,
                    "state_bytes": self.state_bytes, "patches": length // self.patch_len,
                    "tail_points": length % self.patch_len}
        entry = self._entry(series_id, create=False)
        with entry.lock:
            s = entry.state
            return {"id": series_id, "length": int(s.length[0]), "model": self.name,
                    "state_bytes": s.nbytes_per_series(), "patches": int(s.n_patches[0]),
                    "tail_points": int(s.tail_len[0])}

    def delete(self, series_id: str) -> None:
        if self._pool is not None:
            with self._pool.lock:
                slot = self._pool.slot.pop(series_id, None)
                if slot is None:
                    raise EngineError(404, f"unknown series {series_id!r}", "id")
                del self._pool.length[series_id]
                self._pool.free.append(slot)
            return
        with self._table_lock:
            if self._series.pop(series_id, None) is None:
                raise EngineError(404, f"unknown series {series_id!r}", "id")

    # ---- triton backend: the states in a pool on the device --------------------------------

    def _check_positions(self, length: int, field: str) -> None:
        cfg = self.model.cfg
        if cfg.pos_emb == "sinusoidal" and length // cfg.patch_len > cfg.max_positions:
            raise EngineError(422, f"this model's sinusoidal position embedding covers "
                                   f"{cfg.max_positions} patches of {cfg.patch_len} points; the "
                                   f"series would have {length} points", field)

    def _pool_append(self, series_id: str, values: list[float], horizon: int | None
                     ) -> tuple[int, list[float] | None]:
        sp, p = self._pool, self.patch_len
        with sp.lock:
            # Every check first: past this point the pool changes.
            slot = sp.slot.get(series_id)
            if slot is None and len(sp.slot) >= self.max_series:
                raise EngineError(409, f"the service holds its maximum of {self.max_series} "
                                       "series; delete some first", "id")
            length = sp.length.get(series_id, 0)
            new_length = length + len(values)
            if horizon is not None:
                self.check_forecastable(new_length, horizon, "horizon")
            self._check_positions(new_length, "values")
            created = slot is None
            if created:
                slot = sp.free.pop()
            rows = sp.rows([slot])
            vals = torch.tensor(values, dtype=torch.float32)
            before = None
            try:
                if created:
                    sp.pool.write_(rows, RimerState.zeros(self.model.cfg, 1, self.device))
                if values and sp.graphs is not None and length % p + len(values) < 2 * p:
                    sp.graphs.run(rows, vals[None].to(self.device),
                                  torch.tensor([len(values)], device=self.device))
                elif values:
                    before = sp.pool.select(rows)
                    self.model.append_slots(sp.pool, rows, [vals])
                mean = (self.model.forecast_slots(sp.pool, rows, horizon, sp.scratch[:1])[0].tolist()
                        if horizon else None)
            except BaseException:
                if created:
                    sp.free.append(slot)
                elif before is not None:  # unexpected failure: put the series' state back
                    sp.pool.write_(rows, before)
                raise
            sp.slot[series_id] = slot
            sp.length[series_id] = new_length
            return new_length, mean

    def _pool_forecast_series(self, series_id: str, horizon: int) -> tuple[int, list[float]]:
        sp = self._pool
        with sp.lock:
            slot = sp.slot.get(series_id)
            if slot is None:
                raise EngineError(404, f"unknown series {series_id!r}", "id")
            length = sp.length[series_id]
            self.check_forecastable(length, horizon, "horizon")
            mean = self.model.forecast_slots(sp.pool, sp.rows([slot]), horizon, sp.scratch[:1])
            return length, mean[0].tolist()

    def _pool_forecast_histories(self, tensors: list[torch.Tensor], horizon: int) -> list[list[float]]:
        """In batches of the scratch slots: fresh states there, append, forecast (consuming them)."""
        sp, out = self._pool, []
        with sp.lock:
            for start in range(0, len(tensors), len(sp.scratch)):
                chunk = tensors[start:start + len(sp.scratch)]
                rows = sp.scratch[: len(chunk)]
                sp.pool.write_(rows, self.model.init_state(chunk))
                self.model.append_slots(sp.pool, rows, chunk)
                out += self.model.forecast_slots(sp.pool, rows, horizon, rows).cpu().tolist()
        return out
