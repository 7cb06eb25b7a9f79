"""The triton backend's states: one preallocated pool of states on the device.

A `RimerState` of capacity + scratch + 1 rows, an id -> slot map (least recently used first) and
a free list. Appends update the pool in place: a batch is checked whole, written to the log,
then applied in rounds (the k-th op of every series): points that complete no patch are copied
into the tails, one-patch steps replay a CUDA graph of `step_slots` on a GPU, the rest run
`append_slots`; forecasts roll out in the scratch rows (`forecast_slots`); the kernels are
driven by runtime/pool.py's `PoolRunner`. Everything a request
could be refused for is checked before the pool is touched. Lengths are kept on the host, so the
checks need no device round trip. One re-entrant lock serialises pool operations."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.state import RimerState
from service.cache import SpillError, SpillTiers
from service.distribution import forecasts
from service.engine import admission
from service.engine.ops import EXPORT_CHUNK, EngineError, Op, StateChunks, rounds, unknown

if TYPE_CHECKING:
    from service.engine.facade import Engine

SCRATCH_SLOTS = 256  # rows of the pool for forecasts and POST /forecast (series per batch)


class SlotPoolStore:
    def __init__(self, engine: Engine, scratch: int = SCRATCH_SLOTS, graphs: bool = False):
        self.e = engine
        model, capacity, device = engine.model, engine.capacity, engine.device
        self.model, self.cfg, self.device = model, model.cfg, device
        self.pool = RimerState.zeros(model.cfg, capacity + scratch + 1, device)
        self.scratch = torch.arange(capacity, capacity + scratch, device=device)
        self.spare = capacity + scratch  # padding rows of CUDA-graph batches name this slot
        self.free = list(range(capacity - 1, -1, -1))
        self.slot: OrderedDict[str, int] = OrderedDict()  # series on the device, LRU first
        self.length: dict[str, int] = {}  # points seen, on the host: every series, any tier
        self.touched: dict[str, float] = {}  # time.monotonic() of the last request
        self.lock = threading.RLock()  # re-entrant: a batch applied op by op takes it again
        from runtime.pool import PoolRunner  # (Triton: the triton backend's dependency only)

        self.runner = PoolRunner(model)  # append_slots, step_slots, forecast_slots on self.pool
        self.graphs = None
        if graphs:
            from runtime.graphs import StepGraphs
            self.graphs = StepGraphs(self.runner, self.pool, self.spare)

    def rows(self, slots: list[int]) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.int64, device=self.pool.tail.device)

    # ---- reads -----------------------------------------------------------------------------

    def held_length(self, series_id: str) -> int | None:
        return self.length.get(series_id)

    @property
    def held(self) -> int:
        return len(self.length)

    @property
    def on_device(self) -> int:
        return len(self.slot)

    def lengths(self) -> dict[str, int]:
        with self.lock:
            return dict(self.length)

    def touch(self, series_id: str) -> int:
        """The series' length, marked as used now (idle expiry); 404 if unknown."""
        with self.lock:
            length = self.length.get(series_id)
            if length is not None:
                self.touched[series_id] = time.monotonic()
        if length is None:
            raise unknown(series_id)
        return length

    def state_of(self, series_id: str) -> RimerState:
        """The series' state as it is now, wherever it is held (a copy)."""
        with self.lock:
            if series_id not in self.length:
                raise unknown(series_id)
            if series_id in self.slot:
                return self.pool.select(self.rows([self.slot[series_id]]))
            return self.e.peek_spilled([series_id])[0]

    def idle(self, cutoff: float) -> list[str]:
        with self.lock:
            return [i for i, t in self.touched.items() if t < cutoff]

    # ---- forecasts -------------------------------------------------------------------------

    def forecast_histories(self, tensors: list[torch.Tensor], horizon: int) -> list:
        """In batches of the scratch slots: fresh states there, append, forecast (consuming them)."""
        out = []
        with self.lock:
            for start in range(0, len(tensors), len(self.scratch)):
                chunk = tensors[start:start + len(self.scratch)]
                rows = self.scratch[: len(chunk)]
                self.pool.write_(rows, self.model.init_state(chunk))
                self.runner.append_slots(self.pool, rows, chunk)
                out += self._forecasts(rows, horizon, rows)
        return out

    def _forecasts(self, rows: torch.Tensor, horizon: int, scratch: torch.Tensor) -> list:
        """The forecasts of the pool's `rows` (rollouts in `scratch`), as Forecasts."""
        calib = self.pool.calib.index_select(0, rows) if self.pool.calib is not None else None
        return forecasts(self.model, calib, lambda q: self.runner.forecast_slots(
            self.pool, rows, horizon, scratch, quantiles=q))

    # ---- batches ---------------------------------------------------------------------------

    def apply(self, requests: list[list[Op]]) -> tuple[list, int | None]:
        """Checked whole, then applied batched under the pool's lock (nothing else comes between
        the check and the changes). Every series named is brought onto the device first; with a
        journal the appends are then written to the log (write-ahead: what a broken log refuses
        is never computed, and what it holds is applied); then the rounds (`_round`). Each
        series takes the same path in a batch as alone and the kernels are batch-invariant, so
        the bits are the same as op by op. A batch naming more series than the device holds is
        applied op by op."""
        with self.lock:
            errors = admission.plan(self.cfg, self.e.max_series, requests, self.length, len(self.length))
            results: list = [errors.get(r) for r in range(len(requests))]
            accepted = [r for r in range(len(requests)) if r not in errors]
            named = list(dict.fromkeys(op.series_id for r in accepted for op in requests[r]))
            if len(named) > self.e.capacity:
                return self._apply_by_op(requests, results, accepted)
            slots, created, unreadable = self._bring(named)
            if unreadable:  # a spilled state could not be read: the requests naming it fail,
                for r in accepted:  # and the others are planned again without them
                    bad = next((op for op in requests[r] if op.series_id in unreadable), None)
                    if bad is not None:
                        exc = unreadable[bad.series_id]
                        results[r] = EngineError(exc.status, exc.message, bad.field("id"))
                keep = [r for r in accepted if results[r] is None]
                again = admission.plan(self.cfg, self.e.max_series, [requests[r] for r in keep],
                                       self.length, len(self.length))
                for i, exc in again.items():
                    results[keep[i]] = exc
                accepted = [r for i, r in enumerate(keep) if i not in again]
            todo, accepted, ticket = self._log(requests, results, accepted)
            used = {op.series_id for op in todo}
            for sid in [s for s in created if s not in used]:  # refused after all: no slot kept
                self._release(sid)
            created = [s for s in created if s in used]
            try:
                if created:
                    self.pool.write_(self.rows([slots[s] for s in created]),
                                     RimerState.zeros(self.cfg, len(created), self.device))
                for ops in rounds(todo):
                    self._round(ops, slots)
            except BaseException as exc:  # unexpected (the plan was checked)
                for sid in created:
                    if sid not in self.length:
                        self._release(sid)
                if ticket is not None:
                    # The log holds appends that may not all be applied: refuse changes until a
                    # restart rebuilds the states from it.
                    self.e.journal.fail(f"a batch failed after it was logged: {exc!r}")
                raise
            with self.e.journal_lock():
                self.e.meta.update({op.series_id: op.meta for op in todo if op.meta is not None})
                # (idle since it ends, not since it began)
                self.touched.update(dict.fromkeys([op.series_id for op in todo], time.monotonic()))
            for r in accepted:
                results[r] = [(op.length, op.mean) for op in requests[r]]
        return results, ticket

    def _apply_by_op(self, requests: list[list[Op]], results: list, accepted: list[int]):
        """The checked requests applied one op at a time (each a batch of one; pool lock held):
        for a batch of more series than the device holds, which spill and come back in turn.
        An op refused (a state that cannot be read, a broken log) ends its request there."""
        ticket = None
        for r in accepted:
            done = []
            for op in requests[r]:
                [out], t = self.apply([[Op(op.series_id, op.values, op.horizon, op.prefix, op.meta)]])
                ticket = t if t is not None else ticket
                if isinstance(out, EngineError):
                    done = out
                    break
                done += out
            results[r] = done
        return results, ticket

    def _release(self, series_id: str) -> None:
        """A slot taken for a new series that will not be created after all."""
        self.free.append(self.slot.pop(series_id))
        self.touched.pop(series_id, None)

    def _bring(self, named: list[str]) -> tuple[dict[str, int], list[str], dict[str, EngineError]]:
        """A slot for each series (pool lock held; at most `capacity` of them): the resident
        first, so bringing back the spilled never spills one of them. Returns the slots, the
        series created (rows not yet zeroed) and the errors of states that could not be read."""
        resident = [sid for sid in named if sid in self.slot]
        slots: dict[str, int] = self._hits(resident)
        created = [sid for sid in resident if sid not in self.length]  # (none while consistent)
        unreadable: dict[str, EngineError] = {}
        try:
            for sid in [s for s in named if s not in slots]:
                new = sid not in self.length
                try:
                    slots[sid] = self._slot(sid, new)
                except EngineError as exc:
                    unreadable[sid] = exc
                    continue
                if new:
                    created.append(sid)
        except BaseException:  # e.g. spilling a state failed: no slot kept for a new series
            for sid in created:
                self._release(sid)
            raise
        return slots, created, unreadable

    def _log(self, requests: list[list[Op]], results: list, accepted: list[int]
             ) -> tuple[list[Op], list[int], int | None]:
        """Write the accepted requests' appends to the log, in order. Returns the ops to apply
        (with a journal: those before the log broke, as on the resident store, where a request
        the log breaks in keeps the ops written before), the requests to answer with results,
        and the last ticket. The requests from the break on are answered with its error."""
        todo = [op for r in accepted for op in requests[r]]
        journal = self.e.journal
        if journal is None:
            return todo, accepted, None
        todo, ticket = [], None
        with journal.lock:
            for i, r in enumerate(accepted):
                try:
                    for op in requests[r]:
                        if op.values is not None:
                            ticket = journal.write_append(op.series_id, op.values, op.length, op.meta)
                        todo.append(op)
                except EngineError as exc:
                    for rest in accepted[i:]:
                        results[rest] = exc
                    return todo, accepted[:i], ticket
        return todo, accepted, ticket

    def _round(self, ops: list[Op], slots: dict[str, int]) -> None:
        """At most one op per series: the appends (one `append_slots`, whose rows are put back
        if it fails; the points of appends that complete no patch copied into the tails; graph
        replays for one-patch steps on a GPU; lengths move on with the states), then forecasts,
        one `forecast_slots` per horizon, in chunks of the scratch rows. Sets `op.mean`."""
        p = self.cfg.patch_len
        tails, steps, longs = [], [], []
        for op in ops:
            if op.values:
                reach = self.length.get(op.series_id, 0) % p + len(op.values)
                (tails if reach < p else steps if self.graphs is not None and reach < 2 * p
                 else longs).append(op)
        if longs:
            held = self.rows([slots[op.series_id] for op in longs if op.series_id in self.length])
            before = self.pool.select(held) if len(held) else None  # put back on a failure
            try:
                self.runner.append_slots(self.pool, self.rows([slots[op.series_id] for op in longs]),
                                        [torch.tensor(op.values, dtype=torch.float32) for op in longs])
            except BaseException:
                if before is not None:
                    self.pool.write_(held, before)
                raise
            self.length.update({op.series_id: op.length for op in longs})
        if tails:
            self.extend_tails(tails, slots)
            self.length.update({op.series_id: op.length for op in tails})
        if steps:
            counts = [len(op.values) for op in steps]
            values = np.zeros((len(steps), max(counts)), dtype=np.float32)
            for b, op in enumerate(steps):
                values[b, : counts[b]] = op.values
            self.graphs.run(self.rows([slots[op.series_id] for op in steps]),
                            torch.from_numpy(values).to(self.device),
                            torch.tensor(counts, dtype=torch.int64, device=self.device))
            self.length.update({op.series_id: op.length for op in steps})
        # The appends of no points too (a new series exists from its first).
        self.length.update({op.series_id: op.length for op in ops if op.values == []})
        by_horizon: dict[int, list[Op]] = {}
        for op in ops:
            if op.horizon is not None:
                by_horizon.setdefault(op.horizon, []).append(op)
        room = len(self.scratch)
        for horizon, group in by_horizon.items():
            for a in range(0, len(group), room):
                part = group[a:a + room]
                means = self._forecasts(self.rows([slots[op.series_id] for op in part]), horizon,
                                        self.scratch[: len(part)])
                for op, mean in zip(part, means):
                    op.mean = mean

    def extend_tails(self, ops: list[Op], slots: dict[str, int]) -> None:
        """Appends that complete no patch: their points copied into the pool's tails (two
        indexed writes for the whole batch; `op.length` is the length after). Nothing else of a
        state changes then, and every path leaves a tail's unused points zero, so these are the
        bits the network's path would give (an exact copy), without running the network for rows
        that have nothing to compute (in a bulk append of one point, 31 in 32 series). The
        caller moves the host lengths on."""
        p, dev = self.cfg.patch_len, self.device
        row_of = [slots[op.series_id] for op in ops]
        rows = [slot for slot, op in zip(row_of, ops) for _ in op.values]
        cols = [(op.length - len(op.values) + k) % p for op in ops for k in range(len(op.values))]
        flat = [v for op in ops for v in op.values]
        self.pool.tail[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)] = torch.tensor(
            flat, dtype=self.pool.tail.dtype, device=dev)
        self.pool.tail_len[self.rows(row_of)] = torch.tensor(
            [op.length % p for op in ops], dtype=self.pool.tail_len.dtype, device=dev)

    # ---- the cache tiers -------------------------------------------------------------------

    def _hits(self, ids: list[str]) -> dict[str, int]:
        """The slots of series on the device (pool lock held), each made the most recently
        used and touched now."""
        for sid in ids:
            self.slot.move_to_end(sid)
        self.touched.update(dict.fromkeys(ids, time.monotonic()))
        self.e.cache_stats["hits"] += len(ids)
        return {sid: self.slot[sid] for sid in ids}

    def _slot(self, series_id: str, created: bool = False) -> int:
        """The series' slot (pool lock held), after bringing it back to the device if spilled
        and spilling the least recently used series if no slot is free."""
        if series_id in self.slot:
            return self._hits([series_id])[series_id]
        if not self.free:
            victim, victim_slot = next(iter(self.slot.items()))
            try:
                self.e.spill.put(victim, self.pool.select(self.rows([victim_slot])))
            except SpillError as exc:  # (the victim stays in its slot)
                raise EngineError(503, f"no room on the device for {series_id!r}: {exc}",
                                  "id") from exc
            del self.slot[victim]
            self.free.append(victim_slot)
        slot = self.free.pop()
        if not created:
            try:
                state = self.e.spill.take(series_id)
            except SpillError as exc:
                self.free.append(slot)
                raise EngineError(500, str(exc), "id") from exc
            self.pool.write_(self.rows([slot]), state.to(self.device))
            self.e.cache_stats["misses"] += 1
        self.slot[series_id] = slot
        self.touched[series_id] = time.monotonic()
        return slot

    # ---- deletes ---------------------------------------------------------------------------

    def delete(self, series_id: str, idle_since: float | None) -> int | None:
        ticket = None
        with self.lock, self.e.journal_lock():
            if series_id not in self.length:
                raise unknown(series_id)
            if idle_since is not None and self.touched.get(series_id, 0.0) >= idle_since:
                raise EngineError(409, f"series {series_id!r} is no longer idle", "id")
            if self.e.journal is not None:
                ticket = self.e.journal.write_delete(series_id)
            slot = self.slot.pop(series_id, None)
            if slot is not None:
                self.free.append(slot)
            elif self.e.spill is not None:
                self.e.spill.drop(series_id)
            del self.length[series_id]
            self.touched.pop(series_id, None)
            self.e.meta.pop(series_id, None)
        return ticket

    # ---- every series' state, to and from the host (snapshots) ------------------------------

    def export(self, exclusive: AbstractContextManager, cut: Callable[[], Any] | None):
        with self.lock, exclusive:
            ids = list(self.slot)
            # A copy on the device (the pool changes in place); to the host a chunk at a time.
            rows = self.pool.select(self.rows([self.slot[i] for i in ids])) if ids else None
            spilled = [i for i in self.length if i not in self.slot]
            pinned = self.e.pin_spilled(spilled)
            try:
                mark = cut() if cut is not None else None
            except BaseException:
                SpillTiers.unpin(pinned)
                raise

        def make(a: int, b: int) -> RimerState:
            parts = [rows.select(list(range(a, min(b, len(ids))))).to("cpu")] if a < len(ids) else []
            lo, hi = max(a - len(ids), 0), max(b - len(ids), 0)
            return RimerState.cat(parts + self.e.read_pinned(spilled[lo:hi], pinned[lo:hi]))

        close = (lambda: SpillTiers.unpin(pinned)) if pinned else None
        return ids + spilled, StateChunks(len(ids) + len(spilled), make, close), mark

    def import_new(self, series_id: str, state: RimerState, now: float, log) -> int | None:
        """One series not held yet, `log()` (the journal's record) called first: under the
        pool's lock and then the journal's (the order a delete takes them in)."""
        with self.lock, self.e.journal_lock():
            if series_id in self.length or series_id in self.slot:
                raise EngineError(409, f"series {series_id!r} was created meanwhile", "id")
            ticket = log()
            self.import_([series_id], state, [int(state.length[0])], now)
            return ticket

    def import_(self, ids: list[str], states: RimerState, lengths: list[int], now: float) -> None:
        with self.lock:
            if any(i in self.length for i in ids):
                raise ValueError("import_states: a series is held already")
            fit = min(len(ids), len(self.free))  # the first ones on the device, the rest spill
            for a in range(0, fit, EXPORT_CHUNK):
                slots = [self.free.pop() for _ in range(min(EXPORT_CHUNK, fit - a))]
                rows = list(range(a, a + len(slots)))
                self.pool.write_(self.rows(slots), states.select(rows).to(self.device))
                for i, slot in zip(ids[a:], slots):
                    self.slot[i] = slot
            for row in range(fit, len(ids)):
                self.e.spill.put(ids[row], states.select([row]))
            for i, n in zip(ids, lengths):
                self.length[i], self.touched[i] = n, now
