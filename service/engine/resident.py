"""The torch and onnx backends' states: a dict id -> `SeriesEntry` of functional states.

An append computes the new state from the old one (`Rimer.append`) and swaps it in only once
every computation of its batch has succeeded, so a refused or failed append changes nothing.
States past `capacity` spill to the host and disk tiers (least recently used first). A lock per
series (taken in id order, so batches never wait for each other in a cycle) and one table lock."""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.state import RimerState
from service.cache import SpillError
from service.engine import admission
from service.engine.entries import SeriesEntry, acquire_all, append_tails, release_all
from service.engine.ops import EngineError, Op, rounds, unknown
from service.engine.resident_columns import columns_locked
from service.engine.resident_defer import settle_locked, settle_some, split_rows
from service.engine.resident_export import export_states
from service.engine.resident_tail import tail_append

if TYPE_CHECKING:
    from service.engine.facade import Engine

log = logging.getLogger("rimer.engine")

_lock_of = operator.attrgetter("lock")


class ResidentStore:
    """States as functional `RimerState`s per series (torch or ONNX Runtime computes them)."""

    def __init__(self, engine: Engine):
        self.e = engine
        self.cfg = engine.model.cfg
        self.series: dict[str, SeriesEntry] = {}
        self.resident: OrderedDict[str, None] = OrderedDict()  # states on the device, LRU first
        self.table_lock = threading.Lock()
        # Series with deferred steps (resident_defer.py), longest waiting first; its own lock.
        self.deferred_ids: dict[str, None] = {}
        self.deferred_points = 0  # points in their groups (bounded: resident_defer.MAX_POINTS)
        self.deferred_lock = threading.Lock()
        self.spill_failed_at = -1e9  # time.monotonic() of the last refused spill (`_shrink`)
        self.defer_steps = False  # set by the engine when the batcher's worker settles them

    # ---- reads -----------------------------------------------------------------------------

    def held_length(self, series_id: str) -> int | None:
        entry = self.series.get(series_id)
        return None if entry is None or entry.length == 0 else entry.length

    @property
    def held(self) -> int:
        return len(self.series)

    @property
    def on_device(self) -> int:
        return len(self.resident)

    def lengths(self) -> dict[str, int]:
        with self.table_lock:
            entries = list(self.series.items())
        return {i: e.length for i, e in entries}

    def touch(self, series_id: str) -> int:
        """The series' length, marked as used now (idle expiry); 404 if unknown."""
        entry = self.series.get(series_id)
        if entry is None:
            raise unknown(series_id)
        entry.touched = time.monotonic()
        return entry.length

    def state_of(self, series_id: str) -> RimerState:
        """The series' state as it is now (pending points folded in), wherever it is held."""
        entry = self.series.get(series_id)
        if entry is None:
            raise unknown(series_id)
        with entry.lock:
            if self.series.get(series_id) is not entry or entry.length == 0:
                raise unknown(series_id)
            if entry.state is None:
                return self.e.peek_spilled([series_id])[0]
            return self._folded(series_id, entry)

    def idle(self, cutoff: float) -> list[str]:
        with self.table_lock:
            return [i for i, e in self.series.items() if e.length > 0 and e.touched < cutoff]

    # ---- stateless forecasts ---------------------------------------------------------------

    def forecast_histories(self, tensors: list[torch.Tensor], horizon: int) -> list:
        state = self.e.model.append(self.e.model.init_state(tensors), tensors)
        return self.e.forecasts(state, horizon)

    # ---- batches ---------------------------------------------------------------------------

    def apply(self, requests: list[list[Op]]) -> tuple[list, int | None]:
        """Per request its results or the EngineError refusing it (the batch's rules:
        `Engine.apply_batch`), and the journal's last ticket."""
        if len(requests) == 1 and len(requests[0]) == 1:
            done = tail_append(self, requests[0][0])
            if done is not None:
                return done
        try:
            return self._apply_locked(requests)
        finally:
            self._shrink()

    def _apply_locked(self, requests: list[list[Op]]):
        entries, locks, created = self._lock_entries(requests)
        results: list = [None] * len(requests)
        ticket = None
        try:
            lengths, states, pending = self._on_device_all(entries, created)
            held = len(self.series) - len(created)
            errors = admission.plan(self.cfg, self.e.max_series, requests, lengths, held)
            if errors:
                accepted = [r for r in range(len(requests)) if r not in errors]
                for r, exc in errors.items():
                    results[r] = exc
            else:
                accepted = range(len(requests))
            flat = requests[0] if len(requests) == 1 and not errors else [
                op for r in accepted for op in requests[r]]
            for ops in rounds(flat):
                self._round(ops, states, pending)
            with self.e.journal_lock():
                now, journal, meta = time.monotonic(), self.e.journal, self.e.meta
                for r in accepted:
                    done = []
                    try:
                        for op in requests[r]:
                            entry, values = entries[op.series_id], op.values
                            if values is not None:
                                if journal is not None:
                                    ticket = journal.write_append(op.series_id, values, op.length, op.meta)
                                if op.meta is not None:
                                    meta[op.series_id] = op.meta
                            if op.state is not None:  # computed: pending points folded in
                                entry.set_state(op.state, op.length)
                            elif values is not None:  # deferred: a copy into the tail
                                entry.pending.extend(values)
                                entry.length = op.length
                            entry.touched = now
                            done.append((op.length, op.mean))
                    except EngineError as exc:  # the log broke: what it holds stays applied
                        results[r] = exc
                        for rest in accepted:
                            if rest > r:
                                results[rest] = exc
                        break
                    results[r] = done
        finally:
            release_all(locks)
            for sid in created:
                self._forget_if_empty(sid, entries[sid])
        return results, ticket

    def apply_columns(self, ids: list[str], bounds: list[int], values: np.ndarray,
                      metas: list[dict], name: str = "ids") -> tuple[list[int], int | None]:
        """`Engine.append_columns` where each id is named once and nothing is forecast: the
        lengths after it and the journal's ticket, or the EngineError refusing it whole. The
        same rules as `apply` on a request of one op per series (admission, deferred tail
        points, one model call for the series whose patch completes, the same log records),
        checked on arrays: an `Op` only for those series whose patch completes."""
        try:
            return columns_locked(self, ids, bounds, values, metas, name)
        finally:
            self._shrink()

    def _round(self, ops: list[Op], states: dict[str, RimerState], pending: dict[str, list[float]]) -> None:
        """At most one op per series. An append that completes no patch and asks no forecast is
        deferred (its points join `pending`; `op.state` stays None). The others, and forecasts
        of series with pending points, compute their state from the pending points and their
        own: one model call for those that complete no patch (the matrices are neither read
        nor changed), one for those that do; then forecasts, one call per horizon. Sets
        `op.state` and `op.mean`; `states` and `pending` move on."""
        model, cfg, p = self.e.model, self.cfg, self.cfg.patch_len
        computed: list[tuple[Op, list[float]]] = []
        forecasting = False
        for op in ops:
            sid, values = op.series_id, op.values
            if op.horizon is not None:
                forecasting = True
            if values is None:
                if pending[sid]:
                    computed.append((op, pending[sid]))
                    pending[sid] = []
            elif op.horizon is None and (op.length - len(values)) // p == op.length // p:
                pending[sid] = pending[sid] + values  # (admission.tail_only, inline: the hot path)
            else:
                computed.append((op, pending[sid] + values))
                pending[sid] = []
        if not computed and not forecasting:
            return  # (every append deferred: a bulk ingest's common case)

        def tensors(group):
            return [torch.tensor(v, dtype=torch.float32) for _, v in group]

        tail_only, stepped = [], []
        for op, v in computed:
            copied = admission.tail_only(cfg, op.length - len(v), op.length)
            (tail_only if copied else stepped).append((op, v))
        if tail_only:
            new = append_tails([states[op.series_id] for op, _ in tail_only],
                               [v for _, v in tail_only])
            for (op, _), state in zip(tail_only, new):
                op.state = state
        if stepped:
            if self.e.journal is not None and not self.e.batch_invariant:
                # The log is replayed one append at a time; torch's CPU matrix products differ in
                # the last bits with the batch size, so compute as replay will (bit-identical
                # recovery).
                for op, v in stepped:
                    op.state = model.append(states[op.series_id], tensors([(op, v)]))
            else:
                if len(stepped) == 1:  # (a single append: no batch to gather or split)
                    op = stepped[0][0]
                    op.state = model.append(states[op.series_id], tensors(stepped))
                else:
                    group = [states[op.series_id] for op, _ in stepped]
                    out = model.append(rows_of(group) or RimerState.cat(group), tensors(stepped))
                    for (op, _), state in zip(stepped, split_rows(out, len(stepped))):
                        op.state = state  # (marked rows: see rows_of)
        for op, _ in computed:
            states[op.series_id] = op.state
        by_horizon: dict[int, list[Op]] = {}
        for op in ops:
            if op.horizon is not None:
                by_horizon.setdefault(op.horizon, []).append(op)
        for horizon, group in by_horizon.items():
            means = self.e.forecasts(RimerState.cat([states[op.series_id] for op in group]), horizon)
            for op, mean in zip(group, means):
                op.mean = mean

    def _lock_entries(self, requests: list[list[Op]]) -> tuple[dict[str, SeriesEntry], list, set]:
        """The entries of every series named, locked (in id order); placeholders for new series
        an append names. Returns (entries, locks held, ids of placeholders created here)."""
        appends: dict[str, bool] = {}  # every id named: whether an op appends to it
        for ops in requests:
            for op in ops:
                if op.values is not None:
                    appends[op.series_id] = True
                elif op.series_id not in appends:
                    appends[op.series_id] = False
        return self._lock_named(sorted(appends) if len(appends) > 1 else list(appends), appends)

    def _lock_named(self, named: list[str], appended: dict[str, bool] | None
                    ) -> tuple[dict[str, SeriesEntry], list, set]:
        """`_lock_entries` of the sorted ids `named`, those `appended` maps to True (None: all)
        created where missing."""
        table = self.series
        while True:
            created = set()
            with self.table_lock:
                found = list(map(table.get, named))  # (one C pass when all are held)
                if None in found:
                    for k, sid in enumerate(named):
                        if found[k] is None and (appended is None or appended[sid]):
                            state = RimerState.zeros(self.cfg, 1, self.e.device)
                            found[k] = table[sid] = SeriesEntry(state, threading.Lock())
                            created.add(sid)
                entries = (dict(zip(named, found)) if None not in found else
                           {sid: entry for sid, entry in zip(named, found) if entry is not None})
            held = list(entries.values())
            locks = list(map(_lock_of, held))  # (in id order, as `named`)
            acquire_all(locks)
            if all(map(operator.is_, map(table.get, entries), held)):
                return entries, locks, created
            release_all(locks)  # one was deleted meanwhile: start again

    def _forget_if_empty(self, series_id: str, entry: SeriesEntry) -> None:
        """Undo the creation of a series whose first append was refused."""
        with self.table_lock:
            if self.series.get(series_id) is entry and entry.length == 0:
                del self.series[series_id]
                self.resident.pop(series_id, None)

    # ---- the cache tiers -------------------------------------------------------------------

    def _on_device_all(self, entries: dict[str, SeriesEntry], created: set[str], settle: bool = True
                       ) -> tuple[dict[str, int], dict[str, RimerState], dict[str, list[float]]]:
        """The entries' lengths (placeholders in `created` left out: not held until an append is
        applied), states on the device and pending points, their locks held; spilled states taken
        back from their tier, under one hold of the table lock. `_shrink` once the locks are let
        go. (The rounds rebind the pending lists, never change them: the entries stay as they are
        until every computation has succeeded.) With `settle`, steps deferred by bulk ingests
        are taken first (resident_defer.py: the states returned are then the series')."""
        spill, device, stats = self.e.spill, self.e.device, self.e.cache_stats
        resident, now, misses = self.resident, time.monotonic(), 0
        lengths, states, pending = {}, {}, {}
        with self.table_lock:
            try:
                for series_id, entry in entries.items():
                    if entry.state is None:
                        try:
                            entry.set_state(spill.take(series_id).to(device))
                        except SpillError as exc:
                            raise EngineError(500, str(exc), "id") from exc
                        misses += 1
                    if series_id in resident:
                        resident.move_to_end(series_id)
                    else:
                        resident[series_id] = None
                    entry.touched = now
                    states[series_id] = entry.state
                    pending[series_id] = entry.pending
                    if series_id not in created:
                        lengths[series_id] = entry.length
            finally:
                stats["misses"] += misses
                stats["hits"] += len(states) - misses
        waiting = {sid: entry for sid, entry in entries.items() if entry.deferred} if settle else {}
        if waiting:  # (their locks held: steps deferred by earlier bulk ingests, first)
            settle_locked(self, waiting)
            for sid, entry in waiting.items():
                states[sid] = entry.state
        return lengths, states, pending

    def _shrink(self) -> None:
        """Spill least recently used states until the device holds `capacity`; states in use
        (their lock held) stay, so a batch may exceed the capacity while it runs."""
        spill = self.e.spill
        if spill is None:
            return
        with self.table_lock:
            over = len(self.resident) - self.e.capacity
            for series_id in list(self.resident):
                if over <= 0:
                    break
                entry = self.series.get(series_id)
                if entry is None or entry.state is None:
                    self.resident.pop(series_id, None)
                    continue
                if entry.length == 0 or not entry.lock.acquire(blocking=False):
                    continue
                try:
                    try:
                        spill.put(series_id, self._folded(series_id, entry))
                    except SpillError as exc:  # (the disk is full or gone: the states stay
                        # here over capacity, the request that finished is answered as done,
                        # and the next request tries again)
                        if time.monotonic() - self.spill_failed_at > 60.0:  # (once a minute)
                            log.error("spilling least recently used states failed: %s", exc)
                        self.spill_failed_at = time.monotonic()
                        return
                    entry.pending = []
                    entry.state = None
                    del self.resident[series_id]
                    over -= 1
                finally:
                    entry.lock.release()

    def _folded(self, series_id: str, entry: SeriesEntry) -> RimerState:
        """The entry's state (its lock held) with its deferred steps taken into it first
        (resident_defer.py) and its pending points in the tail (a new state; pending unchanged)."""
        settle_locked(self, {series_id: entry})
        if not entry.pending:
            return entry.state
        return append_tails([entry.state], [entry.pending])[0]

    # ---- deletes ---------------------------------------------------------------------------

    def delete(self, series_id: str, idle_since: float | None) -> int | None:
        """Forget a series (logged); with `idle_since`, only if not touched since (409)."""
        entry = self.series.get(series_id)
        if entry is None:
            raise unknown(series_id)
        ticket = None
        # The entry's lock: a batch holding it computes on this series.
        with entry.lock, self.e.journal_lock():
            if self.series.get(series_id) is not entry:
                raise unknown(series_id)
            if idle_since is not None and entry.touched >= idle_since:
                raise EngineError(409, f"series {series_id!r} is no longer idle", "id")
            if self.e.journal is not None:
                ticket = self.e.journal.write_delete(series_id)
            with self.table_lock:
                self.series.pop(series_id, None)
                self.resident.pop(series_id, None)
                with self.deferred_lock:
                    self.deferred_ids.pop(series_id, None)
                    self.deferred_points -= sum(map(len, entry.deferred))
                if entry.state is None and self.e.spill is not None:
                    self.e.spill.drop(series_id)
            self.e.meta.pop(series_id, None)
        return ticket

    def settle_some(self, limit: int) -> int:
        """Step the deferred groups of up to `limit` series (resident_defer.py); how many."""
        return settle_some(self, limit) if self.deferred_ids else 0

    # ---- every series' state, to and from the host (snapshots) ------------------------------

    def export(self, exclusive: AbstractContextManager, cut: Callable[[], Any] | None):
        """Every series' state for a snapshot or a move (service/engine/resident_export.py)."""
        return export_states(self, exclusive, cut)

    def import_(self, ids: list[str], states: RimerState, lengths: list[int], now: float) -> None:
        with self.table_lock:
            self._insert(ids, states, lengths, now)

    def import_new(self, series_id: str, state: RimerState, now: float, log) -> int | None:
        """One series not held yet, `log()` (the journal's record) called first: under the
        journal's lock and then the table's (the order a delete takes them in)."""
        with self.e.journal_lock(), self.table_lock:
            if series_id in self.series:
                raise EngineError(409, f"series {series_id!r} was created meanwhile", "id")
            ticket = log()
            self._insert([series_id], state, [int(state.length[0])], now)
            return ticket

    def _insert(self, ids: list[str], states: RimerState, lengths: list[int], now: float) -> None:
        if any(i in self.series for i in ids):
            raise ValueError("import_states: a series is held already")
        for row, series_id in enumerate(ids):
            entry = SeriesEntry(None, threading.Lock(), lengths[row], now)
            if len(self.resident) < self.e.capacity:
                entry.state = states.select([row]).to(self.e.device)
                self.resident[series_id] = None
            else:
                self.e.spill.put(series_id, states.select([row]))
            self.series[series_id] = entry


def rows_of(group: list[RimerState]) -> RimerState | None:
    """The batch state whose rows `group` is, all of them in order, or None. `_round` keeps
    each row of a stepped batch as a `BatchRow` (`rows_of`: the batch and the row; states never
    change once made), so series that complete their patches together again, as a bulk
    ingest's do every patch_len requests, step on that batch as it is, with no gather."""
    first = getattr(group[0], "rows_of", None)
    if first is None or first[0].batch != len(group):
        return None
    batch = first[0]  # (contiguous, as a gather would make it: only such batches are marked)
    for b, state in enumerate(group):
        mark = getattr(state, "rows_of", None)
        if mark is None or mark[0] is not batch or mark[1] != b:
            return None
    return batch
