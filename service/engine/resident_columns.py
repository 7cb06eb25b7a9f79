"""The columnar bulk append on the torch/onnx store (`ResidentStore.apply_columns`): the same
rules as `ResidentStore.apply` on one op per series, checked on arrays, with an `Op` only for
the series whose patch completes (a bulk ingest's other series only gain pending points)."""

from __future__ import annotations

import operator
import time
from typing import TYPE_CHECKING

import numpy as np

from service.engine import admission
from service.engine.entries import release_all
from service.engine.ops import EngineError, Op, full
from service.engine.resident_defer import defer, split_deferrable

if TYPE_CHECKING:
    from service.engine.resident import ResidentStore

_length_of = operator.attrgetter("length")


def _pick(items: list, rows) -> list | tuple:
    """items[i] for i in `rows` (a range over all of them: the list itself), in one C pass."""
    if isinstance(rows, range) and len(rows) == len(items):
        return items
    return operator.itemgetter(*rows)(items) if len(rows) > 1 else [items[i] for i in rows]


def columns_locked(store: ResidentStore, ids: list[str], bounds: list[int], values: np.ndarray,
                   metas: list[dict], name: str) -> tuple[list[int], int | None]:
    """`ResidentStore.apply_columns` with the store's locks to take and let go (a method of
    the store's, in a module of its own to keep resident.py short)."""
    e, p = store.e, store.cfg.patch_len
    entries, locks, created = store._lock_named(sorted(ids), None)
    ticket = None
    try:
        listed = list(map(entries.__getitem__, ids))  # (request order)
        old = np.fromiter(map(_length_of, listed), np.int64, len(ids))
        new = old + np.diff(np.asarray(bounds, np.int64))
        # The first refusal in request order, as admission.plan finds it.
        refused: list[tuple[int, EngineError]] = []
        if created:
            room = max(0, e.max_series - (len(store.series) - len(created)))
            if len(created) > room:
                i = [i for i, sid in enumerate(ids) if sid in created][room]
                refused.append((i, full(e.max_series, f"{name}[{i}].id")))
        end = admission.positions_end(store.cfg)
        if end != float("inf") and (new >= end).any():
            i = int(np.flatnonzero(new >= end)[0])
            try:
                admission.check_positions(store.cfg, int(new[i]), f"{name}[{i}].values")
            except EngineError as exc:
                refused.append((i, exc))
        if refused:
            raise min(refused, key=lambda r: r[0])[1]
        steps = old // p != new // p
        stepped = np.flatnonzero(steps).tolist()
        if e.spill is not None:
            store._on_device_all(entries, created, settle=False)
        else:
            e.cache_stats["hits"] += len(ids) - len(created)
            e.cache_stats["misses"] += len(created)
            if created:
                with store.table_lock:
                    store.resident.update(dict.fromkeys(created))
        floats = values.tolist()
        new_lengths = new.tolist()
        computed: dict[int, Op] = {}
        later: list[int] = []  # stepped series whose steps wait (resident_defer.py)
        if stepped and store.defer_steps:
            stepped, later = split_deferrable(store, stepped, ids, listed, created,
                                              (new - old).tolist(), old // p, new // p)
        if stepped:
            ops, st, pend = [], {}, {}
            for i in stepped:
                sid, entry = ids[i], listed[i]
                op = Op(sid, floats[bounds[i]:bounds[i + 1]], None, f"{name}[{i}]")
                op.length = new_lengths[i]
                ops.append(op)
                computed[i] = op
                st[sid] = entry.state  # (back from a spill tier, and settled, by now)
                pend[sid] = entry.pending
            store._round(ops, st, pend)
        tails = np.flatnonzero(~steps).tolist() if stepped or later else range(len(ids))
        with e.journal_lock():
            if e.journal is not None:  # (all the records in one write, before any change)
                ticket = e.journal.write_appends(ids, bounds, values, new_lengths, metas)
            now = time.monotonic()
            e.meta.update(zip(ids, metas))
            for i, op in computed.items():
                listed[i].set_state(op.state, new_lengths[i])
                listed[i].touched = now
            for i in later:
                entry = listed[i]
                defer(store, ids[i], entry, entry.pending + floats[bounds[i]:bounds[i + 1]])
                entry.length = new_lengths[i]
                entry.touched = now
            if len(floats) == len(ids):  # one point per series (a bulk ingest's case)
                for entry, x, n in zip(_pick(listed, tails), _pick(floats, tails),
                                       _pick(new_lengths, tails)):
                    entry.pending.append(x)
                    entry.length = n
                    entry.touched = now
            else:
                for i in tails:
                    entry = listed[i]
                    entry.pending.extend(floats[bounds[i]:bounds[i + 1]])
                    entry.length = new_lengths[i]
                    entry.touched = now
    finally:
        release_all(locks)
        for sid in created:
            store._forget_if_empty(sid, entries[sid])
    return new_lengths, ticket

