"""Start-up and shut-down: load the weights, recover the series from the data directory, start
the batcher and idle expiry; on shut-down, stop them and write a last snapshot."""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from service.cache import IdleExpiry
from service.engine import Engine
from service.scheduler import Executor, Scheduler
from service.settings import Settings
from service.store import Store

GC_THRESHOLDS = (50_000, 20, 100)  # gc.set_threshold once the service has started


def start(app: FastAPI, settings: Settings, engine: Engine | None) -> None:
    """Load the weights, recover the series and start the workers: the lifespan's startup,
    callable before serving (`python -m service` does, to report a broken checkpoint or data
    directory in one line rather than uvicorn's traceback); a second call does nothing.
    `engine`, when given (tests), is used as it is and not closed at shut-down."""
    opened = app.state.opened
    if opened:
        return
    spill_dir = settings.spill_dir or (str(Path(settings.data_dir) / "spill")
                                       if settings.data_dir else None)
    loaded = engine or Engine.load(settings.weights, settings.device, settings.max_series,
                                   settings.backend, capacity=settings.cache_capacity,
                                   host_capacity=settings.host_capacity, spill_dir=spill_dir)
    loaded.model.realign = settings.realign_forecasts
    metrics, store = app.state.metrics, None
    if settings.data_dir:  # recover before serving: /readyz says ready only after this
        store = Store(settings.data_dir, loaded, settings.fsync, settings.fsync_interval_ms,
                      settings.snapshot_interval_s, metrics)
        try:
            store.open()
        except BaseException:
            if engine is None:
                loaded.close()
            raise
    batcher = (Scheduler(loaded, settings.batch_window_ms, settings.max_batch, metrics)
               if settings.batch_window_ms > 0 else None)
    app.state.executor = Executor(loaded, batcher, settings.batch_max_points, metrics)
    app.state.store, app.state.scheduler, app.state.engine = store, batcher, loaded
    expiry = IdleExpiry(loaded, settings.idle_expiry_s) if settings.idle_expiry_s > 0 else None
    opened.update(engine=loaded, own_engine=engine is None, store=store, scheduler=batcher,
                  expiry=expiry)
    if engine is None:
        # The weights, torch and the recovered states are long-lived: keep them out of the
        # cyclic collector's full passes, which otherwise walk them every few bulk requests.
        gc.collect()
        gc.freeze()
        # And collect the young generation every 50,000 allocations, not 700: a bulk append of
        # 1,000 series allocates tens of thousands of short-lived objects (freed by their
        # reference counts), and each full pass also walks every series' entry (bench/RESULTS.md).
        gc.set_threshold(*GC_THRESHOLDS)


def stop(app: FastAPI) -> None:
    """Stop the workers, snapshot the series, close what start() opened."""
    opened = app.state.opened
    for worker in (opened["expiry"], opened["scheduler"]):
        if worker is not None:
            worker.close()
    if opened["store"] is not None:
        opened["store"].close(snapshot=True)
    if opened["own_engine"]:
        opened["engine"].close()
    opened.clear()


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.start()
    yield
    stop(app)
