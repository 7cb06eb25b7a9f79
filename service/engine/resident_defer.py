"""Deferred steps of the torch/onnx store: a columnar bulk ingest's patches, stepped after its
answer instead of before it.

A bulk ingest of 1,000 series x 1 point completes every series' patch once in 32 requests, and
stepping those patches is most of the engine's time. With the batcher on and the onnx backend's
batch invariance checked, `columns_locked` keeps such a request's points as a group of the
series' entry (`SeriesEntry.deferred`: the very points `Rimer.append` would have been given) and
answers at once; the batcher's worker steps the groups while no request waits (`settle_some`),
so the model's work overlaps the event loop's parsing and answering of the next request. Anything
that reads a state steps its series' groups first (`settle_locked`), in order, each group one
`Rimer.append` as its request would have made it: batch invariance makes the bits the same as
stepping it then, so the log's replay and a spilled or snapshotted state agree bit for bit.

A group is deferred only where it completes fewer patches than the onnx backend's chunk graph
takes (whose bits differ from one patch at a time), the series holds fewer than `MAX_GROUPS`
and the store's waiting points stay within `MAX_POINTS`: bounded per series (O(1) memory per
series) and in all."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import torch

from model.onnx_network import CHUNK
from model.state import BatchRow, RimerState
from service.engine.entries import release_all

if TYPE_CHECKING:
    from service.engine.entries import SeriesEntry
    from service.engine.resident import ResidentStore

MAX_GROUPS = 4  # deferred requests per series; past it the next one is stepped in its request
MAX_POINTS = 1 << 22  # points waiting in all groups of the store (~130 MB as Python floats)
SETTLE_ROWS = 64  # series the worker steps per slice between requests (a slice is a few ms)


def split_rows(out: RimerState, n: int) -> list[RimerState]:
    """The n rows of a stepped batch, as `BatchRow`s of it when its tensors are contiguous (the
    next batch of the same rows then steps on it as it is: resident.rows_of), else copies."""
    fields = out.tensors()
    if all(t.is_contiguous() for t in fields.values()):
        return [BatchRow(out, b) for b in range(n)]
    rows = {f: t.split(1) for f, t in fields.items()}
    return [RimerState(**{f: rows[f][b] for f in rows}) for b in range(n)]


def stepped_through(model, states: list[RimerState], groups: list[list[list[float]]]
                    ) -> list[RimerState]:
    """Each state stepped through its groups in order: round j one `Rimer.append` of the j-th
    group of every state that has one (the batch invariance makes each row's bits its own)."""
    from service.engine.resident import rows_of  # (resident imports this module)

    out = list(states)
    for j in range(max(map(len, groups), default=0)):
        rows = [k for k, g in enumerate(groups) if len(g) > j]
        batch = [out[k] for k in rows]
        sizes = [len(groups[k][j]) for k in rows]
        flat = np.fromiter(itertools.chain.from_iterable(groups[k][j] for k in rows), np.float32,
                           sum(sizes))  # (the float32 rounding torch.tensor gives each)
        values = list(torch.from_numpy(flat).split(sizes))
        if len(rows) == 1:
            out[rows[0]] = model.append(batch[0], values)
            continue
        new = model.append(rows_of(batch) or RimerState.cat(batch), values)
        for k, state in zip(rows, split_rows(new, len(rows))):
            out[k] = state
    return out


def settle_locked(store: ResidentStore, entries: dict[str, SeriesEntry]) -> None:
    """Step the deferred groups of `entries` (id -> entry, their locks held, states on the
    device) into their states, in one batch per round. A failure leaves them as they were."""
    waiting = [(sid, e) for sid, e in entries.items() if e.deferred and e.state is not None]
    if not waiting:
        return
    new = stepped_through(store.e.model, [e.state for _, e in waiting],
                          [e.deferred for _, e in waiting])
    with store.deferred_lock:
        for (sid, entry), state in zip(waiting, new):
            store.deferred_points -= sum(map(len, entry.deferred))
            entry.state, entry.deferred = state, []
            store.deferred_ids.pop(sid, None)


def settle_some(store: ResidentStore, limit: int = SETTLE_ROWS) -> int:
    """Step the deferred groups of up to `limit` series, the longest waiting first; how many
    series were settled (0: none waits). For the batcher's worker between requests."""
    with store.deferred_lock:
        ids = list(itertools.islice(store.deferred_ids, limit))
    if not ids:
        return 0
    entries, locks, _ = store._lock_named(sorted(ids), dict.fromkeys(ids, False))
    try:
        with store.deferred_lock:  # (deleted meanwhile: nothing to step)
            for sid in ids:
                if sid not in entries:
                    store.deferred_ids.pop(sid, None)
        settle_locked(store, entries)
    finally:
        release_all(locks)
    return len(ids)


def defer(store: ResidentStore, sid: str, entry: SeriesEntry, group: list[float]) -> None:
    """Keep `group` (points completing patches) on the entry, its lock held, to step later."""
    entry.deferred.append(group)
    entry.pending = []
    with store.deferred_lock:
        store.deferred_ids[sid] = None
        store.deferred_points += len(group)


def split_deferrable(store: ResidentStore, stepped: list[int], ids: list[str],
                     listed: list[SeriesEntry], created: set[str], counts: list[int],
                     patches_before, patches_after) -> tuple[list[int], list[int]]:
    """A columnar append's series whose patch completes (`stepped`, request order), split into
    those to step now and those whose steps wait: a held series' request completing fewer
    patches than the chunk graph takes, while it holds fewer than MAX_GROUPS groups and the
    store's waiting points stay within MAX_POINTS (`counts`: each series' new points; a request
    on other series in the thread pool may add its own meanwhile: the bound is that loose). The
    ones stepped now have their waiting groups stepped first (their locks are held)."""
    now, later, first = [], [], {}
    room = MAX_POINTS - store.deferred_points
    for i in stepped:
        entry = listed[i]
        size = len(entry.pending) + counts[i]
        if (ids[i] not in created and entry.state is not None and size <= room
                and patches_after[i] - patches_before[i] < CHUNK and len(entry.deferred) < MAX_GROUPS):
            later.append(i)
            room -= size
        else:
            now.append(i)
            if entry.deferred:
                first[ids[i]] = entry
    settle_locked(store, first)
    return now, later
