"""Prometheus metrics: one CollectorRegistry per app (several apps can live in one process).

Requests are labelled by route template (`/series/{series_id}/append`), never by the raw path,
so the number of label values is bounded by the number of routes; a path no route matches is
counted as `unmatched`. Engine figures are read at scrape time (nothing to keep in sync).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match

T = TypeVar("T")

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"
# Engine calls range from sub-millisecond one-patch appends to multi-second batch forecasts.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0)


class _EngineCollector(Collector):
    """Gauges read from the engine when Prometheus scrapes; nothing before the engine is loaded."""

    def __init__(self, get_engine: Callable[[], object | None]):
        self.get_engine = get_engine

    def collect(self):
        engine = self.get_engine()
        ready = GaugeMetricFamily("rimer_ready", "1 once the model weights are loaded")
        ready.add_metric([], 0.0 if engine is None else 1.0)
        yield ready
        if engine is None:
            return
        info = GaugeMetricFamily("rimer_model_info", "the model being served (value is always 1)",
                                 labels=["model", "backend", "device"])
        info.add_metric([engine.name, engine.backend, str(engine.device)], 1.0)
        yield info
        held = engine.series_held
        yield GaugeMetricFamily("rimer_series_held", "streaming series held now", value=held)
        yield GaugeMetricFamily("rimer_series_capacity", "most streaming series held at once "
                                "(--max-series)", value=engine.max_series)
        yield GaugeMetricFamily("rimer_series_steps_deferred", "series whose bulk-ingest steps "
                                "wait for the batcher's worker (docs/internals.md)",
                                value=engine.steps_deferred)
        yield GaugeMetricFamily("rimer_state_bytes_per_series", "bytes of recurrent state per "
                                "series (independent of its length)", value=engine.state_bytes)
        yield GaugeMetricFamily("rimer_state_bytes_held", "bytes of recurrent state of the series "
                                "held (the triton backend preallocates its whole pool)",
                                value=held * engine.state_bytes)
        sizes = GaugeMetricFamily("rimer_cache_series", "series states per cache tier (device: "
                                  "--cache-capacity, host: --host-capacity, disk: the rest)",
                                  labels=["tier"])
        for tier, n in engine.cache_sizes.items():
            sizes.add_metric([tier], float(n))
        yield sizes
        stats = engine.cache_stats
        yield CounterMetricFamily("rimer_cache_hits", "requests whose series' state was on the "
                                  "device", value=stats["hits"])
        yield CounterMetricFamily("rimer_cache_misses", "requests whose series' state was brought "
                                  "back from host memory or disk", value=stats["misses"])
        spill = engine.spill
        spills = CounterMetricFamily("rimer_cache_spills", "states handed down to a tier (host: "
                                     "from the device, disk: from host memory)", labels=["tier"])
        loads = CounterMetricFamily("rimer_cache_loads", "states taken back up from a tier",
                                    labels=["tier"])
        for tier in ("host", "disk"):
            spills.add_metric([tier], float(spill.spills[tier]) if spill else 0.0)
            loads.add_metric([tier], float(spill.loads[tier]) if spill else 0.0)
        yield spills
        yield loads
        yield CounterMetricFamily("rimer_cache_evictions", "series deleted after --idle-expiry-s "
                                  "without a request", value=stats["expired"])


class _StoreCollector(Collector):
    """The write-ahead log's lag, read from the store when Prometheus scrapes (with --data-dir)."""

    def __init__(self, get_store: Callable[[], object | None]):
        self.get_store = get_store

    def collect(self):
        store = self.get_store()
        if store is None:
            return
        lag = store.lag()
        yield GaugeMetricFamily("rimer_wal_unsynced_records", "log records written (appends "
                                "applied) but not yet fsynced: with --fsync interval, what a power "
                                "loss could take", value=lag["unsynced"])
        yield GaugeMetricFamily("rimer_wal_records_since_snapshot", "log records since the last "
                                "snapshot: what a restart now would replay", value=lag["since_snapshot"])
        yield GaugeMetricFamily("rimer_wal_failed", "1 when the write-ahead log failed (a full "
                                "disk, an I/O error): every change is refused until a restart "
                                "(/readyz answers 503 meanwhile)",
                                value=float(store.log_failure() is not None))


class Metrics:
    """The app's metrics and their registry."""

    def __init__(self, get_engine: Callable[[], object | None],
                 get_store: Callable[[], object | None] = lambda: None):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("rimer_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("rimer_http_request_duration_seconds",
                                 "time from request start to the last byte of the response",
                                 ["method", "route"], buckets=HTTP_BUCKETS, registry=r)
        self.in_progress = Gauge("rimer_http_requests_in_progress", "HTTP requests being answered",
                                 registry=r)
        self.step = Histogram("rimer_model_step_seconds",
                              "time inside successful engine calls (model compute, plus any wait "
                              "for the engine's lock)", ["op"], buckets=STEP_BUCKETS, registry=r)
        self.points_appended = Counter("rimer_points_appended", "values appended to streaming "
                                       "series", registry=r)
        self.points_forecast = Counter("rimer_points_forecast", "forecast values returned "
                                       "(horizon times series)", ["op"], registry=r)
        self.anomalies = Counter("rimer_anomalies", "appended points outside their series' "
                                 "calibrated interval (appends with anomaly_level)", registry=r)
        # Durability (service/store.py; zero without --data-dir).
        self.wal_records = Counter("rimer_wal_records", "records written to the write-ahead log",
                                   ["op"], registry=r)
        self.wal_bytes = Counter("rimer_wal_bytes", "bytes written to the write-ahead log", registry=r)
        self.wal_fsync = Histogram("rimer_wal_fsync_seconds", "duration of write-ahead log fsyncs",
                                   buckets=STEP_BUCKETS, registry=r)
        self.snapshot_seconds = Histogram("rimer_snapshot_duration_seconds", "time to write a "
                                          "snapshot of every series (export, write, fsync, rename)",
                                          buckets=HTTP_BUCKETS + (120.0, 300.0, 600.0), registry=r)
        self.snapshot_failures = Counter("rimer_snapshot_failures", "periodic snapshots that "
                                         "failed (the log keeps every change)", registry=r)
        self.recovery_seconds = Gauge("rimer_recovery_seconds", "time the start-up recovery took "
                                      "(snapshot load and log replay)", registry=r)
        self.recovery_records = Gauge("rimer_recovery_records_replayed", "write-ahead log records "
                                      "replayed at start-up", registry=r)
        # Micro-batching (service/scheduler.py): one observation per engine batch.
        self.batch_requests = Histogram("rimer_batch_requests", "HTTP requests coalesced into one "
                                        "engine batch", buckets=BATCH_BUCKETS, registry=r)
        self.batch_series = Histogram("rimer_batch_series", "series operations (appends and "
                                      "forecasts) in one engine batch", buckets=BATCH_BUCKETS,
                                      registry=r)
        r.register(_EngineCollector(get_engine))
        r.register(_StoreCollector(get_store))

    def observe_batch(self, requests: int, ops: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_series.observe(ops)
        self.step.labels("batch").observe(seconds)

    def timed(self, op: str, fn: Callable[..., T], *args) -> T:
        """Call `fn(*args)` (in the worker thread) and record its duration under `op`."""
        start = time.perf_counter()
        out = fn(*args)
        self.step.labels(op).observe(time.perf_counter() - start)
        return out

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Pure ASGI middleware: counts each request by method, route template and status, and
    observes its latency. Outermost, so it sees the 401s and 413s of the inner middlewares;
    `routes()` gives the app's routes, to name the template of a request answered before routing."""

    def __init__(self, app, metrics: Metrics, routes: Callable[[], list]):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _template(self, scope) -> str:
        route = scope.get("route")  # set by the router on the shared scope when a route matched
        if route is None:  # answered before routing (401, 413): match the path here
            for candidate in self.routes():
                match, _ = candidate.matches(scope)
                if match != Match.NONE:
                    route = candidate
                    break
        return getattr(route, "path", None) or UNMATCHED

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        m = self.metrics
        start = time.perf_counter()
        status = 500  # if the app raises before answering

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m.in_progress.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            m.in_progress.dec()
            template = self._template(scope)
            method = scope.get("method", "") if scope.get("method") in METHODS else "other"
            m.requests.labels(method, template, str(status)).inc()
            m.latency.labels(method, template).observe(time.perf_counter() - start)
