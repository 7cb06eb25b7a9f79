"""The engine: owns the loaded model and the streaming series' states; no HTTP here.

Every model computation goes through `model.Rimer`; the engine only batches series, checks limits
the model imposes, and keeps states. Three backends:

* `torch`: a dict id -> RimerState; an append computes the new state from the old one
  (`Rimer.append`) and swaps it in only when it succeeded, so a failed append changes nothing.
* `triton` (default with CUDA): one preallocated pool of states on the device (a RimerState of
  max_series + scratch + 1 rows), an id -> slot map and a free list; appends update the pool in
  place (`PoolRunner.append_slots`, runtime/pool.py; an append that completes no patch only
  copies its points into the tail; on a GPU one-patch appends replay a CUDA graph of
  `step_slots`; a micro-batch runs as a few batched calls, `_pool_batch`),
  forecasts roll out in scratch slots (`PoolRunner.forecast_slots`). Everything a request could be
  refused for is checked before the pool is touched, so a rejected append changes nothing.
  Lengths are kept on the host, so the checks need no device round trip. One lock serialises
  pool operations.
* `onnx` (CPU): the torch backend's states and code, with the network itself run by ONNX Runtime
  from the graphs shipped beside the weights (model/onnx_network.py; `Rimer.network_runtime`).

With a data directory (service/store.py) the engine has a `journal`: an accepted append or delete
is written to the write-ahead log under the journal's lock together with the state change it
records (so the log's order per series is the order of the changes, and a snapshot's cut, taken
under the same lock, falls between records), and made durable (`journal.sync`) before the call
returns, outside the engine's locks. `export_states` / `import_states` move every series' state
to and from the host for snapshots, whatever the backend.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from model import checkpoint
from model.rimer import Rimer
from model.state import RimerState
from service.cache import SpillError, SpillTiers
from service.distribution import forecasts

log = logging.getLogger("rimer.engine")


class EngineError(Exception):
    """A request the engine refuses; `status` and `field` say how the HTTP layer reports it."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass(eq=False, slots=True)
class SeriesEntry:
    state: RimerState | None  # None while spilled to the host or disk tier
    lock: threading.Lock
    length: int = 0  # points seen (kept here so that listing needs no state), pending included
    touched: float = 0.0  # time.monotonic() of the last request (idle expiry)
    # Points appended after `state` that complete no patch: they would only be copied into the
    # state's tail (the matrices and statistics change per patch), so they wait here, plain
    # floats, until a patch completes or a forecast, spill or snapshot needs them (`folded`).
    pending: list[float] = field(default_factory=list)

    def set_state(self, state: RimerState, length: int | None = None) -> None:
        """Keep `state` with contiguous tensors: a state back from a spill file or a snapshot is
        contiguous, and CPU kernels may round differently with other strides. `length`: the
        state's points, when the caller knows them (else read from the state)."""
        tensors = {k: v.contiguous() for k, v in state.tensors().items()}
        self.state = RimerState(**tensors)
        self.length = int(state.length[0]) if length is None else length
        self.pending = []


@dataclass(eq=False, slots=True)
class Op:
    """One series' part of a batched request: append `values` (None: forecast only), and forecast
    `horizon` points after it when given. `prefix` names the item in errors ("series[3]")."""

    series_id: str
    values: list[float] | None
    horizon: int | None = None
    prefix: str = ""
    meta: dict | None = None  # the HTTP layer's per-series metadata after this op (timestamps)
    length: int = 0  # set by the engine: the series' length after this op
    mean: list[float] | None = None
    state: RimerState | None = None

    def field(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


def _rounds(ops: list[Op]) -> list[list[Op]]:
    """The ops in rounds, the k-th op of every series in round k (order kept within each)."""
    if len({op.series_id for op in ops}) == len(ops):  # each series once (a bulk append's case)
        return [ops] if ops else []
    rounds: list[list[Op]] = []
    seen: dict[str, int] = {}
    for op in ops:
        k = seen[op.series_id] = seen.get(op.series_id, -1) + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(op)
    return rounds


class Journal(Protocol):
    """What the engine needs of a write-ahead log (service/store.py's WriteAheadLog)."""

    lock: AbstractContextManager  # held around a record's write and the state change it records

    def exclusive(self) -> AbstractContextManager: ...  # no write or sync in progress while held
    def write_append(self, series_id: str, values: list[float], length: int,
                     meta: dict | None = None) -> int: ...
    def write_delete(self, series_id: str) -> int: ...
    def sync(self, ticket: int) -> None: ...  # durable up to `ticket` (per the fsync policy)
    def fail(self, reason: str) -> None: ...  # refuse every change from now on (until a restart)


BACKENDS = ("torch", "triton", "onnx", "auto")
EXPORT_CHUNK = 1024  # rows copied from the pool to the host at a time
SCRATCH_SLOTS = 256  # rows of the pool for forecasts and POST /forecast (series per batch)


def resolve_backend(name: str, device: torch.device) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if name == "onnx" and device.type != "cpu":
        raise ValueError("the onnx backend runs on the CPU (--device cpu)")
    return name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


class SlotPool:
    """The triton backend's states: a RimerState of preallocated rows (slots) on the device."""

    def __init__(self, model: Rimer, capacity: int, scratch: int, graphs: bool):
        device = model.head.weight.device
        self.pool = RimerState.zeros(model.cfg, capacity + scratch + 1, device)
        self.scratch = torch.arange(capacity, capacity + scratch, device=device)
        self.spare = capacity + scratch  # padding rows of CUDA-graph batches name this slot
        self.free = list(range(capacity - 1, -1, -1))
        self.slot: OrderedDict[str, int] = OrderedDict()  # series on the device, LRU first
        self.length: dict[str, int] = {}  # points seen, on the host: every series, any tier
        self.touched: dict[str, float] = {}  # time.monotonic() of the last request
        self.lock = threading.RLock()  # re-entrant: a batch holds it around several appends
        from runtime.pool import PoolRunner  # (Triton: the triton backend's dependency only)

        self.runner = PoolRunner(model)  # append_slots, step_slots, forecast_slots on self.pool
        self.graphs = None
        if graphs:
            from runtime.graphs import StepGraphs
            self.graphs = StepGraphs(self.runner, self.pool, self.spare)

    def rows(self, slots: list[int]) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.int64, device=self.pool.tail.device)


def appends_are_batch_invariant(model: Rimer) -> bool:
    """Whether `model.append` computes every series' new state bit for bit as it does alone, in
    a batch of series of uneven lengths (patches in the chunked graph and one at a time), then
    again with one completing patch each from those states. A check of this machine's kernels,
    not a proof for every batch: a few hundred ms at start."""
    device, cfg = model.head.weight.device, model.cfg
    p, g = cfg.patch_len, torch.Generator().manual_seed(0)
    # (a sinusoidal position table covers max_positions patches: the check stays inside it)
    most = cfg.max_positions - 1 if cfg.pos_emb == "sinusoidal" else 20
    if most < 1:
        return False  # (a table of one patch: no room for the check; assume not invariant)
    patches = tuple(min(k, most) for k in (1, 2, 5, 17, 20, 3, 16, 1, 9))
    values = [torch.randn(k * p + k % p, generator=g) * 3 + 10 for k in patches]
    states = RimerState.zeros(cfg, len(values), device)
    for _ in range(2):
        batched = model.append(states, values)
        rows = batched.tensors()
        for b, v in enumerate(values):
            alone = model.append(states.select([b]), [v]).tensors()
            if any(not torch.equal(alone[f], rows[f][b:b + 1]) for f in alone):
                return False
        states = batched
        tails = states.tail_len.tolist()
        values = [torch.randn(p - t, generator=g) for t in tails]  # each completes one patch
    return True


class Engine:
    def __init__(self, model: Rimer, manifest: dict, max_series: int, backend: str = "torch",
                 scratch_slots: int = SCRATCH_SLOTS, cuda_graphs: bool | None = None,
                 capacity: int | None = None, host_capacity: int = 0,
                 spill_dir: str | None = None):
        """`max_series` bounds the series held in all tiers; `capacity` (default: max_series)
        the states on the model's device; past it the least recently used spill to host memory
        (`host_capacity` states) and then to files in `spill_dir` (default: a temporary one)."""
        self.model = model
        self.manifest = manifest
        self.name = str(manifest.get("name", "rimer"))
        self.device = model.head.weight.device
        self.max_series = max_series
        self.capacity = max_series if capacity is None else max(1, min(capacity, max_series))
        self.backend = resolve_backend(backend, self.device)
        if self.backend == "onnx" and model.network_runtime is None:
            raise ValueError("the onnx backend needs the model's ONNX graph attached "
                             "(Engine.load does it: model.onnx_network.OnnxNetwork)")
        # Whether appends give a series the same bits in a batch as alone: then they are computed
        # batched even with a write-ahead log, and the log is replayed in batches. The onnx
        # backend: checked on this machine at start (torch's CPU products are not); triton: its
        # kernels are row-invariant by construction (tests/test_pool_batch.py, on the GPU too).
        self.batch_invariant = self.backend == "triton" or (
            self.backend == "onnx" and appends_are_batch_invariant(model))
        if self.backend == "onnx" and not self.batch_invariant:
            log.warning("ONNX Runtime's results depend on the batch size on this machine: with "
                        "--data-dir, appends that complete a patch are computed one series at a "
                        "time (as the log's replay does)")
        self.spill: SpillTiers | None = None
        self._temp_spill_dir: str | None = None
        if self.capacity < max_series:
            if spill_dir is None:
                spill_dir = self._temp_spill_dir = tempfile.mkdtemp(prefix="rimer-spill-")
            self.spill = SpillTiers(host_capacity, spill_dir)
        self.cache_stats = {"hits": 0, "misses": 0, "expired": 0}
        self._series: dict[str, SeriesEntry] = {}
        self._resident: OrderedDict[str, None] = OrderedDict()  # torch: states on the device, LRU
        self._table_lock = threading.Lock()
        self.state_bytes = RimerState.zeros(model.cfg, 1).nbytes_per_series()
        self._pool: SlotPool | None = None
        self.journal: Journal | None = None  # set by service.store once recovery is done
        # Per-series metadata of the HTTP layer (service/timeline.py), opaque here: set with the
        # append that carries it, under the journal's lock, logged with it, dropped on delete.
        self.meta: dict[str, dict] = {}
        if self.backend == "triton":
            if cuda_graphs is None:
                cuda_graphs = self.device.type == "cuda"
            self._pool = SlotPool(model, self.capacity, scratch_slots, cuda_graphs)

    @classmethod
    def load(cls, weights: str, device: str, max_series: int, backend: str = "auto",
             **cache) -> Engine:
        model, manifest = checkpoint.load(weights, resolve_device(device))
        chosen = resolve_backend(backend, model.head.weight.device)
        if backend == "auto" and chosen == "torch":  # on the CPU: onnx where a graph is shipped
            from model.onnx_network import graph_path
            chosen = "onnx" if graph_path(weights).is_file() else "torch"
            if chosen == "torch":
                log.info("no ONNX graph beside %s: serving with the torch backend", weights)
        if chosen == "onnx":
            from model.onnx_network import OnnxNetwork, OnnxNetworkError
            try:
                model.network_runtime = OnnxNetwork.for_checkpoint(model, weights,
                                                                   torch.get_num_threads())
            except OnnxNetworkError as exc:
                if backend == "onnx":
                    raise
                log.warning("serving with the torch backend: %s", exc)
                chosen = "torch"
        return cls(model, manifest, max_series, chosen, **cache)

    def close(self) -> None:
        """Remove a temporary spill directory."""
        if self._temp_spill_dir is not None:
            shutil.rmtree(self._temp_spill_dir, ignore_errors=True)

    @property
    def patch_len(self) -> int:
        return self.model.cfg.patch_len

    @property
    def series_held(self) -> int:
        """Streaming series held now (read without a lock: a gauge, not a decision)."""
        return len(self._pool.length) if self._pool is not None else len(self._series)

    def held_length(self, series_id: str) -> int | None:
        """The series' length, or None if it is not held; a lock-free read (a dict lookup under
        the GIL), for the HTTP layer's checks on the event loop: a batch in flight may change it."""
        if self._pool is not None:
            return self._pool.length.get(series_id)
        entry = self._series.get(series_id)
        return None if entry is None or entry.length == 0 else entry.length

    @property
    def cache_sizes(self) -> dict[str, int]:
        """States per tier now (a gauge, read without a lock)."""
        device = len(self._pool.slot) if self._pool is not None else len(self._resident)
        tiers = self.spill.tier_sizes() if self.spill is not None else {"host": 0, "disk": 0}
        return {"device": device, **tiers}

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
        return self._forecasts(state, horizon)

    def _forecasts(self, state: RimerState, horizon: int) -> list:
        """The forecasts of the series of `state` (functional states), as Forecasts."""
        return forecasts(self.model, state.calib,
                         lambda q: self.model.forecast(state, horizon, quantiles=q))

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

    def _on_device(self, series_id: str, entry: SeriesEntry) -> RimerState:
        """The series' state on the device, taken back from a lower tier if spilled; the caller
        holds `entry.lock` (so no one else moves it). Call `_shrink` once the lock is let go."""
        return self._on_device_all({series_id: entry})[series_id]

    def _on_device_all(self, entries: dict[str, SeriesEntry]) -> dict[str, RimerState]:
        """`_on_device` for many entries (their locks held), under one hold of the table lock."""
        with self._table_lock:
            resident, now, states, misses = self._resident, time.monotonic(), {}, 0
            try:
                for series_id, entry in entries.items():
                    if entry.state is None:
                        try:
                            entry.set_state(self.spill.take(series_id).to(self.device))
                        except SpillError as exc:
                            raise EngineError(500, str(exc), "id") from exc
                        misses += 1
                    if series_id in resident:
                        resident.move_to_end(series_id)
                    else:
                        resident[series_id] = None
                    entry.touched = now
                    states[series_id] = entry.state
            finally:
                self.cache_stats["misses"] += misses
                self.cache_stats["hits"] += len(states) - misses
            return states

    def _shrink(self) -> None:
        """Torch: spill least recently used states until the device holds `capacity`; states
        in use (their lock held) stay, so a batch may exceed the capacity while it runs."""
        if self.spill is None:
            return
        with self._table_lock:
            over = len(self._resident) - self.capacity
            for series_id in list(self._resident):
                if over <= 0:
                    break
                entry = self._series.get(series_id)
                if entry is None or entry.state is None:
                    self._resident.pop(series_id, None)
                    continue
                if entry.length == 0 or not entry.lock.acquire(blocking=False):
                    continue
                try:
                    self.spill.put(series_id, self._folded(entry))
                    entry.pending = []
                    entry.state = None
                    del self._resident[series_id]
                    over -= 1
                finally:
                    entry.lock.release()

    def append(self, series_id: str, values: list[float], horizon: int | None,
               meta: dict | None = None) -> tuple[int, list[float] | None]:
        """Append `values` (and forecast `horizon` points after them); `meta`, when given,
        replaces the series' metadata in the same logged step."""
        self._require_streamable()
        if self._pool is not None:
            length, mean, ticket = self._pool_append(series_id, values, horizon, meta)
        else:
            length, mean, ticket = self._torch_append(series_id, values, horizon, meta)
        if ticket is not None:
            self.journal.sync(ticket)  # outside the engine's locks: concurrent appends share fsyncs
        return length, mean

    def _journal_lock(self) -> AbstractContextManager:
        return self.journal.lock if self.journal is not None else nullcontext()

    def _torch_append(self, series_id: str, values: list[float], horizon: int | None,
                      meta: dict | None = None) -> tuple[int, list[float] | None, int | None]:
        try:
            return self._torch_append_resident(series_id, values, horizon, meta)
        finally:
            self._shrink()

    def _torch_append_resident(self, series_id: str, values: list[float], horizon: int | None,
                               meta: dict | None) -> tuple[int, list[float] | None, int | None]:
        while True:
            entry = self._entry(series_id, create=True)
            with entry.lock:
                if self._series.get(series_id) is not entry:
                    continue  # deleted meanwhile: start again on a new series
                try:
                    state = self._on_device(series_id, entry)
                    length = entry.length + len(values)
                    self._check_positions(length, "values")
                    if horizon is not None:
                        self.check_forecastable(length, horizon, "horizon")
                    new_state, mean, ticket = None, None, None
                    if horizon is not None or not self._tail_only(entry.length, length):
                        new_state = self.model.append(state, [torch.tensor(
                            entry.pending + values, dtype=torch.float32)])
                        mean = self._forecasts(new_state, horizon)[0] if horizon else None
                    with self._journal_lock():
                        if self._series.get(series_id) is not entry:
                            continue  # deleted while we computed: start again on a new series
                        if self.journal is not None:
                            ticket = self.journal.write_append(series_id, values, length, meta)
                        if new_state is None:
                            entry.pending.extend(values)
                            entry.length = length
                        else:
                            entry.set_state(new_state)
                        self._set_meta(series_id, meta)
                        entry.touched = time.monotonic()  # (idle since it ends, not since it began)
                except BaseException:
                    self._forget_if_empty(series_id, entry)
                    raise
                return length, mean, ticket

    def _tail_only(self, before: int, after: int) -> bool:
        """No patch completes between these lengths: the append is a copy into the tail."""
        return before // self.patch_len == after // self.patch_len

    def _folded(self, entry: SeriesEntry) -> RimerState:
        """The entry's state with its pending points in the tail (a new state; entry unchanged)."""
        if not entry.pending:
            return entry.state
        return self._append_tails([entry.state], [entry.pending])[0]

    def _append_tails(self, states: list[RimerState], values: list[list[float]]
                      ) -> list[RimerState]:
        """Append points that complete no patch to each state, in one model call per chunk: the
        matrices are neither read nor changed, so only the small fields go through the model."""
        out = []
        for a in range(0, len(states), EXPORT_CHUNK):
            old = states[a:a + EXPORT_CHUNK]
            fields = [f for f in old[0].tensors() if f != "wkv"]  # (history etc. where the model has them)
            small = {f: torch.cat([getattr(s, f) for s in old]) for f in fields}
            new = self.model.append(RimerState(wkv=None, **small),
                                    [torch.tensor(v, dtype=torch.float32)
                                     for v in values[a:a + EXPORT_CHUNK]])
            rows = {f: t.split(1) for f, t in new.tensors().items()}
            out += [RimerState(wkv=s.wkv, **{f: rows[f][b] for f in fields})
                    for b, s in enumerate(old)]
        return out

    def _set_meta(self, series_id: str, meta: dict | None) -> None:
        if meta is not None:
            self.meta[series_id] = meta

    def _forget_if_empty(self, series_id: str, entry: SeriesEntry) -> None:
        """Undo the creation of a series whose first append was rejected."""
        with self._table_lock:
            if self._series.get(series_id) is entry and entry.length == 0:
                del self._series[series_id]
                self._resident.pop(series_id, None)

    def forecast_series(self, series_id: str, horizon: int) -> tuple[int, list[float]]:
        self._require_streamable()
        if self._pool is not None:
            return self._pool_forecast_series(series_id, horizon)
        entry = self._entry(series_id, create=False)
        try:
            with entry.lock:
                if self._series.get(series_id) is not entry:
                    raise EngineError(404, f"unknown series {series_id!r}", "id")
                length = entry.length
                self.check_forecastable(length, horizon, "horizon")
                self._on_device(series_id, entry)
                if entry.pending:
                    with self._journal_lock():  # a snapshot reads pending under this lock
                        entry.set_state(self._folded(entry))
                mean = self._forecasts(entry.state, horizon)[0]
                entry.touched = time.monotonic()
                return length, mean
        finally:
            self._shrink()

    def describe(self, series_id: str) -> dict:
        """A series' length and state size; a read like a forecast, so it counts as a touch
        for idle expiry (`--idle-expiry-s` deletes series no request touched)."""
        if self._pool is not None:
            with self._pool.lock:
                length = self._pool.length.get(series_id)
                if length is not None:
                    self._pool.touched[series_id] = time.monotonic()
            if length is None:
                raise EngineError(404, f"unknown series {series_id!r}", "id")
        else:
            entry = self._entry(series_id, create=False)
            entry.touched = time.monotonic()
            length = entry.length
        return {"id": series_id, "length": length, "model": self.name,
                "state_bytes": self.state_bytes, "patches": length // self.patch_len,
                "tail_points": length % self.patch_len}

    def delete(self, series_id: str, idle_since: float | None = None) -> None:
        """Forget a series; with `idle_since` (expiry), only if not touched since then (409)."""
        ticket = None
        if self._pool is not None:
            sp = self._pool
            with sp.lock, self._journal_lock():
                if series_id not in sp.length:
                    raise EngineError(404, f"unknown series {series_id!r}", "id")
                if idle_since is not None and sp.touched.get(series_id, 0.0) >= idle_since:
                    raise EngineError(409, f"series {series_id!r} is no longer idle", "id")
                if self.journal is not None:
                    ticket = self.journal.write_delete(series_id)
                slot = sp.slot.pop(series_id, None)
                if slot is not None:
                    sp.free.append(slot)
                elif self.spill is not None:
                    self.spill.drop(series_id)
                del sp.length[series_id]
                sp.touched.pop(series_id, None)
                self.meta.pop(series_id, None)
        else:
            entry = self._entry(series_id, create=False)
            # The entry's lock: a batch (apply_batch) holding it computes on this series.
            with entry.lock, self._journal_lock():
                if self._series.get(series_id) is not entry:
                    raise EngineError(404, f"unknown series {series_id!r}", "id")
                if idle_since is not None and entry.touched >= idle_since:
                    raise EngineError(409, f"series {series_id!r} is no longer idle", "id")
                if self.journal is not None:
                    ticket = self.journal.write_delete(series_id)
                with self._table_lock:
                    self._series.pop(series_id, None)
                    self._resident.pop(series_id, None)
                    if entry.state is None and self.spill is not None:
                        self.spill.drop(series_id)
                self.meta.pop(series_id, None)
        if ticket is not None:
            self.journal.sync(ticket)

    def expire_idle(self, max_idle_s: float) -> list[str]:
        """Delete (through the log, like DELETE) the series no request touched for `max_idle_s`
        seconds; their ids. A series touched meanwhile is kept."""
        cutoff = time.monotonic() - max_idle_s
        if self._pool is not None:
            with self._pool.lock:
                idle = [i for i, t in self._pool.touched.items() if t < cutoff]
        else:
            with self._table_lock:
                idle = [i for i, e in self._series.items() if e.length > 0 and e.touched < cutoff]
        expired = []
        for series_id in idle:
            try:
                self.delete(series_id, idle_since=cutoff)
            except EngineError:  # deleted or touched meanwhile
                continue
            expired.append(series_id)
        self.cache_stats["expired"] += len(expired)
        return expired

    # ---- batches: many series' appends and forecasts in one call (service/scheduler.py) -----

    def list_series(self, limit: int, after: str | None = None) -> list[tuple[str, int]]:
        """Up to `limit` (id, length) pairs in id order, ids after `after` (a cursor)."""
        if self._pool is not None:
            with self._pool.lock:
                held = dict(self._pool.length)
        else:
            with self._table_lock:
                entries = list(self._series.items())
            held = {i: e.length for i, e in entries}
        ids = sorted(i for i, n in held.items() if n > 0 and (after is None or i > after))
        return [(i, held[i]) for i in ids[:limit]]

    def apply_batch(self, requests: list[list[Op]]) -> list[list[tuple[int, list[float] | None]]
                                                             | EngineError]:
        """Apply several requests, each a list of `Op`s, in order; per request, its results or
        the EngineError that rejected it whole (a rejected request changes nothing, and does not
        affect the others). Ops on one series apply in the order given (request order, then op
        order). Torch: one `model.append` per round (the k-th op of every series), one
        `model.forecast` per horizon; triton: batched on the pool under its lock
        (`_pool_batch`)."""
        try:
            self._require_streamable()
        except EngineError as exc:
            return [exc for _ in requests]
        if self._pool is not None:
            results, ticket = self._pool_batch(requests)
        else:
            results, ticket = self._torch_batch(requests)
        if ticket is not None:
            try:
                self.journal.sync(ticket)  # outside the engine's locks
            except EngineError as exc:
                return [exc for _ in requests]
        return results

    def _plan(self, requests: list[list[Op]], lengths: Mapping[str, int],
              held: int) -> dict[int, EngineError]:
        """Check every request against the lengths its predecessors in the batch leave (nothing
        changes here); the rejected ones, by index. Sets each accepted op's `length`. `lengths`:
        of the series held now (one missing from it is not held)."""
        length_of = lengths.get
        sim: dict[str, int | None] = {}
        errors: dict[int, EngineError] = {}
        positions_end = self._positions_end()
        for r, ops in enumerate(requests):
            local: dict[str, int | None] = {}
            created = 0
            try:
                for op in ops:
                    sid = op.series_id
                    cur = local[sid] if sid in local else sim[sid] if sid in sim else length_of(sid)
                    if op.values is None:  # forecast only
                        if cur is None:
                            raise EngineError(404, f"unknown series {sid!r}", op.field("id"))
                        self.check_forecastable(cur, op.horizon, op.field("horizon"))
                        op.length = cur
                        continue
                    if cur is None:
                        if held + created >= self.max_series:
                            raise EngineError(409, f"the service holds its maximum of "
                                                   f"{self.max_series} series; delete some first",
                                              op.field("id"))
                        created, cur = created + 1, 0
                    new = cur + len(op.values)
                    if op.horizon is not None:
                        self.check_forecastable(new, op.horizon, op.field("horizon"))
                    if new >= positions_end:
                        self._check_positions(new, op.field("values"))
                    local[sid] = op.length = new
            except EngineError as exc:
                errors[r] = exc.with_traceback(None)  # (no frame kept: no cycle through the batch)
                continue
            sim.update(local)
            held += created
        return errors

    def _lock_entries(self, requests: list[list[Op]]) -> tuple[dict[str, SeriesEntry], list, set]:
        """The entries of every series named, locked (in id order); placeholders for new series
        an append names. Returns (entries, locks held, ids of placeholders created here)."""
        appended = {op.series_id for ops in requests for op in ops if op.values is not None}
        named = sorted({op.series_id for ops in requests for op in ops})
        while True:
            entries, created = {}, set()
            with self._table_lock:
                for sid in named:
                    entry = self._series.get(sid)
                    if entry is None and sid in appended:
                        state = RimerState.zeros(self.model.cfg, 1, self.device)
                        entry = self._series[sid] = SeriesEntry(state, threading.Lock())
                        created.add(sid)
                    if entry is not None:
                        entries[sid] = entry
            locks = [entry.lock for entry in entries.values()]  # (in id order, as `named`)
            for lock in locks:
                lock.acquire()
            table = self._series
            for sid, entry in entries.items():
                if table.get(sid) is not entry:
                    break
            else:
                return entries, locks, created
            for lock in reversed(locks):  # one was deleted meanwhile: start again
                lock.release()

    def _torch_batch(self, requests: list[list[Op]]):
        try:
            return self._torch_batch_locked(requests)
        finally:
            self._shrink()

    def _torch_batch_locked(self, requests: list[list[Op]]):
        entries, locks, created = self._lock_entries(requests)
        results: list = [None] * len(requests)
        ticket = None
        try:
            lengths = {sid: e.length for sid, e in entries.items()}
            for sid in created:  # (placeholders: not held until an append is applied)
                del lengths[sid]
            held = len(self._series) - len(created)
            errors = self._plan(requests, lengths, held)
            accepted = [r for r in range(len(requests)) if r not in errors]
            for r, exc in errors.items():
                results[r] = exc
            rounds = _rounds([op for r in accepted for op in requests[r]])
            states = self._on_device_all(entries)
            # (the rounds rebind these lists, never change them: the entries stay as they are
            # until every computation has succeeded)
            pending = {sid: e.pending for sid, e in entries.items()}
            for ops in rounds:
                self._torch_round(ops, states, pending)
            with self._journal_lock():
                now, journal = time.monotonic(), self.journal
                for r in accepted:
                    done = []
                    try:
                        for op in requests[r]:
                            entry, values = entries[op.series_id], op.values
                            if values is not None:
                                if journal is not None:
                                    ticket = journal.write_append(op.series_id, values,
                                                                  op.length, op.meta)
                                self._set_meta(op.series_id, op.meta)
                            if op.state is not None:  # computed: pending points folded in
                                entry.set_state(op.state, op.length)
                            elif values is not None:  # deferred: a copy into the tail
                                entry.pending.extend(values)
                                entry.length = op.length
                            entry.touched = now
                            done.append((op.length, op.mean))
                    except EngineError as exc:  # the log broke: what it holds stays applied
                        results[r] = exc
                        for rest in accepted[accepted.index(r) + 1:]:
                            results[rest] = exc
                        break
                    results[r] = done
        finally:
            for lock in reversed(locks):
                lock.release()
            for sid in created:
                self._forget_if_empty(sid, entries[sid])
        return results, ticket

    def _torch_round(self, ops: list[Op], states: dict[str, RimerState],
                     pending: dict[str, list[float]]) -> None:
        """At most one op per series. An append that completes no patch and asks no forecast is
        deferred (its points join `pending`; `op.state` stays None). The others, and forecasts
        of series with pending points, compute their state from the pending points and their
        own: one model call for those that complete no patch (the matrices are neither read
        nor changed), one for those that do; then forecasts, one call per horizon. Sets
        `op.state` and `op.mean`; `states` and `pending` move on."""
        computed: list[tuple[Op, list[float]]] = []
        for op in ops:
            sid, values = op.series_id, op.values
            if values is None:
                if pending[sid]:
                    computed.append((op, pending[sid]))
                    pending[sid] = []
            elif op.horizon is None and self._tail_only(op.length - len(values), op.length):
                pending[sid] = pending[sid] + values
            else:
                computed.append((op, pending[sid] + values))
                pending[sid] = []

        def tensors(group):
            return [torch.tensor(v, dtype=torch.float32) for _, v in group]

        tail_only, stepped = [], []
        for op, v in computed:
            (tail_only if self._tail_only(op.length - len(v), op.length) else stepped).append((op, v))
        if tail_only:
            new = self._append_tails([states[op.series_id] for op, _ in tail_only],
                                     [v for _, v in tail_only])
            for (op, _), state in zip(tail_only, new):
                op.state = state
        if stepped:
            if self.journal is not None and not self.batch_invariant:
                # The log is replayed one append at a time; torch's CPU matrix products differ in
                # the last bits with the batch size, so compute as replay will (bit-identical
                # recovery). (With 31 of a 1,000-series bulk append completing a patch, 31 calls.)
                for op, v in stepped:
                    op.state = self.model.append(states[op.series_id], tensors([(op, v)]))
            else:
                out = self.model.append(RimerState.cat([states[op.series_id] for op, _ in stepped]),
                                        tensors(stepped))
                rows = {f: t.split(1) for f, t in out.tensors().items()}
                for b, (op, _) in enumerate(stepped):
                    op.state = RimerState(**{f: rows[f][b] for f in rows})
        for op, _ in computed:
            states[op.series_id] = op.state
        by_horizon: dict[int, list[Op]] = {}
        for op in ops:
            if op.horizon is not None:
                by_horizon.setdefault(op.horizon, []).append(op)
        for horizon, group in by_horizon.items():
            batch = RimerState.cat([states[op.series_id] for op in group])
            means = self._forecasts(batch, horizon)
            for op, mean in zip(group, means):
                op.mean = mean

    def _pool_batch(self, requests: list[list[Op]]):
        """Triton: checked whole like torch, then applied batched under the pool's lock (nothing
        else comes between the check and the changes). Every series named is brought onto the
        device first; with a journal the appends are then written to the log (write-ahead: what
        a broken log refuses is never computed, and what it holds is applied, as on torch);
        then each round (the k-th op of every series) is one copy into the tails for the
        appends that complete no patch, one `step_slots` by CUDA-graph replay for those that
        complete one, one `append_slots` for the others, and one `forecast_slots` per horizon.
        Each series takes the path it would take alone (`_pool_append`) and the kernels are
        batch-invariant, so the bits are the same as op by op. A batch naming more series than
        the device holds is applied op by op."""
        sp = self._pool
        with sp.lock:
            errors = self._plan(requests, sp.length, len(sp.length))
            results: list = [errors.get(r) for r in range(len(requests))]
            accepted = [r for r in range(len(requests)) if r not in errors]
            named = list(dict.fromkeys(op.series_id for r in accepted for op in requests[r]))
            if len(named) > self.capacity:
                return self._pool_batch_by_op(requests, results, accepted)
            slots, created, unreadable = self._pool_bring(named)
            if unreadable:  # a spilled state could not be read: the requests naming it fail,
                for r in accepted:  # and the others are planned again without them
                    bad = next((op for op in requests[r] if op.series_id in unreadable), None)
                    if bad is not None:
                        exc = unreadable[bad.series_id]
                        results[r] = EngineError(exc.status, exc.message, bad.field("id"))
                keep = [r for r in accepted if results[r] is None]
                again = self._plan([requests[r] for r in keep], sp.length, len(sp.length))
                for i, exc in again.items():
                    results[keep[i]] = exc
                accepted = [r for i, r in enumerate(keep) if i not in again]
            todo, accepted, ticket = self._pool_log(requests, results, accepted)
            used = {op.series_id for op in todo}
            for sid in [s for s in created if s not in used]:  # refused after all: no slot kept
                sp.free.append(sp.slot.pop(sid))
                sp.touched.pop(sid, None)
            created = [s for s in created if s in used]
            rounds = _rounds(todo)
            try:
                if created:
                    sp.pool.write_(sp.rows([slots[s] for s in created]),
                                   RimerState.zeros(self.model.cfg, len(created), self.device))
                for ops in rounds:
                    self._pool_round(ops, slots)
            except BaseException as exc:  # unexpected (the plan was checked)
                for sid in created:
                    if sid not in sp.length:
                        sp.free.append(sp.slot.pop(sid))
                        sp.touched.pop(sid, None)
                if ticket is not None:
                    # The log holds appends that may not all be applied: refuse changes until a
                    # restart rebuilds the states from it.
                    self.journal.fail(f"a batch failed after it was logged: {exc!r}")
                raise
            with self._journal_lock():
                self.meta.update({op.series_id: op.meta for op in todo if op.meta is not None})
                # (idle since it ends, not since it began)
                sp.touched.update(dict.fromkeys([op.series_id for op in todo], time.monotonic()))
            for r in accepted:
                results[r] = [(op.length, op.mean) for op in requests[r]]
        return results, ticket

    def _pool_bring(self, named: list[str]) -> tuple[dict[str, int], list[str], dict[str, EngineError]]:
        """A slot for each series (pool lock held; at most `capacity` of them): the resident
        first, so bringing back the spilled never spills one of them. Returns the slots, the
        series created (rows not yet zeroed) and the errors of states that could not be read."""
        sp = self._pool
        resident = [sid for sid in named if sid in sp.slot]
        slots: dict[str, int] = self._pool_hits(resident)
        created = [sid for sid in resident if sid not in sp.length]  # (none while consistent)
        unreadable: dict[str, EngineError] = {}
        try:
            for sid in [s for s in named if s not in slots]:
                new = sid not in sp.length
                try:
                    slots[sid] = self._pool_slot(sid, new)
                except EngineError as exc:
                    unreadable[sid] = exc
                    continue
                if new:
                    created.append(sid)
        except BaseException:  # e.g. spilling a state failed: no slot kept for a new series
            for sid in created:
                sp.free.append(sp.slot.pop(sid))
                sp.touched.pop(sid, None)
            raise
        return slots, created, unreadable

    def _pool_log(self, requests: list[list[Op]], results: list, accepted: list[int]
                  ) -> tuple[list[Op], list[int], int | None]:
        """Write the accepted requests' appends to the log, in order. Returns the ops to apply
        (with a journal: those before the log broke, as on torch, where a request the log breaks
        in keeps the ops written before), the requests to answer with results, and the last
        ticket. The requests from the break on are answered with its error."""
        todo = [op for r in accepted for op in requests[r]]
        if self.journal is None:
            return todo, accepted, None
        todo, ticket = [], None
        with self.journal.lock:
            for i, r in enumerate(accepted):
                try:
                    for op in requests[r]:
                        if op.values is not None:
                            ticket = self.journal.write_append(op.series_id, op.values,
                                                               op.length, op.meta)
                        todo.append(op)
                except EngineError as exc:
                    for rest in accepted[i:]:
                        results[rest] = exc
                    return todo, accepted[:i], ticket
        return todo, accepted, ticket

    def _pool_round(self, ops: list[Op], slots: dict[str, int]) -> None:
        """At most one op per series: the appends (one `append_slots`, whose rows are put back
        if it fails; the points of appends that complete no patch copied into the tails; graph
        replays where `_pool_append` would replay; lengths move on with the states), then
        forecasts, one `forecast_slots` per horizon, in chunks of the scratch rows. Sets
        `op.mean`."""
        sp, p = self._pool, self.patch_len
        tails, steps, longs = [], [], []
        for op in ops:
            if op.values:
                reach = sp.length.get(op.series_id, 0) % p + len(op.values)
                (tails if reach < p else steps if sp.graphs is not None and reach < 2 * p
                 else longs).append(op)
        if longs:
            held = sp.rows([slots[op.series_id] for op in longs if op.series_id in sp.length])
            before = sp.pool.select(held) if len(held) else None  # put back on a failure
            try:
                sp.runner.append_slots(sp.pool, sp.rows([slots[op.series_id] for op in longs]),
                                       [torch.tensor(op.values, dtype=torch.float32)
                                        for op in longs])
            except BaseException:
                if before is not None:
                    sp.pool.write_(held, before)
                raise
            sp.length.update({op.series_id: op.length for op in longs})
        if tails:
            self._pool_extend_tails(tails, slots)
            sp.length.update({op.series_id: op.length for op in tails})
        if steps:
            counts = [len(op.values) for op in steps]
            values = np.zeros((len(steps), max(counts)), dtype=np.float32)
            for b, op in enumerate(steps):
                values[b, : counts[b]] = op.values
            sp.graphs.run(sp.rows([slots[op.series_id] for op in steps]),
                          torch.from_numpy(values).to(self.device),
                          torch.tensor(counts, dtype=torch.int64, device=self.device))
            sp.length.update({op.series_id: op.length for op in steps})
        # The appends of no points too (a new series exists from its first).
        sp.length.update({op.series_id: op.length for op in ops if op.values == []})
        by_horizon: dict[int, list[Op]] = {}
        for op in ops:
            if op.horizon is not None:
                by_horizon.setdefault(op.horizon, []).append(op)
        room = len(sp.scratch)
        for horizon, group in by_horizon.items():
            for a in range(0, len(group), room):
                part = group[a:a + room]
                means = self._pool_forecasts(sp.rows([slots[op.series_id] for op in part]), horizon,
                                             sp.scratch[: len(part)])
                for op, mean in zip(part, means):
                    op.mean = mean

    def _pool_extend_tails(self, ops: list[Op], slots: dict[str, int]) -> None:
        """Appends that complete no patch: their points copied into the pool's tails (two
        indexed writes for the whole batch; `op.length` is the length after). Nothing else of a
        state changes then, and every path leaves a tail's unused points zero, so these are the
        bits the network's path would give (an exact copy), without running the network for rows
        that have nothing to compute (in a bulk append of one point, 31 in 32 series; a single
        append of under a patch too). The caller moves the host lengths on."""
        sp, p, dev = self._pool, self.patch_len, self.device
        row_of = [slots[op.series_id] for op in ops]
        rows = [slot for slot, op in zip(row_of, ops) for _ in op.values]
        cols = [(op.length - len(op.values) + k) % p for op in ops for k in range(len(op.values))]
        flat = [v for op in ops for v in op.values]
        sp.pool.tail[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)] = torch.tensor(
            flat, dtype=sp.pool.tail.dtype, device=dev)
        sp.pool.tail_len[sp.rows(row_of)] = torch.tensor(
            [op.length % p for op in ops], dtype=sp.pool.tail_len.dtype, device=dev)

    def _pool_batch_by_op(self, requests: list[list[Op]], results: list, accepted: list[int]):
        """The checked requests applied op by op (`_pool_append`; pool lock held): for a batch
        of more series than the device holds, which spill and come back one at a time."""
        ticket = None
        for r in accepted:
            done = []
            try:
                for op in requests[r]:
                    if op.values is None:
                        done.append(self._pool_forecast_series(op.series_id, op.horizon))
                        continue
                    length, mean, t = self._pool_append(op.series_id, op.values, op.horizon,
                                                        op.meta)
                    ticket = t if t is not None else ticket
                    done.append((length, mean))
            except EngineError as exc:
                done = exc
            results[r] = done
        return results, ticket

    # ---- every series' state, to and from the host (snapshots) ------------------------------

    def export_states(self, cut: Callable[[], Any] | None = None
                      ) -> tuple[list[str], list[RimerState], Any]:
        """Every series' id and state (on the host: a list of batches whose rows, in order, are the
        ids), and what `cut()` returned, called at the same instant: no append or delete falls
        between the states and the cut (the store rotates its log there). Spilled states are read
        from their tier (disk reads happen under the locks: appends wait for them)."""
        exclusive = self.journal.exclusive() if self.journal is not None else nullcontext()
        if self._pool is not None:
            sp = self._pool
            with sp.lock, exclusive:
                ids = list(sp.slot)
                slots = [sp.slot[i] for i in ids]
                chunks = [sp.pool.select(sp.rows(slots[a:a + EXPORT_CHUNK])).to("cpu")
                          for a in range(0, len(slots), EXPORT_CHUNK)]
                spilled = [i for i in sp.length if i not in sp.slot]
                chunks += self._peek_spilled(spilled)
                mark = cut() if cut is not None else None
            return ids + spilled, chunks, mark
        with exclusive:
            with self._table_lock:
                # States are never changed in place (an append swaps in a new one), so references
                # are a consistent copy; a series whose first append is in flight has none yet.
                held = [(i, e.state, list(e.pending)) for i, e in self._series.items()
                        if e.length > 0 and e.state is not None]
                spilled = [i for i, e in self._series.items() if e.length > 0 and e.state is None]
                chunks = self._peek_spilled(spilled)
            mark = cut() if cut is not None else None
        # Pending points folded in after the locks (states never change in place; the pending
        # lists are copies), all series at once.
        states = [s for _, s, _ in held]
        waiting = [k for k, (_, _, p) in enumerate(held) if p]
        for k, state in zip(waiting, self._append_tails([states[k] for k in waiting],
                                                        [held[k][2] for k in waiting])):
            states[k] = state
        return [i for i, _, _ in held] + spilled, [s.to("cpu") for s in states] + chunks, mark

    def _peek_spilled(self, ids: list[str]) -> list[RimerState]:
        try:
            return [RimerState.cat([self.spill.peek(i) for i in ids[a:a + EXPORT_CHUNK]])
                    for a in range(0, len(ids), EXPORT_CHUNK)]
        except SpillError as exc:
            raise EngineError(500, str(exc)) from exc

    def import_states(self, ids: list[str], states: RimerState) -> None:
        """Series from `export_states` (rows of `states`, in order, are `ids`) into an engine that
        holds none of them."""
        if len(ids) != states.batch or len(set(ids)) != len(ids):
            raise ValueError("import_states needs one state per id and distinct ids")
        if len(ids) + self.series_held > self.max_series:
            raise EngineError(409, f"{len(ids)} series to restore, but --max-series is "
                                   f"{self.max_series}", "id")
        lengths = states.length.tolist()
        now = time.monotonic()
        if self._pool is not None:
            sp = self._pool
            with sp.lock:
                if any(i in sp.length for i in ids):
                    raise ValueError("import_states: a series is held already")
                fit = min(len(ids), len(sp.free))  # the first ones on the device, the rest spill
                for a in range(0, fit, EXPORT_CHUNK):
                    slots = [sp.free.pop() for _ in range(min(EXPORT_CHUNK, fit - a))]
                    rows = list(range(a, a + len(slots)))
                    sp.pool.write_(sp.rows(slots), states.select(rows).to(self.device))
                    for i, slot in zip(ids[a:], slots):
                        sp.slot[i] = slot
                for row in range(fit, len(ids)):
                    self.spill.put(ids[row], states.select([row]))
                for i, n in zip(ids, lengths):
                    sp.length[i], sp.touched[i] = n, now
            return
        with self._table_lock:
            if any(i in self._series for i in ids):
                raise ValueError("import_states: a series is held already")
            for row, series_id in enumerate(ids):
                entry = SeriesEntry(None, threading.Lock(), lengths[row], now)
                if len(self._resident) < self.capacity:
                    entry.state = states.select([row]).to(self.device)
                    self._resident[series_id] = None
                else:
                    self.spill.put(series_id, states.select([row]))
                self._series[series_id] = entry

    # ---- triton backend: the states in a pool on the device --------------------------------

    def _positions_end(self) -> float:
        """The shortest length past the sinusoidal position table (infinity without one)."""
        cfg = self.model.cfg
        return (cfg.max_positions + 1) * cfg.patch_len if cfg.pos_emb == "sinusoidal" else math.inf

    def _check_positions(self, length: int, field: str) -> None:
        cfg = self.model.cfg
        if length >= self._positions_end():
            raise EngineError(422, f"this model's sinusoidal position embedding covers "
                                   f"{cfg.max_positions} patches of {cfg.patch_len} points; the "
                                   f"series would have {length} points", field)

    def _pool_append(self, series_id: str, values: list[float], horizon: int | None,
                     meta: dict | None = None) -> tuple[int, list[float] | None, int | None]:
        sp, p = self._pool, self.patch_len
        with sp.lock:
            # Every check first: past this point the pool changes.
            created = series_id not in sp.length
            if created and len(sp.length) >= self.max_series:
                raise EngineError(409, f"the service holds its maximum of {self.max_series} "
                                       "series; delete some first", "id")
            length = sp.length.get(series_id, 0)
            new_length = length + len(values)
            if horizon is not None:
                self.check_forecastable(new_length, horizon, "horizon")
            self._check_positions(new_length, "values")
            slot = self._pool_slot(series_id, created)
            rows = sp.rows([slot])
            vals = torch.tensor(values, dtype=torch.float32)
            # With a journal, keep the old state: a failed log write puts it back.
            before = sp.pool.select(rows) if self.journal is not None and not created else None
            ticket = None
            try:
                if created:
                    sp.pool.write_(rows, RimerState.zeros(self.model.cfg, 1, self.device))
                if values and length % p + len(values) < p:  # only the tail changes: copied
                    self._pool_extend_tails([Op(series_id, values, length=new_length)],
                                            {series_id: slot})
                elif values and sp.graphs is not None and length % p + len(values) < 2 * p:
                    sp.graphs.run(rows, vals[None].to(self.device),
                                  torch.tensor([len(values)], device=self.device))
                elif values:
                    if before is None and not created:
                        before = sp.pool.select(rows)
                    sp.runner.append_slots(sp.pool, rows, [vals])
                mean = self._pool_forecasts(rows, horizon, sp.scratch[:1])[0] if horizon else None
                with self._journal_lock():
                    if self.journal is not None:
                        ticket = self.journal.write_append(series_id, values, new_length, meta)
                    self._set_meta(series_id, meta)
            except BaseException:
                if created:
                    del sp.slot[series_id]
                    sp.free.append(slot)
                    sp.touched.pop(series_id, None)  # (else expiry would try it for ever)
                elif before is not None:  # unexpected failure: put the series' state back
                    sp.pool.write_(rows, before)
                raise
            sp.length[series_id] = new_length
            sp.touched[series_id] = time.monotonic()  # (idle since it ends, not since it began)
            return new_length, mean, ticket

    def _pool_hits(self, ids: list[str]) -> dict[str, int]:
        """The slots of series on the device (pool lock held), each made the most recently
        used and touched now."""
        sp = self._pool
        for sid in ids:
            sp.slot.move_to_end(sid)
        sp.touched.update(dict.fromkeys(ids, time.monotonic()))
        self.cache_stats["hits"] += len(ids)
        return {sid: sp.slot[sid] for sid in ids}

    def _pool_slot(self, series_id: str, created: bool = False) -> int:
        """The series' slot (pool lock held), after bringing it back to the device if spilled
        and spilling the least recently used series if no slot is free."""
        sp = self._pool
        if series_id in sp.slot:
            return self._pool_hits([series_id])[series_id]
        if not sp.free:
            victim, victim_slot = next(iter(sp.slot.items()))
            self.spill.put(victim, sp.pool.select(sp.rows([victim_slot])))
            del sp.slot[victim]
            sp.free.append(victim_slot)
        slot = sp.free.pop()
        if not created:
            try:
                state = self.spill.take(series_id)
            except SpillError as exc:
                sp.free.append(slot)
                raise EngineError(500, str(exc), "id") from exc
            sp.pool.write_(sp.rows([slot]), state.to(self.device))
            self.cache_stats["misses"] += 1
        sp.slot[series_id] = slot
        sp.touched[series_id] = time.monotonic()
        return slot

    def _pool_forecast_series(self, series_id: str, horizon: int) -> tuple[int, list[float]]:
        sp = self._pool
        with sp.lock:
            if series_id not in sp.length:
                raise EngineError(404, f"unknown series {series_id!r}", "id")
            length = sp.length[series_id]
            self.check_forecastable(length, horizon, "horizon")
            slot = self._pool_slot(series_id)
            mean = self._pool_forecasts(sp.rows([slot]), horizon, sp.scratch[:1])
            sp.touched[series_id] = time.monotonic()
            return length, mean[0]

    def _pool_forecast_histories(self, tensors: list[torch.Tensor], horizon: int) -> list[list[float]]:
        """In batches of the scratch slots: fresh states there, append, forecast (consuming them)."""
        sp, out = self._pool, []
        with sp.lock:
            for start in range(0, len(tensors), len(sp.scratch)):
                chunk = tensors[start:start + len(sp.scratch)]
                rows = sp.scratch[: len(chunk)]
                sp.pool.write_(rows, self.model.init_state(chunk))
                sp.runner.append_slots(sp.pool, rows, chunk)
                out += self._pool_forecasts(rows, horizon, rows)
        return out

    def _pool_forecasts(self, rows: torch.Tensor, horizon: int, scratch: torch.Tensor) -> list:
        """The forecasts of the pool's `rows` (rollouts in `scratch`), as Forecasts."""
        sp = self._pool
        calib = sp.pool.calib.index_select(0, rows) if sp.pool.calib is not None else None
        return forecasts(self.model, calib, lambda q: sp.runner.forecast_slots(
            sp.pool, rows, horizon, scratch, quantiles=q))
