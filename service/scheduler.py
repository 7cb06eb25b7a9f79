"""Micro-batching: concurrent appends and forecasts of streaming series, coalesced into one engine
call (`Engine.apply_batch`).

Requests (each a list of `Op`s: one for a single append or forecast, many for a bulk append) are
queued by the HTTP handlers and taken by one worker thread. It takes the first request waiting,
then, while the last batch held more than one request (so there is concurrency to gain from),
waits up to `window_ms` for more, until `max_batch` ops are gathered; a lone request under light
load goes straight through, paying no window. A request is never split across batches. The
engine applies the batch's requests in queue order (ops on one series in arrival order), checks
each request whole against the state its predecessors leave, and answers each one with its
results or its own error, so a rejected request affects no other.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

from service.engine import Engine, EngineError, Op

log = logging.getLogger("rimer.scheduler")


@dataclass(eq=False)
class _Pending:
    ops: list[Op]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future, outcome) -> None:
    if future.done():  # the client went away
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Scheduler:
    def __init__(self, engine: Engine, window_ms: float, max_batch: int, metrics=None):
        self.engine, self.window, self.max_batch = engine, window_ms / 1000.0, max_batch
        self.metrics = metrics
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._last_requests = 1
        self._thread = threading.Thread(target=self._run, name="rimer-batcher", daemon=True)
        self._thread.start()

    async def submit(self, ops: list[Op]) -> list[tuple[int, list[float] | None]]:
        """The results of `ops` (one per op), or the EngineError that rejected them all."""
        loop = asyncio.get_running_loop()
        pending = _Pending(ops, loop.create_future(), loop)
        self._queue.put(pending)
        return await pending.future

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch, size, stop = [first], len(first.ops), False
        deadline = time.monotonic() + (self.window if self._last_requests > 1 else 0.0)
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            batch.append(nxt)
            size += len(nxt.ops)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            self._last_requests = len(batch)
            start = time.perf_counter()
            try:
                outcomes = self.engine.apply_batch([p.ops for p in batch])
            except BaseException as exc:  # unexpected: every request of the batch gets it
                log.exception("batch of %d requests failed", len(batch))
                err = exc if isinstance(exc, EngineError) else EngineError(500, f"internal error: {exc}")
                outcomes = [err] * len(batch)
            if self.metrics is not None:
                self.metrics.observe_batch(len(batch), sum(len(p.ops) for p in batch),
                                           time.perf_counter() - start)
            for p, outcome in zip(batch, outcomes):
                p.loop.call_soon_threadsafe(_resolve, p.future, outcome)
