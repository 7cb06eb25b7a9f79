"""The engine's public calls: one state store behind them, the journal, the series' metadata.

Every model computation goes through `model.Rimer`; the engine checks what a request may do
(`admission`), hands the batch to its store and makes the journal durable. Two stores, one
interface (`StateStore`): `ResidentStore` (torch, onnx: functional states per series) and
`SlotPoolStore` (triton: one pool of states on the device). A single append or forecast is a
batch of one: each store has one append path.

With a data directory (service/store.py) the engine has a `journal`: an accepted append or delete
is written to the write-ahead log under the journal's lock together with the state change it
records (so the log's order per series is the order of the changes, and a snapshot's cut, taken
under the same lock, falls between records), and made durable (`journal.sync`) before the call
returns, outside the stores' locks. `export_states` / `import_states` move every series' state
to and from the host for snapshots, whatever the backend."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import numpy as np
import torch

from model.rimer import Rimer
from model.state import RimerState
from service.cache import SpillError, SpillTiers
from service.distribution import forecasts
from service.engine import admission
from service.engine.loading import appends_are_batch_invariant, load_model, resolve_backend
from service.engine.ops import EXPORT_CHUNK, EngineError, Op, StateChunks
from service.engine.resident import ResidentStore
from service.engine.slot_pool import SCRATCH_SLOTS, SlotPoolStore

log = logging.getLogger("rimer.engine")
_NO_LOCK = nullcontext()  # (reusable: the journal's lock where there is no journal)


class Journal(Protocol):
    """What the engine needs of a write-ahead log (service/store.py's WriteAheadLog)."""

    lock: AbstractContextManager  # held around a record's write and the state change it records

    def exclusive(self) -> AbstractContextManager: ...  # no write or sync in progress while held
    def write_append(self, series_id: str, values: list[float], length: int,
                     meta: dict | None = None) -> int: ...
    def write_appends(self, ids: list[str], bounds: list[int], values: np.ndarray,
                      lengths: list[int], metas: list[dict | None]) -> int: ...  # one write
    def write_delete(self, series_id: str) -> int: ...
    def write_state(self, series_id: str, record: bytes) -> int: ...
    def sync(self, ticket: int) -> None: ...  # durable up to `ticket` (per the fsync policy)
    def fail(self, reason: str) -> None: ...  # refuse every change from now on (until a restart)


class StateStore(Protocol):
    """Where the streaming series' states live (resident.py, slot_pool.py)."""

    held: int  # series held, any tier
    on_device: int  # states on the model's device

    def held_length(self, series_id: str) -> int | None: ...
    def lengths(self) -> dict[str, int]: ...
    def touch(self, series_id: str) -> int: ...
    def idle(self, cutoff: float) -> list[str]: ...
    def state_of(self, series_id: str) -> RimerState: ...
    def forecast_histories(self, tensors: list[torch.Tensor], horizon: int) -> list: ...
    def apply(self, requests: list[list[Op]]) -> tuple[list, int | None]: ...
    def delete(self, series_id: str, idle_since: float | None) -> int | None: ...
    def export(self, exclusive: AbstractContextManager, cut: Callable[[], Any] | None): ...
    def import_(self, ids: list[str], states: RimerState, lengths: list[int], now: float) -> None: ...
    def import_new(self, series_id: str, state: RimerState, now: float,
                   log: Callable[[], int | None]) -> int | None: ...


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
        # kernels are row-invariant by construction (tests/unit/service/test_pool_batch.py, on the GPU too).
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
        self.state_bytes = RimerState.zeros(model.cfg, 1).nbytes_per_series()
        self.journal: Journal | None = None  # set by service.store once recovery is done
        # Per-series metadata of the HTTP layer (service/timeline.py), opaque here: set with the
        # append that carries it, under the journal's lock, logged with it, dropped on delete.
        self.meta: dict[str, dict] = {}
        if self.backend == "triton":
            graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
            self.store: StateStore = SlotPoolStore(self, scratch_slots, graphs)
        else:
            self.store = ResidentStore(self)

    @classmethod
    def load(cls, weights: str, device: str, max_series: int, backend: str = "auto", **cache) -> Engine:
        model, manifest, chosen = load_model(weights, device, backend)
        return cls(model, manifest, max_series, chosen, **cache)

    def close(self) -> None:
        """Remove a temporary spill directory."""
        if self._temp_spill_dir is not None:
            shutil.rmtree(self._temp_spill_dir, ignore_errors=True)

    # ---- what the stores share -------------------------------------------------------------

    def journal_lock(self) -> AbstractContextManager:
        return self.journal.lock if self.journal is not None else _NO_LOCK

    def set_meta(self, series_id: str, meta: dict | None) -> None:
        if meta is not None:
            self.meta[series_id] = meta

    def forecasts(self, state: RimerState, horizon: int) -> list:
        """The forecasts of the series of `state` (functional states), as Forecasts."""
        return forecasts(self.model, state.calib, lambda q: self.model.forecast(state, horizon, quantiles=q))

    def peek_spilled(self, ids: list[str]) -> list[RimerState]:
        try:
            return [RimerState.cat([self.spill.peek(i) for i in ids[a:a + EXPORT_CHUNK]])
                    for a in range(0, len(ids), EXPORT_CHUNK)]
        except SpillError as exc:
            raise EngineError(500, str(exc)) from exc

    def pin_spilled(self, ids: list[str]) -> list:
        """What `read_pinned` reads the spilled series' states from later (snapshots: cheap under
        the locks; the caller unpins them)."""
        if not ids:
            return []
        try:
            return self.spill.pin(ids)
        except SpillError as exc:
            raise EngineError(500, str(exc)) from exc

    def read_pinned(self, ids: list[str], pinned: list) -> list[RimerState]:
        try:
            return [self.spill.read_pinned(i, p) for i, p in zip(ids, pinned)]
        except SpillError as exc:
            raise EngineError(500, str(exc)) from exc

    # ---- reads -----------------------------------------------------------------------------

    @property
    def patch_len(self) -> int:
        return self.model.cfg.patch_len

    @property
    def series_held(self) -> int:
        """Streaming series held now (read without a lock: a gauge, not a decision)."""
        return self.store.held

    def held_length(self, series_id: str) -> int | None:
        """The series' length, or None if it is not held; a lock-free read (a dict lookup under
        the GIL), for the HTTP layer's checks on the event loop: a batch in flight may change it."""
        return self.store.held_length(series_id)

    @property
    def cache_sizes(self) -> dict[str, int]:
        """States per tier now (a gauge, read without a lock)."""
        tiers = self.spill.tier_sizes() if self.spill is not None else {"host": 0, "disk": 0}
        return {"device": self.store.on_device, **tiers}

    def check_forecastable(self, length: int, horizon: int, field: str) -> None:
        admission.check_forecastable(self.model.cfg, length, horizon, field)

    def describe(self, series_id: str) -> dict:
        """A series' length and state size; a read like a forecast, so it counts as a touch
        for idle expiry (`--idle-expiry-s` deletes series no request touched)."""
        length = self.store.touch(series_id)
        return {"id": series_id, "length": length, "model": self.name,
                "state_bytes": self.state_bytes, "patches": length // self.patch_len,
                "tail_points": length % self.patch_len}

    def recent_points(self, series_id: str) -> list[float]:
        """The last points the series' state holds (for plots: a state keeps no full history)."""
        return self.store.state_of(series_id).to("cpu").recent()

    def list_series(self, limit: int, after: str | None = None) -> list[tuple[str, int]]:
        """Up to `limit` (id, length) pairs in id order, ids after `after` (a cursor)."""
        held = self.store.lengths()
        ids = sorted(i for i, n in held.items() if n > 0 and (after is None or i > after))
        return [(i, held[i]) for i in ids[:limit]]

    # ---- forecasts and appends -------------------------------------------------------------

    def forecast_histories(self, histories: list[list[float]], horizon: int) -> list[list[float]]:
        for i, values in enumerate(histories):
            self.check_forecastable(len(values), horizon, f"series[{i}].values")
        return self.store.forecast_histories([torch.tensor(v, dtype=torch.float32) for v in histories],
                                             horizon)

    def append(self, series_id: str, values: list[float], horizon: int | None,
               meta: dict | None = None) -> tuple[int, list[float] | None]:
        """Append `values` (and forecast `horizon` points after them); `meta`, when given,
        replaces the series' metadata in the same logged step. A batch of one."""
        return self._one(Op(series_id, values, horizon, meta=meta))

    def defer_steps(self) -> bool:
        """Let bulk ingests answer before their patches are stepped, the steps taken by
        `settle_some` (service/engine/resident_defer.py): for the batcher's worker to call at
        start, which then settles them between requests. Only where a series' bits do not
        depend on its batch (the onnx backend's probe), so stepping later changes no bit;
        whether it is on."""
        if isinstance(self.store, ResidentStore) and self.batch_invariant:
            self.store.defer_steps = True
            return True
        return False

    @property
    def steps_deferred(self) -> int:
        """Series whose bulk-ingest steps wait (`defer_steps`)."""
        return len(getattr(self.store, "deferred_ids", ()))

    def settle_some(self, limit: int) -> int:
        """Take the deferred steps of up to `limit` series; how many (0: none waits)."""
        settle = getattr(self.store, "settle_some", None)
        return settle(limit) if settle is not None else 0

    def forecast_series(self, series_id: str, horizon: int) -> tuple[int, list[float]]:
        return self._one(Op(series_id, None, horizon))

    def _one(self, op: Op) -> tuple:
        [out] = self.apply_batch([[op]])
        if isinstance(out, EngineError):
            raise out
        return out[0]

    def apply_batch(self, requests: list[list[Op]]) -> list[list[tuple[int, list[float] | None]]
                                                             | EngineError]:
        """Apply several requests, each a list of `Op`s, in order; per request, its results or
        the EngineError that refused it whole (a refused request changes nothing, and does not
        affect the others). Ops on one series apply in the order given (request order, then op
        order)."""
        try:
            admission.require_streamable(self.model.cfg, self.name)
        except EngineError as exc:
            return [exc for _ in requests]
        results, ticket = self.store.apply(requests)
        if ticket is not None:
            try:
                self.journal.sync(ticket)  # outside the store's locks: concurrent appends share fsyncs
            except EngineError as exc:
                return [exc for _ in requests]
        return results

    def append_columns(self, ids: list[str], bounds: list[int], values: np.ndarray,
                       metas: list[dict], horizon: int | None = None, name: str = "ids"
                       ) -> tuple[list[int], list | None]:
        """The columnar bulk append: series `ids[i]` appends `values[bounds[i]:bounds[i + 1]]`
        (float64) and takes `metas[i]` as its metadata; all or nothing, like a request of
        `apply_batch`. Returns each series' length after it (and with `horizon`, its forecast),
        or raises the EngineError refusing it (its field `ids[i].id`, `ids[i].values`, ...;
        `name` for `ids`: the per-item form's `series[i]...`). Where each series is
        named once and no forecast is asked (a bulk ingest), the store applies the arrays
        without an `Op` per series (`ResidentStore.apply_columns`); else, and on the triton
        backend, one `Op` per run through `apply_batch`. The log gets the same records either
        way, so recovery does not know which path wrote them."""
        admission.require_streamable(self.model.cfg, self.name)
        columns = getattr(self.store, "apply_columns", None)
        if columns is None or horizon is not None or len(set(ids)) != len(ids):
            listed = values.tolist()
            ops = [Op(sid, listed[bounds[i]:bounds[i + 1]], horizon, f"{name}[{i}]", meta=metas[i])
                   for i, sid in enumerate(ids)]
            [out] = self.apply_batch([ops])
            if isinstance(out, EngineError):
                raise out
            return [length for length, _ in out], ([mean for _, mean in out] if horizon else None)
        lengths, ticket = columns(ids, bounds, values, metas, name)
        if ticket is not None:
            self.journal.sync(ticket)
        return lengths, None

    # ---- deletes ---------------------------------------------------------------------------

    def delete(self, series_id: str, idle_since: float | None = None) -> None:
        """Forget a series; with `idle_since` (expiry), only if not touched since then (409)."""
        ticket = self.store.delete(series_id, idle_since)
        if ticket is not None:
            self.journal.sync(ticket)

    def expire_idle(self, max_idle_s: float) -> list[str]:
        """Delete (through the log, like DELETE) the series no request touched for `max_idle_s`
        seconds; their ids. A series touched meanwhile is kept."""
        cutoff = time.monotonic() - max_idle_s
        expired = []
        for series_id in self.store.idle(cutoff):
            try:
                self.delete(series_id, idle_since=cutoff)
            except EngineError:  # deleted or touched meanwhile
                continue
            expired.append(series_id)
        self.cache_stats["expired"] += len(expired)
        return expired

    # ---- one series' state, to and from another replica (moving series between replicas) ----

    def export_series(self, series_id: str) -> tuple[RimerState, dict | None]:
        """The series' state now (on the host) and its metadata; 404 if it is not held. The
        caller keeps other requests on the series out meanwhile (the HTTP layer's series lock)."""
        state = self.store.state_of(series_id).to("cpu")
        return state, self.meta.get(series_id)

    def import_series(self, series_id: str, state: RimerState, meta: dict | None,
                      record: bytes, digest: str | None = None) -> bool:
        """Hold `state` (one series, from `export_series` on another engine of the same model)
        as `series_id`, logged as one state record (`record`: its checked bytes) before it is
        held. Idempotent: a series held already with the same state and metadata (its record's
        sha256 is `digest`) is left as it is (False, nothing logged); held with a different one
        is a 409, never overwritten. True when imported."""
        if state.batch != 1:
            raise ValueError("import_series takes one series' state")
        if self.store.held_length(series_id) is not None:
            from service.snapshots import series_record_sha256  # (snapshots imports the engine)
            if digest is None:
                digest = series_record_sha256(self, series_id, state, meta)
            held, held_meta = self.export_series(series_id)
            if series_record_sha256(self, series_id, held, held_meta) == digest:
                return False
            raise EngineError(409, f"series {series_id!r} is held here already with another state "
                                   "(appended to since it was exported, or another series of the "
                                   "same id): delete it first to replace it", "id")
        if self.series_held + 1 > self.max_series:
            raise EngineError(409, f"--max-series is {self.max_series} and as many are held", "id")

        def log() -> int | None:  # under the store's and the journal's locks, before it is held
            ticket = self.journal.write_state(series_id, record) if self.journal is not None else None
            self.set_meta(series_id, meta)
            return ticket

        ticket = self.store.import_new(series_id, state, time.monotonic(), log)
        if ticket is not None:
            self.journal.sync(ticket)
        return True

    # ---- every series' state, to and from the host (snapshots) ------------------------------

    def export_states(self, cut: Callable[[], Any] | None = None
                      ) -> tuple[list[str], StateChunks, Any]:
        """Every series' id and state, and what `cut()` returned, called at the same instant: no
        append or delete falls between the states and the cut (the store rotates its log there).
        The states come as `StateChunks`: host batches whose rows, in order, are the ids, each
        made when iterated to from what was taken under the locks (references to the states,
        never changed in place; the pool's rows copied on the device; links to spill files), so
        a snapshot streams them to its file holding one chunk on the host at a time. Close it
        when done (`with chunks:`)."""
        exclusive = self.journal.exclusive() if self.journal is not None else nullcontext()
        return self.store.export(exclusive, cut)

    def import_states(self, ids: list[str], states: RimerState) -> None:
        """Series from `export_states` (rows of `states`, in order, are `ids`) into an engine that
        holds none of them."""
        if len(ids) != states.batch or len(set(ids)) != len(ids):
            raise ValueError("import_states needs one state per id and distinct ids")
        if len(ids) + self.series_held > self.max_series:
            raise EngineError(409, f"{len(ids)} series to restore, but --max-series is "
                                   f"{self.max_series}", "id")
        self.store.import_(ids, states, states.length.tolist(), time.monotonic())
