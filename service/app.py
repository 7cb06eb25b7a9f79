"""The HTTP app: middleware, the routers, the error shape. Routes live in service/routes/, what
they share in service/deps.py, start-up in service/lifespan.py. No model code here."""

from __future__ import annotations

import copy

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service import docs, errors, lifespan
from service.auth import ApiKeyAuth, load_keys
from service.engine import Engine
from service.limits import BodySizeLimit
from service.metrics import Metrics, RequestMetrics
from service.routes import bulk, cluster, forecast, ops, series
from service.series_locks import SeriesLocks
from service.settings import Settings

DESCRIPTION = ("Forecasts from a small RWKV-7 patch model. Streaming series keep a constant-size "
               "state on the server: append new points and forecast without resending the history. "
               "Every refusal is a 4xx with `{detail, field}` naming the offending field.")


class ReplicaHeader:
    """Pure ASGI middleware: `X-Rimer-Replica: <--replica-name>` on every answer, so a client
    (and the cluster tests) can see which replica behind a proxy answered."""

    def __init__(self, app, name: str):
        self.app, self.header = app, (b"x-rimer-replica", name.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The app; `engine` may be given (tests), else it is loaded from `settings` at startup."""
    app = FastAPI(title="Rimer forecasting service", version="0.1.0", lifespan=lifespan.lifespan,
                  description=DESCRIPTION, openapi_tags=docs.TAGS, docs_url=None, redoc_url=None)
    app.state.settings, app.state.opened = settings, {}
    app.state.start = lambda: lifespan.start(app, settings, engine)
    app.state.series_locks = SeriesLocks()
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
    if settings.replica_name:  # outermost: every answer says which replica gave it
        app.add_middleware(ReplicaHeader, name=settings.replica_name)
    errors.install(app)
    docs.install(app)
    for router in (ops.router, forecast.router, bulk.router, series.router, cluster.router):
        # Their routes themselves, not FastAPI's lazy wrapper of an included router (0.165's
        # `include_router`): the 405 answer's Allow list and the metrics' route templates walk
        # `app.routes`, and see routes only.
        app.router.routes.extend(router.routes)
    add_head_routes(app)
    return app


def add_head_routes(app: FastAPI) -> None:
    """HEAD beside every GET route that has none (RFC 9110, 9.1: a server supports GET and HEAD;
    `curl -I /series/x` was a 405): the same endpoint and checks, kept out of the schema (one
    operation per path there), answered without the body (uvicorn sends none to a HEAD)."""
    routes = [r for r in app.router.routes if isinstance(r, APIRoute)]
    have = {(r.path, m) for r in routes for m in r.methods}
    for r in routes:
        if "GET" in r.methods and (r.path, "HEAD") not in have:
            head = copy.copy(r)  # (the route whole: its response model and settings, so that
            # the headers, content-length included, are GET's)
            head.methods, head.name, head.include_in_schema = {"HEAD"}, f"{r.name}_head", False
            app.router.routes.append(head)
