"""What the torch/onnx store (resident.py) keeps per series: its state, lock, length and the
points still pending; and how pending points join states' tails."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

import torch

from model.state import RimerState
from service.engine.ops import EXPORT_CHUNK


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
    # Points that did complete patches, not stepped yet (a columnar bulk ingest's, while the
    # batcher's worker has requests to answer: resident_defer.py): per request that completed
    # them, the points `Rimer.append` would have been given then. The series is `state`, then
    # these groups in order, then `pending`. Each group is a list never changed once here.
    deferred: list[list[float]] = field(default_factory=list)

    def set_state(self, state: RimerState, length: int | None = None) -> None:
        """Keep `state` with contiguous tensors: a state back from a spill file or a snapshot is
        contiguous, and CPU kernels may round differently with other strides. `length`: the
        state's points, when the caller knows them (else read from the state)."""
        if getattr(state, "rows_of", None) is None:  # (a marked row is known contiguous)
            tensors = state.tensors()
            if not all(t.is_contiguous() for t in tensors.values()):
                state = RimerState(**{k: v.contiguous() for k, v in tensors.items()})
        self.state = state
        self.length = int(state.length[0]) if length is None else length
        self.pending = []
        self.deferred = []




_LOCK = type(threading.Lock())


def acquire_all(locks: list) -> None:
    """Take each lock in order (a bulk request holds a thousand: one C-level pass)."""
    collections.deque(map(_LOCK.acquire, locks), 0)


def release_all(locks: list) -> None:
    """Let go of `acquire_all`'s locks, in reverse order."""
    collections.deque(map(_LOCK.release, reversed(locks)), 0)


def append_tails(states: list[RimerState], values: list[list[float]]) -> list[RimerState]:
    """Append points that complete no patch to each state (`RimerState.extend_tail`, a chunk of
    states at a time): the matrices are neither read nor changed, so they are shared, not cat."""
    out = []
    for a in range(0, len(states), EXPORT_CHUNK):
        old = states[a:a + EXPORT_CHUNK]
        new = RimerState.cat([s.without_wkv() for s in old]).extend_tail(
            [torch.tensor(v, dtype=torch.float32) for v in values[a:a + EXPORT_CHUNK]])
        rows = {f: t.split(1) for f, t in new.tensors().items()}
        out += [RimerState(wkv=s.wkv, **{f: rows[f][b] for f in rows}) for b, s in enumerate(old)]
    return out
