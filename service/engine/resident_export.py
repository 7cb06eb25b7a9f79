"""The torch/onnx store's states of every series, for a snapshot or a series move
(`ResidentStore.export`): references taken under the locks, host copies made after them, chunk
by chunk, so that a snapshot streams to its file."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from model.state import RimerState
from service.cache import SpillTiers
from service.engine.entries import append_tails
from service.engine.ops import StateChunks
from service.engine.resident_defer import stepped_through

if TYPE_CHECKING:
    from service.engine.resident import ResidentStore


def export_states(store: ResidentStore, exclusive: AbstractContextManager,
                  cut: Callable[[], Any] | None):
    """(ids, `StateChunks` of their states, what `cut()` returned), `cut` called while
    `exclusive` (no write or sync in progress) is held, after the table lock under which the
    states' references were taken and the spilled ones pinned."""
    with exclusive:
        with store.table_lock:
            # States are never changed in place (an append swaps in a new one), so references
            # are a consistent copy; a series whose first append is in flight has none yet.
            # Spilled ones: the host tier's references, or links to their files (`pin`).
            held = [(i, e.state, list(e.pending), list(e.deferred)) for i, e in store.series.items()
                    if e.length > 0 and e.state is not None]
            spilled = [i for i, e in store.series.items() if e.length > 0 and e.state is None]
            pinned = store.e.pin_spilled(spilled)
        try:
            mark = cut() if cut is not None else None
        except BaseException:
            SpillTiers.unpin(pinned)
            raise

    def make(a: int, b: int) -> RimerState:
        """Rows a..b on the host, after the locks: deferred steps taken and pending points
        folded in (the lists are copies; states are never changed in place), spilled states
        read from their tier."""
        part = held[a:b]
        states = [s for _, s, _, _ in part]
        late = [k for k, (_, _, _, d) in enumerate(part) if d]
        if late:
            for k, state in zip(late, stepped_through(store.e.model, [states[k] for k in late],
                                                      [part[k][3] for k in late])):
                states[k] = state
        waiting = [k for k, (_, _, p, _) in enumerate(part) if p]
        for k, state in zip(waiting, append_tails([states[k] for k in waiting],
                                                  [part[k][2] for k in waiting])):
            states[k] = state
        lo, hi = max(a - len(held), 0), max(b - len(held), 0)
        return RimerState.cat([s.to("cpu") for s in states]
                              + store.e.read_pinned(spilled[lo:hi], pinned[lo:hi]))

    ids = [i for i, *_ in held] + spilled
    return ids, StateChunks(len(ids), make, (lambda: SpillTiers.unpin(pinned)) if pinned else None), mark
