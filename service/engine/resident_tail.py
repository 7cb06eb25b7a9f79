"""The torch/onnx store's lane for the commonest request, one series gaining points that
complete no patch (`ResidentStore.apply` of one op): the batch path's rules and records, with
only the objects that such an append touches. Right after a patch was computed every object is
a cache miss, and the batch path touches many (bench.append_cost's one-point append)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from service.engine import admission
from service.engine.ops import EngineError, Op

if TYPE_CHECKING:
    from service.engine.resident import ResidentStore


def tail_append(store: ResidentStore, op: Op) -> tuple[list, int | None] | None:
    """`store.apply([[op]])` when `op` appends to a held, resident series without completing a
    patch, asks no forecast and stays inside the position table; None (nothing done) otherwise,
    for the batch path to apply."""
    values = op.values
    if values is None or op.horizon is not None:
        return None
    entry = store.series.get(op.series_id)
    if entry is None or entry.state is None or entry.length == 0 or entry.deferred:
        return None  # (unknown, spilled, a placeholder another request is creating, or steps
        # deferred by a bulk ingest: the batch path takes them first)
    cfg = store.cfg
    with entry.lock:
        old = entry.length
        new = old + len(values)
        if (store.series.get(op.series_id) is not entry or entry.state is None
                or not admission.tail_only(cfg, old, new) or new >= admission.positions_end(cfg)):
            return None
        e, ticket = store.e, None
        with e.journal_lock():
            if e.journal is not None:
                try:
                    ticket = e.journal.write_append(op.series_id, values, new, op.meta)
                except EngineError as exc:  # the log broke: nothing applied
                    return [exc], None
            if op.meta is not None:
                e.meta[op.series_id] = op.meta
            op.length = entry.length = new
            entry.pending.extend(values)
            entry.touched = time.monotonic()
        with store.table_lock:
            store.resident.move_to_end(op.series_id)
        e.cache_stats["hits"] += 1
    return [[(new, None)]], ticket
