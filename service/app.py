"""HTTP layer: validate requests, shape JSON, map engine errors to 4xx. No model code here."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from pathlib import Path as PathLib

import pydantic
import pydantic_core
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service import distribution, schemas, timeline
from service.auth import ApiKeyAuth, load_keys
from service.cache import IdleExpiry
from service.engine import Engine, EngineError, Op
from service.limits import BodySizeLimit
from service.metrics import Metrics, RequestMetrics
from service.scheduler import Scheduler
from service.settings import Settings
from service.store import Store
from service.strict_json import DuplicateKeyError, StrictJsonRoute
from service.timeline import TimelineError

log = logging.getLogger("rimer.service")
GC_THRESHOLDS = (50_000, 20, 100)  # gc.set_threshold once the service has started (see lifespan)
SeriesId = Path(pattern=schemas.SERIES_ID_PATTERN, description=schemas.SERIES_ID_RULE)


def known_query(request: Request) -> None:
    """The route's own query parameters, each once: `?horizon=24` on an append (whose horizon is
    in the body) would otherwise be ignored without a word, as would a misspelt or repeated
    one, where an unknown field of a JSON body is a 422."""
    route = request.scope.get("route")
    allowed = {p.alias for p in route.dependant.query_params}
    seen = set()
    for key, _ in request.query_params.multi_items():
        shown = key if len(key) <= 64 else key[:64] + "..."
        if key not in allowed:
            takes = ", ".join(sorted(allowed)) or "no query parameters"
            raise EngineError(422, f"unknown query parameter {shown!r}; this route takes "
                                   f"{takes}", shown)
        if key in seen and key not in REPEATABLE:
            raise EngineError(422, f"query parameter {shown!r} is given more than once", shown)
        seen.add(key)


KnownQuery = [Depends(known_query)]
REPEATABLE = {"level", "quantiles"}  # query lists: ?level=80&level=95
LevelQuery = Query(None, description=schemas.LEVEL_RULE)
QuantilesQuery = Query(None, description=schemas.QUANTILES_RULE)


def require_quantiles(e: Engine, **asked) -> None:
    """A 422 naming the first distribution field asked of a model that predicts no quantiles."""
    for name, value in asked.items():
        if value and not e.model.cfg.quantiles:
            raise EngineError(422, f"{name}: the model {e.name!r} predicts no quantiles, so it "
                                   "gives no intervals (serve a model with a quantile head)", name)


def shaped(fc, level, quantiles) -> dict:
    """A forecast's JSON: the mean, and the intervals and quantiles asked for."""
    out = {"mean": fc}
    if level:
        out["intervals"] = distribution.intervals(fc, level)
    if quantiles:
        out["quantiles"] = distribution.quantiles(fc, quantiles)
    return out


def _field_path(error: dict) -> str:
    """`series[0].values[2]` for a pydantic error's loc; `body` for the body as a whole (a
    JSON decode error's loc ends in a character offset, not a field)."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid" or loc == ("body",):
        return "body"
    parts = [str(p) for p in loc if p not in ("body", "path", "query")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def json_response(content: dict) -> Response:
    """`content` (built by this layer, no None fields) as JSON, written by pydantic-core (non-finite
    floats as null, as pydantic writes them). Returned from a route, it skips FastAPI's validation
    of our own output against the route's response model, which took 5 ms of a 1,000-series bulk
    append (more than the model step of its ~31 completed patches); the model still documents the
    route. pydantic-core writes floats 15x faster than the json module (96,000 floats: 6.8 against
    102 ms), the bulk of a many-series forecast."""
    return Response(pydantic_core.to_json(content, inf_nan_mode="null"),
                    media_type="application/json")


def _with_stamps(item: dict, stamps: list[str] | None) -> dict:
    """`item` with its forecast's `timestamps` when the series has them (no null field)."""
    return item if stamps is None else {**item, "timestamps": stamps}


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The app; `engine` may be given (tests), else it is loaded from `settings` at startup."""

    opened: dict = {}  # what start() opened, for the lifespan's shutdown

    def start() -> None:
        """Load the weights, recover the series and start the workers: the lifespan's startup,
        callable before serving (`python -m service` does, to report a broken checkpoint or data
        directory in one line rather than uvicorn's traceback); a second call does nothing."""
        if opened:
            return
        spill_dir = settings.spill_dir or (str(PathLib(settings.data_dir) / "spill")
                                           if settings.data_dir else None)
        loaded = engine or Engine.load(settings.weights, settings.device, settings.max_series,
                                       settings.backend, capacity=settings.cache_capacity,
                                       host_capacity=settings.host_capacity, spill_dir=spill_dir)
        store = None
        if settings.data_dir:  # recover before serving: /readyz says ready only after this
            store = Store(settings.data_dir, loaded, settings.fsync, settings.fsync_interval_ms,
                          settings.snapshot_interval_s, metrics)
            try:
                store.open()
            except BaseException:
                if engine is None:
                    loaded.close()
                raise
        scheduler = (Scheduler(loaded, settings.batch_window_ms, settings.max_batch, metrics)
                     if settings.batch_window_ms > 0 else None)
        app.state.store, app.state.scheduler, app.state.engine = store, scheduler, loaded
        expiry = IdleExpiry(loaded, settings.idle_expiry_s) if settings.idle_expiry_s > 0 else None
        opened.update(engine=loaded, store=store, scheduler=scheduler, expiry=expiry)
        if engine is None:
            # The weights, torch and the recovered states are long-lived: keep them out of the
            # cyclic collector's full passes, which otherwise walk them every few bulk requests.
            gc.collect()
            gc.freeze()
            # And collect the young generation every 50,000 allocations, not 700: a bulk append
            # of 1,000 series allocates tens of thousands of short-lived objects (freed by their
            # reference counts, not by the collector), and each full pass also walks every
            # series' entry. Measured through HTTP (1,000-series bulk appends, 3 alternating
            # runs each): +12% points/s one client at a time, +21% with 4 at once.
            gc.set_threshold(*GC_THRESHOLDS)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        start()
        yield
        for worker in (opened["expiry"], opened["scheduler"]):
            if worker is not None:
                worker.close()
        if opened["store"] is not None:
            opened["store"].close(snapshot=True)
        if engine is None:
            opened["engine"].close()
        opened.clear()

    app = FastAPI(title="Rimer forecasting service", version="0.1.0", lifespan=lifespan)
    app.router.route_class = StrictJsonRoute  # a key given twice in a JSON object: 422
    app.state.start = start
    metrics = app.state.metrics = Metrics(lambda: getattr(app.state, "engine", None),
                                          lambda: getattr(app.state, "store", None))
    # add_middleware puts the last one outermost: metrics (sees every status), keys, body size.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.body_timeout_s)
    keys = load_keys(settings.api_keys, settings.api_keys_file)
    if keys:
        open_paths = {"/healthz", "/readyz"} | ({"/metrics"} if settings.metrics_public else set())
        app.add_middleware(ApiKeyAuth, keys=keys, open_paths=frozenset(open_paths))
    app.add_middleware(RequestMetrics, metrics=metrics, routes=lambda: app.routes)

    @app.exception_handler(EngineError)
    async def engine_error(_: Request, exc: EngineError):
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status)

    @app.exception_handler(DuplicateKeyError)
    async def duplicate_key(request: Request, exc: DuplicateKeyError):
        shown = exc.key if len(exc.key) <= 64 else exc.key[:64] + "..."
        return JSONResponse({"detail": f"key {shown!r} is given more than once in a JSON object",
                             "field": shown}, status_code=422)

    @app.exception_handler(TimelineError)
    async def timeline_error(_: Request, exc: TimelineError):
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _field_path(first)
        message = schemas.error_message(first)
        content_type = request.headers.get("content-type", "")
        if field == "body" and content_type and "json" not in content_type.lower():
            # (FastAPI reads a body as JSON only when it is declared so, or not declared.)
            shown = content_type if len(content_type) <= 100 else content_type[:100] + "..."
            message = f"the body must be JSON, sent as application/json; got {shown!r}"
        detail = f"{field}: {message}" if field else message
        clean = [{"field": _field_path(e), "message": schemas.error_message(e)}
                 for e in errors[:20]]
        return JSONResponse({"detail": detail, "field": field or None, "errors": clean},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI's own 400 for a body it cannot parse at all (bytes that are not UTF-8, JSON
        # nested past the parser's depth) names no field; it is the body's. 404/405: no field.
        field = "body" if exc.status_code == 400 else None
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method of every route of this path, not the first's
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse({"detail": exc.detail, "field": field}, status_code=exc.status_code,
                            headers=headers or None)

    def allowed_methods(request: Request) -> list[str]:
        methods = set()
        for route in request.app.router.routes:
            if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
                methods |= route.methods
        return sorted(methods)

    def engine_of(request: Request) -> Engine:
        e = getattr(request.app.state, "engine", None)
        if e is None:
            raise EngineError(503, "the model is not loaded yet; see GET /readyz")
        return e

    def check_plain_ints(request: Request, *names: str) -> None:
        """Query integers as plain digits: FastAPI would read `8_0` as 80 and `8.0` or `+8` as 8."""
        for name in names:
            for raw in request.query_params.getlist(name):
                if not (raw.isascii() and raw.isdigit()):
                    raise EngineError(422, schemas.plain_digits(name), name)

    def check_horizon(horizon: int | None, field: str = "horizon") -> None:
        if horizon is not None and horizon > settings.max_horizon:
            shown = f" {horizon}" if horizon < 10**12 else ""  # (not a 4,000-digit echo)
            raise EngineError(422, f"horizon{shown} is above the limit of "
                                   f"{settings.max_horizon}", field)

    def check_points(count: int, field: str) -> None:
        if count > settings.max_points_per_request:
            raise EngineError(413, f"{count} values in one request; the limit is "
                                   f"{settings.max_points_per_request}", field)

    # Requests on one streaming series run one at a time (service/timeline.py): an append's
    # filled values and metadata are computed from the metadata it replaces.
    series_locks = app.state.series_locks = timeline.SeriesLocks()

    def series_exists(e: Engine, series_id: str) -> bool:
        # Every append through this layer sets metadata; else (logged before timestamps
        # existed, or none) ask the engine. Requests on one series are serialised here, so
        # nothing else creates or deletes this series meanwhile.
        return series_id in e.meta or e.held_length(series_id) is not None

    def is_large(values: int) -> bool:
        return values > settings.batch_max_points

    def work_of(values: int, forecast: int) -> int:
        """A request's model work, in points: the values it appends plus the points it
        forecasts (a forecast patch costs about what an appended patch does). A
        bulk append naming one series 1,024 times with horizon 2,048 appends few values but
        runs 1,024 forecasts one after another (a minute on the CPU): counted by values alone,
        it held the batcher's one worker, and every other client, for all of it."""
        return values + forecast

    async def off_loop(large: bool, fn, *args):
        """`fn(*args)`, in the thread pool for a large request: checking and planning 500,000
        timestamps takes seconds, which on the event loop would stall every other client."""
        return await run_in_threadpool(fn, *args) if large else fn(*args)

    def plan_append(e: Engine, series_id: str, item, budget: int, prefix: str,
                    chain: dict[str, dict]) -> timeline.Plan:
        """Gaps and nulls filled, and the metadata after the append; `chain` holds the metadata
        earlier items of the same request leave (a bulk append may name a series twice)."""
        if series_id in chain:
            meta, exists = chain[series_id], True
        else:
            meta = e.meta.get(series_id)
            exists = meta is not None or series_exists(e, series_id)
        planned = timeline.plan_append(meta, exists, item.values, item.timestamps, item.freq,
                                       budget, prefix)
        chain[series_id] = planned.meta
        return planned

    def check_many(body) -> int:
        """The limits of a request of many series: horizon, series and values; its values."""
        check_horizon(body.horizon)
        if len(body.series) > settings.max_series_per_request:
            raise EngineError(413, f"{len(body.series)} series in one request; the limit is "
                                   f"{settings.max_series_per_request}", "series")
        points = sum(len(s.values) for s in body.series)
        check_points(points, "series")
        return points

    @app.get("/healthz", response_model=schemas.Health)
    async def healthz():
        """Liveness: the process answers (weights may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "the model is not loaded yet"}})
    async def readyz(request: Request):
        """Readiness: 200 once the weights are loaded, 503 before."""
        e = getattr(request.app.state, "engine", None)
        if e is None:
            return JSONResponse({"status": "loading", "detail": "the model is not loaded yet"},
                                status_code=503)
        return {"status": "ready", "model": e.name, "backend": e.backend, "device": str(e.device)}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/models", response_model=schemas.ModelsResponse, dependencies=KnownQuery)
    async def models(request: Request):
        e = engine_of(request)
        return {"models": [{"name": e.name, "config": e.model.cfg.to_dict(),
                            "manifest": e.manifest, "streamable": e.model.cfg.streamable,
                            "device": str(e.device)}]}

    @app.post("/forecast", response_model=schemas.ForecastResponse,
              response_model_exclude_none=True, dependencies=KnownQuery)
    async def forecast(body: schemas.ForecastRequest, request: Request):
        check_many(body)
        require_quantiles(engine_of(request), level=body.level, quantiles=body.quantiles)

        def plan() -> tuple[list, list]:
            histories, stamps, budget = [], [], settings.max_gap_points
            for i, s in enumerate(body.series):  # the streaming rules, from an empty series
                planned = timeline.plan_append(None, False, s.values, s.timestamps, s.freq,
                                               budget, f"series[{i}]")
                budget -= planned.filled
                histories.append(planned.values)
                stamps.append(timeline.forecast_timestamps(planned.meta, body.horizon))
            return histories, stamps

        values = sum(len(s.values) for s in body.series)
        histories, stamps = await off_loop(is_large(values), plan)
        check_points(sum(len(h) for h in histories), "series")
        e = engine_of(request)
        scheduler = getattr(request.app.state, "scheduler", None)
        large = is_large(work_of(values, body.horizon * len(body.series)))
        if scheduler is not None and not large:  # coalesced with concurrent ones
            means = await scheduler.forecast(histories, body.horizon)
        else:
            means = await run_in_threadpool(metrics.timed, "forecast", e.forecast_histories,
                                            histories, body.horizon)
        metrics.points_forecast.labels("forecast").inc(body.horizon * len(body.series))
        return json_response({"model": e.name, "horizon": body.horizon, "forecasts": [
            _with_stamps({"id": s.id, **shaped(m, body.level, body.quantiles)}, t)
            for s, m, t in zip(body.series, means, stamps)]})

    async def run_ops(request: Request, ops: list[Op], op: str, single=None,
                      work: int | None = None):
        """Through the scheduler when batching is on; else in the thread pool, `single` for
        a one-op request (the engine's per-series path) or one engine batch. A request of more
        than --batch-max-points points of work (values appended plus points forecast) also
        takes the thread pool: the scheduler's one worker would otherwise hold every other
        client's batch until it is done (its series are locked by this layer meanwhile, so no
        batch touches them)."""
        e = engine_of(request)
        scheduler = getattr(request.app.state, "scheduler", None)
        if work is None:  # (when the caller has not counted it: a one-op request)
            work = work_of(sum(len(o.values or ()) for o in ops), sum(o.horizon or 0 for o in ops))
        if scheduler is not None and not is_large(work):
            return await scheduler.submit(ops)
        if single is not None:
            return [await run_in_threadpool(metrics.timed, op, *single)]
        out = (await run_in_threadpool(metrics.timed, op, e.apply_batch, [ops]))[0]
        if isinstance(out, EngineError):
            raise out
        return out

    @app.post("/series/append", response_model=schemas.BulkAppendResponse,
              response_model_exclude_none=True, dependencies=KnownQuery)
    async def bulk_append(body: schemas.BulkAppendRequest, request: Request):
        """Append to many series at once; checked whole: one bad item refuses them all."""
        points = check_many(body)
        e = engine_of(request)
        check_distribution(e, body)

        def plan_all() -> tuple[list[Op], int]:
            """The ops, and their values (given ones plus those filled into gaps)."""
            ops, chain, budget, horizon = [], {}, settings.max_gap_points, body.horizon
            meta_of = e.meta
            for i, s in enumerate(body.series):
                sid, prefix = s.id, f"series[{i}]"
                # The common case first (one dict lookup, no Plan); the rules for the rest.
                meta = (None if sid in chain else
                        timeline.plain_append_meta(meta_of.get(sid), s.values, s.timestamps, s.freq))
                if meta is not None:
                    chain[sid], values = meta, s.values
                else:
                    planned = plan_append(e, sid, s, budget, prefix, chain)
                    budget -= planned.filled
                    values, meta = planned.values, planned.meta
                ops.append(Op(sid, values, horizon, prefix, meta=meta))
            filled = budget < settings.max_gap_points  # (gaps add values; nulls do not)
            return ops, sum(len(op.values) for op in ops) if filled else points

        async def work():
            ops, planned = await off_loop(is_large(points), plan_all)
            check_points(planned, "series")
            stamps = ([timeline.forecast_timestamps(op.meta, body.horizon, op.field("horizon"))
                       for op in ops] if body.horizon else [None] * len(ops))
            work = work_of(planned, (body.horizon or 0) * len(ops))
            if body.anomaly_level is None:
                return ops, planned, stamps, await run_ops(request, ops, "bulk_append", work=work), None
            # anomaly flags: before each item, a forecast of its points from the state before it
            firsts = [before_op(e, op.series_id, len(op.values), op.prefix) for op in ops]
            lengths = {}  # (a series named again is forecastable after its earlier items)
            for i, op in enumerate(ops):
                if firsts[i] is None and lengths.get(op.series_id, 0) >= e.patch_len:
                    firsts[i] = Op(op.series_id, None, min(len(op.values), settings.max_horizon), op.prefix)
                lengths[op.series_id] = lengths.get(op.series_id, e.held_length(op.series_id) or 0) \
                    + len(op.values)
            both = [o for first, op in zip(firsts, ops) for o in ((first, op) if first else (op,))]
            results = await run_ops(request, both, "bulk_append", work=work)
            out, befores, at = [], [], 0
            for first in firsts:
                befores.append(results[at][1] if first else None)
                at += 1 if first is None else 2
                out.append(results[at - 1])
            return ops, planned, stamps, out, befores

        ops, planned, stamps, results, befores = await series_locks.run([s.id for s in body.series], work)
        metrics.points_appended.inc(planned)
        if not body.horizon and befores is None:  # lengths only (a bulk ingest's case)
            return json_response({"series": [{"id": s.id, "length": length}
                                             for s, (length, _) in zip(body.series, results)]})
        out, forecast = [], 0
        for i, (s, (length, mean), t) in enumerate(zip(body.series, results, stamps)):
            item = {"id": s.id, "length": length}
            if mean is not None:
                item["forecast"] = _with_stamps(shaped(mean, body.level, body.quantiles), t)
                forecast += len(mean)
            if befores is not None:
                item["anomalies"] = flagged(befores[i], ops[i].values, body.anomaly_level)
            out.append(item)
        if forecast:
            metrics.points_forecast.labels("append").inc(forecast)
        return json_response({"series": out})

    @app.get("/series", response_model=schemas.SeriesList, dependencies=KnownQuery)
    async def series_list(request: Request, limit: int = Query(100, ge=1, le=1000),
                          cursor: str | None = Query(None, description="`next_cursor` of the "
                                                     "previous page")):
        """Streaming series held, with their lengths, in id order, a page at a time."""
        check_plain_ints(request, "limit")
        page = engine_of(request).list_series(limit + 1, cursor)
        more = len(page) > limit
        page = page[:limit]
        return {"series": [{"id": i, "length": n} for i, n in page],
                "next_cursor": page[-1][0] if more else None}

    def check_distribution(e: Engine, body) -> None:
        """Intervals and quantiles need a model with quantiles, and a forecast to draw them on."""
        require_quantiles(e, level=body.level, quantiles=body.quantiles,
                          anomaly_level=body.anomaly_level)
        for name in ("level", "quantiles"):
            if getattr(body, name) and body.horizon is None:
                raise EngineError(422, f"{name} needs a horizon (they describe the forecast)", name)

    def before_op(e: Engine, series_id: str, values: int, prefix: str = "") -> Op | None:
        """For anomaly flags: a forecast of the points an append brings, made before it (None
        where the series has no forecast yet: unknown, or under one patch)."""
        held = e.held_length(series_id)
        if held is None or held < e.patch_len:
            return None
        return Op(series_id, None, min(values, settings.max_horizon), prefix)

    def flagged(before, values: list[float], level: float | None) -> list[dict] | None:
        if level is None:
            return None
        found = distribution.outside(before, values, level) if before is not None else []
        metrics.anomalies.inc(len(found))
        return found

    @app.post("/series/{series_id}/append", response_model=schemas.AppendResponse,
              response_model_exclude_none=True, dependencies=KnownQuery)
    async def append(body: schemas.AppendRequest, request: Request,
                     series_id: str = SeriesId):
        check_horizon(body.horizon)
        check_points(len(body.values), "values")
        e = engine_of(request)
        check_distribution(e, body)

        async def work():
            p = await off_loop(is_large(len(body.values)), plan_append, e, series_id, body,
                               settings.max_gap_points, "", {})
            check_points(len(p.values), "values")
            stamps = timeline.forecast_timestamps(p.meta, body.horizon) if body.horizon else None
            ops = [Op(series_id, p.values, body.horizon, meta=p.meta)]
            first = before_op(e, series_id, len(p.values)) if body.anomaly_level is not None else None
            if first is None:
                [(length, mean)] = await run_ops(
                    request, ops, "append", (e.append, series_id, p.values, body.horizon, p.meta))
                return p, length, mean, stamps, None
            [(_, before), (length, mean)] = await run_ops(request, [first, *ops], "append")
            return p, length, mean, stamps, before

        p, length, mean, stamps, before = await series_locks.run([series_id], work)
        metrics.points_appended.inc(len(p.values))
        if mean is not None:
            metrics.points_forecast.labels("append").inc(len(mean))
        out = {"id": series_id, "length": length}
        if mean is not None:
            out["forecast"] = {**shaped(mean, body.level, body.quantiles), "timestamps": stamps}
        out["anomalies"] = flagged(before, p.values, body.anomaly_level)
        return out

    @app.get("/series/{series_id}/forecast", response_model=schemas.SeriesForecastResponse,
             response_model_exclude_none=True, dependencies=KnownQuery)
    async def series_forecast(request: Request, series_id: str = SeriesId,
                              horizon: int = Query(96, ge=1),
                              level: list[float] | None = LevelQuery,
                              quantiles: list[float] | None = QuantilesQuery):
        check_plain_ints(request, "horizon")
        check_horizon(horizon)
        e = engine_of(request)
        try:
            dist = schemas.Distribution.model_validate({"level": level, "quantiles": quantiles})
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            raise EngineError(422, f"{_field_path(first)}: {schemas.error_message(first)}",
                              _field_path(first)) from None
        require_quantiles(e, level=dist.level, quantiles=dist.quantiles)

        async def work():
            stamps = timeline.forecast_timestamps(e.meta.get(series_id), horizon)
            [(length, mean)] = await run_ops(request, [Op(series_id, None, horizon)],
                                             "series_forecast",
                                             (e.forecast_series, series_id, horizon))
            return length, mean, stamps

        length, mean, stamps = await series_locks.run([series_id], work)
        metrics.points_forecast.labels("series_forecast").inc(horizon)
        return {"id": series_id, "length": length, "horizon": horizon,
                **shaped(mean, dist.level, dist.quantiles), "timestamps": stamps}

    @app.get("/series/{series_id}", response_model=schemas.SeriesInfo,
             response_model_exclude_none=True, dependencies=KnownQuery)
    async def series_info(request: Request, series_id: str = SeriesId):
        e = engine_of(request)

        async def work():
            return {**e.describe(series_id), **timeline.describe(e.meta.get(series_id))}

        return await series_locks.run([series_id], work)

    @app.delete("/series/{series_id}", status_code=204, dependencies=KnownQuery)
    async def series_delete(request: Request, series_id: str = SeriesId):
        e = engine_of(request)

        async def work():
            await run_in_threadpool(e.delete, series_id)  # may fsync the log

        await series_locks.run([series_id], work)
        return Response(status_code=204)

    return app
