"""Micro-batching: concurrent appends and forecasts of streaming series, coalesced into one engine
call (`Engine.apply_batch`), and concurrent stateless forecasts (`POST /forecast`), coalesced into
one `Engine.forecast_histories` call per horizon.

Requests (each a list of `Op`s: one for a single append or forecast, many for a bulk append) are
queued by the HTTP handlers and taken by one worker thread. It takes the first request waiting,
then, while the last batch held more than one request (so there is concurrency to gain from),
waits up to `window_ms` for more, until `max_batch` ops are gathered; a lone request under light
load goes straight through, paying no window. A request is never split across batches. The
engine applies the batch's requests in queue order (ops on one series in arrival order), checks
each request whole against the state its predecessors leave, and answers each one with its
results or its own error, so a rejected request affects no other. Stateless forecasts touch no
series, so their place in the queue does not matter; a group whose engine call is refused is
answered request by request, each with its own result or error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool

from service.engine import Engine, EngineError, Op
from service.engine.resident_defer import SETTLE_ROWS

log = logging.getLogger("rimer.scheduler")


@dataclass(eq=False)
class _Pending:
    ops: list[Op]  # (empty for a stateless forecast)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    histories: list[list[float]] | None = None  # a stateless forecast's series
    horizon: int = 0
    call: Callable[[], object] | None = None  # an engine call of its own (a columnar append)
    weight: int = 0  # the call's series

    @property
    def size(self) -> int:
        if self.call is not None:
            return self.weight
        return len(self.ops) if self.histories is None else len(self.histories)


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
        # Bulk ingests answered before their steps: taken here while no request waits.
        self._settles = engine.defer_steps()
        self._thread = threading.Thread(target=self._run, name="rimer-batcher", daemon=True)
        self._thread.start()

    async def submit(self, ops: list[Op]) -> list[tuple[int, list[float] | None]]:
        """The results of `ops` (one per op), or the EngineError that rejected them all."""
        loop = asyncio.get_running_loop()
        pending = _Pending(ops, loop.create_future(), loop)
        self._queue.put(pending)
        return await pending.future

    async def forecast(self, histories: list[list[float]], horizon: int) -> list[list[float]]:
        """`Engine.forecast_histories(histories, horizon)`, coalesced with concurrent ones."""
        loop = asyncio.get_running_loop()
        pending = _Pending([], loop.create_future(), loop, histories, horizon)
        self._queue.put(pending)
        return await pending.future

    async def run(self, call: Callable[[], object], series: int):
        """`call()` (an engine call of `series` series: a columnar bulk append) on the worker, in
        queue order with the batches around it; its result, or the EngineError it raised."""
        loop = asyncio.get_running_loop()
        pending = _Pending([], loop.create_future(), loop, call=call, weight=series)
        self._queue.put(pending)
        return await pending.future

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch, size, stop = [first], first.size, False
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
            size += nxt.size
        return batch, stop

    def _next(self) -> _Pending | None:
        """The first request waiting; while none does, the steps bulk ingests deferred are taken
        (a slice of series at a time, so a request that arrives waits for one slice at most)."""
        while self._settles:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            start = time.perf_counter()
            try:
                if not self.engine.settle_some(SETTLE_ROWS):
                    break
            except BaseException:  # (they stay deferred: the next read of a series steps them)
                log.exception("deferred steps failed")
                break
            if self.metrics is not None:
                self.metrics.step.labels("deferred").observe(time.perf_counter() - start)
        return self._queue.get()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._next()
            if first is None:
                break
            batch, stop = self._gather(first)
            self._last_requests = len(batch)
            start = time.perf_counter()
            appends = [p for p in batch if p.histories is None and p.call is None]
            outcomes: dict[int, object] = {}
            if appends:
                try:
                    results = self.engine.apply_batch([p.ops for p in appends])
                except BaseException as exc:  # unexpected: every request of the batch gets it
                    log.exception("batch of %d requests failed", len(appends))
                    results = [_internal(exc)] * len(appends)
                outcomes.update((id(p), r) for p, r in zip(appends, results))
            for p in batch:
                if p.call is not None:  # (its series are locked by the HTTP layer: no other
                    outcomes[id(p)] = _called(p.call)  # request of the batch touches them)
            by_horizon: dict[int, list[_Pending]] = {}
            for p in batch:
                if p.histories is not None:
                    by_horizon.setdefault(p.horizon, []).append(p)
            for horizon, group in by_horizon.items():
                outcomes.update(self._forecast_group(horizon, group))
            if self.metrics is not None:
                self.metrics.observe_batch(len(batch), sum(p.size for p in batch),
                                           time.perf_counter() - start)
            for p in batch:
                p.loop.call_soon_threadsafe(_resolve, p.future, outcomes[id(p)])

    def _forecast_group(self, horizon: int, group: list[_Pending]) -> dict[int, object]:
        """One engine call for the group's stateless forecasts; if it is refused, one per
        request, so each gets its own result or error."""
        if len(group) > 1:
            try:
                means = self.engine.forecast_histories(
                    [h for p in group for h in p.histories], horizon)
            except EngineError:
                pass  # (someone's input: find whose, below)
            except BaseException as exc:
                log.exception("stateless forecast of %d requests failed", len(group))
                return {id(p): _internal(exc) for p in group}
            else:
                out, at = {}, 0
                for p in group:
                    out[id(p)] = means[at:at + len(p.histories)]
                    at += len(p.histories)
                return out
        out = {}
        for p in group:
            try:
                out[id(p)] = self.engine.forecast_histories(p.histories, horizon)
            except BaseException as exc:
                if not isinstance(exc, EngineError):
                    log.exception("stateless forecast failed")
                out[id(p)] = exc if isinstance(exc, EngineError) else _internal(exc)
        return out


def _called(call: Callable[[], object]):
    try:
        return call()
    except BaseException as exc:
        if not isinstance(exc, EngineError):
            log.exception("engine call failed")
        return _internal(exc)


def _internal(exc: BaseException) -> EngineError:
    return exc if isinstance(exc, EngineError) else EngineError(500, f"internal error: {exc}")


def work_of(values: int, forecast: int) -> int:
    """A request's model work, in points: the values it appends plus the points it forecasts (a
    forecast patch costs about what an appended patch does). A bulk append naming one series
    1,024 times with horizon 2,048 appends few values but runs 1,024 forecasts one after
    another (a minute on the CPU): counted by values alone, it held the batcher's one worker,
    and every other client, for all of it."""
    return values + forecast


class Executor:
    """Where a request's model work runs: coalesced by the batcher (`Scheduler`) when batching is
    on, else in the thread pool; a request of more than `large_points` points of work always
    takes the thread pool, since the batcher's one worker would otherwise hold every other
    client's batch until it is done (its series are locked by the HTTP layer meanwhile, so no
    batch touches them)."""

    def __init__(self, engine: Engine, batcher: Scheduler | None, large_points: int, metrics):
        self.engine, self.batcher, self.large_points, self.metrics = engine, batcher, large_points, metrics

    def is_large(self, points: int) -> bool:
        return points > self.large_points

    async def off_loop(self, points: int, fn, *args):
        """`fn(*args)`, in the thread pool for a large request: checking and planning 500,000
        timestamps takes seconds, which on the event loop would stall every other client."""
        return await run_in_threadpool(fn, *args) if self.is_large(points) else fn(*args)

    async def ops(self, ops: list[Op], label: str, single=None, work: int | None = None):
        """The results of `ops`, one per op (or the EngineError refusing them): `single`, a
        call for a one-op request (the engine's per-series path), when not batched."""
        if work is None:  # (when the caller has not counted it: a one-op request)
            work = work_of(sum(len(o.values or ()) for o in ops), sum(o.horizon or 0 for o in ops))
        if self.batcher is not None and not self.is_large(work):
            return await self.batcher.submit(ops)
        if single is not None:
            return [await run_in_threadpool(self.metrics.timed, label, *single)]
        out = (await run_in_threadpool(self.metrics.timed, label, self.engine.apply_batch, [ops]))[0]
        if isinstance(out, EngineError):
            raise out
        return out

    async def call(self, label: str, work: int, series: int, fn, *args):
        """`fn(*args)`, an engine call of its own (a columnar bulk append of `series` series and
        `work` points of work): on the batcher's worker when batching is on and it is not
        large, else in the thread pool."""
        if self.batcher is not None and not self.is_large(work):
            out = await self.batcher.run(functools.partial(fn, *args), series)
            if isinstance(out, EngineError):
                raise out
            return out
        return await run_in_threadpool(self.metrics.timed, label, fn, *args)

    async def forecast(self, histories: list[list[float]], horizon: int, values: int):
        """Stateless forecasts of `histories` (`values` points given)."""
        if self.batcher is not None and not self.is_large(work_of(values, horizon * len(histories))):
            return await self.batcher.forecast(histories, horizon)
        return await run_in_threadpool(self.metrics.timed, "forecast", self.engine.forecast_histories,
                                       histories, horizon)
