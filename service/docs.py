"""The API's documentation, offline: Swagger UI and ReDoc served from the pinned
`fastapi-offline` package's assets (no CDN), tags, the real error body of every 4xx a route
can answer, and request examples that the service accepts."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.schemas import ErrorBody, ValidationErrorBody

ASSETS = "/docs-assets"
TAGS = [
    {"name": "forecasts", "description": "Stateless forecasts: send whole histories, get forecasts."},
    {"name": "series", "description": "Streaming series: each keeps a constant-size state on the "
                                      "server; append new points and forecast from it."},
    {"name": "operations", "description": "Health, readiness and the loaded model."},
    {"name": "cluster", "description": "Moving a series between replicas: its state out as one "
                                       "checked record, and in again (deploy/rebalance.py)."},
]
WHEN = {
    401: "a missing or wrong API key (when the service has keys)",
    404: "the series is unknown",
    409: "the request conflicts with the series or the service: a timestamp not after the "
         "series' last one, the most series the service holds, or a model that cannot stream",
    413: "the body, or its series or values, over the service's limits, or an answer over "
         "`--max-answer-values` (series x horizon x values per point)",
    415: "a compressed body (`content-encoding`): send it uncompressed",
    422: "a field is invalid: `field` names it (`series[2].values[5]`)",
    503: "the model is still loading (see GET /readyz), or the write-ahead log cannot be written",
}


def _invalid(field: str) -> dict:
    """A 422's body for a NaN as the point `field` (service/errors.py's shape)."""
    message = "must be finite (a missing point is null)"
    return {"detail": f"{field}: {message}", "field": field,
            "errors": [{"field": field, "message": message}]}


# One body each code really sends (as the service words them), shown in /docs.
EXAMPLE = {
    401: {"detail": "an API key is required: send 'Authorization: Bearer <key>' or "
                    "'X-API-Key: <key>'", "field": "authorization"},
    404: {"detail": "unknown series 'nope'", "field": "id"},
    409: {"detail": "timestamps[0] (2024-01-01T00:30:00Z) is before the series' last timestamp "
                    "(2024-01-01T01:00:00Z): points are appended in time order, each once",
          "field": "timestamps[0]"},
    413: {"detail": "101 values in one request; the limit is 100", "field": "values"},
    415: {"detail": "content-encoding 'gzip' is not accepted; send the body uncompressed",
          "field": "content-encoding"},
    422: _invalid("values[1]"),
    503: {"detail": "the model is not loaded yet; see GET /readyz", "field": None},
}
# `POST /series/append`'s 422 in each of its forms (a NaN as the second point), as sent
# (the same words; the field differs).
BULK_422 = {"per item": _invalid("series[0].values[1]"), "columnar": _invalid("values[1]")}


def errors(*codes: int, named: dict[int, dict[str, dict]] | None = None) -> dict:
    """The `responses` of a route: each 4xx/5xx it may answer, with the body it really sends
    (`named`: a code's bodies by name, where the route's forms word it differently)."""
    named = named or {}

    def shown(code: int) -> dict:
        if code in named:
            return {"examples": {name: {"summary": name, "value": body}
                                 for name, body in named[code].items()}}
        return {"example": EXAMPLE[code]}

    return {code: {"model": ValidationErrorBody if code == 422 else ErrorBody,
                   "description": WHEN[code],
                   "content": {"application/json": shown(code)}} for code in codes}


def _history(n: int) -> list[float]:
    return [round(10 + 0.5 * i + (3 if i % 24 < 12 else -3), 2) for i in range(n)]


FORECAST_EXAMPLES = {
    "one series": {"summary": "one series, 48 points, forecast 24",
                   "value": {"series": [{"id": "a", "values": _history(48)}], "horizon": 24}},
    "intervals": {"summary": "with 80% and 95% intervals",
                  "value": {"series": [{"id": "a", "values": _history(48)}], "horizon": 24,
                            "level": [80, 95]}},
    "timestamps": {"summary": "hourly timestamps: the forecast's own timestamps come back",
                   "value": {"series": [{"id": "a", "values": _history(40),
                                         "timestamps": [f"2024-05-0{1 + h // 24}T{h % 24:02d}:00:00Z"
                                                        for h in range(40)]}], "horizon": 8}},
}
APPEND_EXAMPLES = {
    "points": {"summary": "append 40 points (creates the series)", "value": {"values": _history(40)}},
    "with a forecast": {"summary": "append and forecast 24 points with 80% intervals",
                        "value": {"values": _history(40), "horizon": 24, "level": [80]}},
}
BULK_EXAMPLES = {
    "two series": {"summary": "append to two series in one request (all or nothing)",
                   "value": {"series": [{"id": "plant-7.load", "values": _history(40)},
                                        {"id": "b", "values": [2.0, 2.5]}]}},
    "columnar": {"summary": "the columnar form: ids, where each series' run starts, one flat "
                            "array of values (the faster form for many series)",
                 "value": {"ids": ["plant-7.load", "b", "c"], "offsets": [0, 40, 42],
                           "values": _history(40) + [2.0, 2.5, 7.0]}},
    "columnar with a forecast": {"summary": "the columnar form, forecasting each series 4 points",
                                 "value": {"ids": ["plant-7.load"], "offsets": [0],
                                           "values": _history(40), "horizon": 4}},
}


def install(app: FastAPI) -> None:
    """/docs and /redoc with their assets served by this service (create the app with
    docs_url=None and redoc_url=None)."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{ASSETS}/favicon.png", with_google_fonts=False)
