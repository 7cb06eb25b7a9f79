"""What a request asks of the engine: `Op`s (one series' append and/or forecast), grouped in
rounds, and the error the engine refuses one with."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from model.state import RimerState
from service.errors import ServiceError

EXPORT_CHUNK = 1024  # states gathered into one model call or host copy at a time


class EngineError(ServiceError):
    """A request the engine refuses (a `ServiceError`: `status` and `field` for the answer)."""


@dataclass(eq=False, slots=True)
class Op:
    """One series' part of a batched request: append `values` (None: forecast only), and forecast
    `horizon` points after it when given. `prefix` names the item in errors ("series[3]")."""

    series_id: str
    values: list[float] | None
    horizon: int | None = None
    prefix: str = ""
    meta: dict | None = None  # the series' metadata after this op (timestamps), logged with it
    length: int = 0  # set by the engine: the series' length after this op
    mean: list[float] | None = None
    state: RimerState | None = None

    def field(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


def rounds(ops: list[Op]) -> list[list[Op]]:
    """The ops in rounds, the k-th op of every series in round k (order kept within each)."""
    if len(ops) < 2 or len({op.series_id for op in ops}) == len(ops):
        return [ops] if ops else []  # each series once (a single append's, a bulk append's case)
    out: list[list[Op]] = []
    seen: dict[str, int] = {}
    for op in ops:
        k = seen[op.series_id] = seen.get(op.series_id, -1) + 1
        if k == len(out):
            out.append([])
        out[k].append(op)
    return out


def unknown(series_id: str, field: str = "id") -> EngineError:
    return EngineError(404, f"unknown series {series_id!r}", field)


def full(max_series: int, field: str = "id") -> EngineError:
    return EngineError(409, f"the service holds its maximum of {max_series} series; delete some "
                            "first", field)


SNAPSHOT_CHUNK = 128  # states copied to the host at a time by a snapshot (9 MB for the default model)


class StateChunks:
    """Every exported series' state, in the order of the export's ids, as host batches of at
    most `SNAPSHOT_CHUNK` series, each made only when iterated to (`make(a, b)`: rows a..b): what
    a snapshot streams to its file, so that the host holds one chunk of copies at a time, not
    every state (the export keeps references, which cost nothing: states are never changed in
    place). Iterable more than once; `close()` lets go of what the export pinned (spill files)."""

    def __init__(self, count: int, make: Callable[[int, int], RimerState],
                 close: Callable[[], None] | None = None, chunk: int | None = None):
        self.count, self._make, self._close = count, make, close
        self.chunk = SNAPSHOT_CHUNK if chunk is None else chunk

    def __len__(self) -> int:
        return -(-self.count // self.chunk)

    def __iter__(self) -> Iterator[RimerState]:
        for a in range(0, self.count, self.chunk):
            yield self._make(a, min(a + self.chunk, self.count))

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __del__(self) -> None:  # (a caller that never closed it: the links go with it)
        self.close()

    def __enter__(self) -> StateChunks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
