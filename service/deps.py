"""What routes share: the loaded engine and the app's parts, query rules, request limits."""

from __future__ import annotations

import pydantic
from fastapi import Depends, Path, Query, Request

from service import schemas
from service.engine import Engine
from service.errors import ServiceError, field_path, shown
from service.scheduler import Executor
from service.settings import Settings

SeriesId = Path(pattern=schemas.SERIES_ID_PATTERN, description=schemas.SERIES_ID_RULE)
REPEATABLE = {"level", "quantiles"}  # query lists: ?level=80&level=95
LevelQuery = Query(None, description=schemas.LEVEL_RULE)
QuantilesQuery = Query(None, description=schemas.QUANTILES_RULE)


async def known_query(request: Request) -> None:
    """The route's own query parameters, each once: `?horizon=24` on an append (whose horizon is
    in the body) would otherwise be ignored without a word, as would a misspelt or repeated
    one, where an unknown field of a JSON body is a 422. (A coroutine: FastAPI runs a plain
    function dependency in its thread pool, a hand-off that cost ~0.15 ms of every request.)"""
    route = request.scope.get("route")
    allowed = {p.alias for p in route.dependant.query_params}
    seen = set()
    for key, _ in request.query_params.multi_items():
        if key not in allowed:
            takes = ", ".join(sorted(allowed)) or "no query parameters"
            raise ServiceError(422, f"unknown query parameter {shown(key)!r}; this route takes "
                                    f"{takes}", shown(key))
        if key in seen and key not in REPEATABLE:
            raise ServiceError(422, f"query parameter {shown(key)!r} is given more than once",
                               shown(key))
        seen.add(key)


KnownQuery = [Depends(known_query)]


def engine_of(request: Request) -> Engine:
    """The loaded engine, or a 503 while the weights load."""
    e = getattr(request.app.state, "engine", None)
    if e is None:
        raise ServiceError(503, "the model is not loaded yet; see GET /readyz")
    return e


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def executor_of(request: Request) -> Executor:
    engine_of(request)  # (503 before start-up has made the executor)
    return request.app.state.executor


def check_plain_ints(request: Request, *names: str) -> None:
    """Query integers as plain digits: FastAPI would read `8_0` as 80 and `8.0` or `+8` as 8."""
    for name in names:
        for raw in request.query_params.getlist(name):
            if not (raw.isascii() and raw.isdigit()):
                raise ServiceError(422, schemas.plain_digits(name), name)
            if len(raw) > 18:  # (no limit is near: and Python reads at most 4,300 digits)
                raise ServiceError(422, f"{name} has {len(raw)} digits, far above its limit", name)


def default_capped(settings: Settings, horizon: int, given: bool) -> int:
    """The horizon a client gave, or the default it did not choose (96) capped at
    `--max-horizon`: a lower limit refuses what clients ask for, not its own default."""
    return horizon if given else min(horizon, settings.max_horizon)


def check_horizon(settings: Settings, horizon: int | None, field: str = "horizon") -> None:
    if horizon is not None and horizon > settings.max_horizon:
        echo = f" {horizon}" if horizon < 10**12 else ""  # (not a 4,000-digit echo)
        raise ServiceError(422, f"horizon{echo} is above the limit of {settings.max_horizon}", field)


def check_points(settings: Settings, count: int, field: str) -> None:
    if count > settings.max_points_per_request:
        raise ServiceError(413, f"{count} values in one request; the limit is "
                                f"{settings.max_points_per_request}", field)


def check_answer(settings: Settings, series: int, horizon: int | None, level, quantiles) -> None:
    """A 413 naming `horizon` for an answer of more forecast values than `--max-answer-values`:
    1,024 series x 2,048 points with ten levels and ten quantiles came to 307 MB of JSON in
    14 s, other clients waiting meanwhile."""
    if not horizon:
        return
    each = 1 + 2 * len(level or ()) + len(quantiles or ())
    total = series * horizon * each
    if total > settings.max_answer_values:
        raise ServiceError(413, f"{series} series x horizon {horizon} x {each} values per point "
                                f"(the mean, two bounds per level, one per quantile) = {total:,} "
                                f"forecast values; the limit is {settings.max_answer_values:,} "
                                "(--max-answer-values): ask fewer series, a shorter horizon or "
                                "fewer levels", "horizon")


def check_many(settings: Settings, body) -> int:
    """The limits of a request of many series (horizon, series, values, the answer's size);
    its values."""
    check_horizon(settings, body.horizon)
    check_answer(settings, len(body.series), body.horizon, body.level, body.quantiles)
    if len(body.series) > settings.max_series_per_request:
        raise ServiceError(413, f"{len(body.series)} series in one request; the limit is "
                                f"{settings.max_series_per_request}", "series")
    points = sum(len(s.values) for s in body.series)
    check_points(settings, points, "series")
    return points


def require_quantiles(e: Engine, **asked) -> None:
    """A 422 naming the first distribution field asked of a model that predicts no quantiles."""
    for name, value in asked.items():
        if value and not e.model.cfg.quantiles:
            raise ServiceError(422, f"{name}: the model {e.name!r} predicts no quantiles, so it "
                                    "gives no intervals (serve a model with a quantile head)", name)


def distribution_query(e: Engine, **asked) -> schemas.Distribution:
    """`?level=..&quantiles=..` of a GET, checked as a body's would be (422 naming the field),
    and only of a model that predicts quantiles."""
    try:
        dist = schemas.Distribution.model_validate(asked)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise ServiceError(422, f"{field_path(first)}: {schemas.error_message(first)}",
                           field_path(first)) from None
    require_quantiles(e, **{name: getattr(dist, name) for name in asked})
    return dist


def check_distribution(e: Engine, body) -> None:
    """Intervals and quantiles need a model with quantiles, and a forecast to draw them on."""
    require_quantiles(e, level=body.level, quantiles=body.quantiles, anomaly_level=body.anomaly_level)
    for name in ("level", "quantiles"):
        if getattr(body, name) and body.horizon is None:
            raise ServiceError(422, f"{name} needs a horizon (they describe the forecast)", name)
