"""The one error every layer raises for a request it refuses, and the JSON body it becomes.

`ServiceError(status, message, field)` is what the engine (`EngineError`), the timeline rules
(`TimelineError`) and the routes raise; FastAPI's own validation and HTTP errors are answered in
the same shape: `{"detail": "...", "field": "..." | null}`, plus `errors` in every 422 (the
problems found: pydantic's checks list up to 20, the service's own stop at the first)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

MAX_ERRORS_LISTED = 20  # a validation answer's `errors`: the first ones, not one per bad element


class ServiceError(Exception):
    """A refused request: the HTTP `status`, a `message` for people, the `field` it names."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def shown(text: str, limit: int = 64) -> str:
    """A client's string, cut to `limit` characters for an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


def field_path(error: dict) -> str:
    """`series[0].values[2]` for a pydantic error's loc; `body` for the body as a whole (a
    JSON decode error's loc ends in a character offset, not a field)."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid" or loc in (("body",), ("body", "per-item")):
        return "body"
    out = ""
    if len(loc) > 1 and loc[0] == "body" and loc[1] in ("per-item", "columnar"):
        loc = loc[:1] + loc[2:]  # (POST /series/append's two forms: schemas.BulkAppendBody)
    for p in (str(p) for p in loc if p not in ("body", "path", "query")):
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
    body = {"detail": exc.message, "field": exc.field}
    if exc.status == 422:  # (every 422 lists its problems, as a validation answer does: these
        # checks stop at the first, so one)
        prefix = f"{exc.field}: " if exc.field else ""
        message = exc.message[len(prefix):] if prefix and exc.message.startswith(prefix) else exc.message
        body["errors"] = [{"field": exc.field or "body", "message": message}]
    return JSONResponse(body, status_code=exc.status)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    from service import schemas  # (schemas -> timeline -> errors: imported here, not at the top)

    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = field_path(first)
    message = schemas.error_message(first)
    content_type = request.headers.get("content-type", "")
    listed = [{"field": field_path(e), "message": schemas.error_message(e)}
              for e in errors[:MAX_ERRORS_LISTED]]
    if field == "body" and "json" not in content_type.lower():
        # (FastAPI reads a body as JSON only when it is declared so: the list says it too)
        got = f"got {shown(content_type, 100)!r}" if content_type else "no content-type was given"
        message = f"the body must be JSON, sent as application/json; {got}"
        listed[:1] = [{"field": "body", "message": message}]
    detail = f"{field}: {message}" if field else message
    return JSONResponse({"detail": detail, "field": field or None, "errors": listed},
                        status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
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


def install(app: FastAPI) -> None:
    """Our errors, and FastAPI's own, answered in the one shape."""
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
