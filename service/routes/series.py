"""Streaming series: appends to one series (to many at once: routes/bulk.py), forecasts from the
held state, listing, description and deletion. Requests on one series run one at a time
(`series_locks.SeriesLocks`): an append's filled values and metadata are computed from the
metadata it replaces."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service import columnar, distribution, plot, schemas, timeline
from service.append_rules import before_op, flagged, plan_append
from service.deps import (
    KnownQuery,
    LevelQuery,
    QuantilesQuery,
    SeriesId,
    check_answer,
    check_distribution,
    check_horizon,
    check_plain_ints,
    check_points,
    default_capped,
    distribution_query,
    engine_of,
    executor_of,
)
from service.docs import APPEND_EXAMPLES, errors
from service.engine import Op
from service.responses import shaped
from service.strict_json import StrictJsonRoute

router = APIRouter(route_class=StrictJsonRoute)  # a key given twice in a JSON object: 422


@router.get("/series", response_model=schemas.SeriesList, dependencies=KnownQuery, tags=["series"],
            summary="List streaming series", responses=errors(401, 422, 503))
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


@router.post("/series/{series_id}/append", response_model=schemas.AppendResponse,
             response_model_exclude_none=True, dependencies=KnownQuery, tags=["series"],
             summary="Append to a series", responses=errors(401, 409, 413, 415, 422, 503))
async def append(body: Annotated[schemas.AppendRequest, Body(openapi_examples=APPEND_EXAMPLES)],
                 request: Request, series_id: str = SeriesId):
    """Append points to a streaming series (created on its first append) in O(new points),
    whatever its history; with `horizon`, also forecast after them; with `anomaly_level`, flag
    the new points outside the interval forecast before them."""
    settings, metrics = request.app.state.settings, request.app.state.metrics
    check_horizon(settings, body.horizon)
    check_answer(settings, 1, body.horizon, body.level, body.quantiles)
    check_points(settings, len(body.values), "values")
    e = engine_of(request)
    check_distribution(e, body)
    executor = executor_of(request)

    async def work():
        p = await executor.off_loop(len(body.values), plan_append, e, series_id, body,
                                    columnar.gap_budget(settings, body.max_gap_points), "", {})
        check_points(settings, len(p.values), "values")
        stamps = timeline.forecast_timestamps(p.meta, body.horizon) if body.horizon else None
        ops = [Op(series_id, p.values, body.horizon, meta=p.meta)]
        first = (before_op(e, settings.max_horizon, series_id, len(p.values))
                 if body.anomaly_level is not None else None)
        if first is None:
            [(length, mean)] = await executor.ops(
                ops, "append", (e.append, series_id, p.values, body.horizon, p.meta))
            return p, length, mean, stamps, None
        [(_, before), (length, mean)] = await executor.ops([first, *ops], "append")
        return p, length, mean, stamps, before

    p, length, mean, stamps, before = await request.app.state.series_locks.run([series_id], work)
    metrics.points_appended.inc(len(p.values))
    if mean is not None:
        metrics.points_forecast.labels("append").inc(len(mean))
    out = {"id": series_id, "length": length}
    if mean is not None:
        out["forecast"] = {**shaped(mean, body.level, body.quantiles), "timestamps": stamps}
    out["anomalies"] = flagged(request, before, p.values, body.anomaly_level)
    return out


@router.get("/series/{series_id}/forecast", response_model=schemas.SeriesForecastResponse,
            response_model_exclude_none=True, dependencies=KnownQuery, tags=["series"],
            summary="Forecast a series", responses=errors(401, 404, 409, 413, 422, 503))
async def series_forecast(request: Request, series_id: str = SeriesId,
                          horizon: int = Query(96, ge=1),
                          level: list[float] | None = LevelQuery,
                          quantiles: list[float] | None = QuantilesQuery):
    """Forecast `horizon` points after the series' last point, from its held state."""
    check_plain_ints(request, "horizon")
    horizon = default_capped(request.app.state.settings, horizon, "horizon" in request.query_params)
    check_horizon(request.app.state.settings, horizon)
    e = engine_of(request)
    dist = distribution_query(e, level=level, quantiles=quantiles)
    check_answer(request.app.state.settings, 1, horizon, dist.level, dist.quantiles)
    executor = executor_of(request)

    async def work():
        stamps = timeline.forecast_timestamps(e.meta.get(series_id), horizon)
        [(length, mean)] = await executor.ops([Op(series_id, None, horizon)], "series_forecast",
                                              (e.forecast_series, series_id, horizon))
        return length, mean, stamps

    length, mean, stamps = await request.app.state.series_locks.run([series_id], work)
    request.app.state.metrics.points_forecast.labels("series_forecast").inc(horizon)
    return {"id": series_id, "length": length, "horizon": horizon,
            **shaped(mean, dist.level, dist.quantiles), "timestamps": stamps}


@router.get("/series/{series_id}/plot", dependencies=KnownQuery, tags=["series"],
            summary="Plot a series' forecast", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "a PNG"},
                       **errors(401, 404, 409, 422, 503)})
async def series_plot(request: Request, series_id: str = SeriesId,
                      horizon: int = Query(96, ge=1), level: list[float] | None = LevelQuery):
    """The series' recent points (those its state holds: up to the model's lag window), the
    forecast of `horizon` points and its intervals at `level` (80 and 95 by default, on models
    with quantiles), as a PNG."""
    check_plain_ints(request, "horizon")
    horizon = default_capped(request.app.state.settings, horizon, "horizon" in request.query_params)
    check_horizon(request.app.state.settings, horizon)
    e = engine_of(request)
    dist = distribution_query(e, level=level)
    levels = dist.level or ([80, 95] if e.model.cfg.quantiles else [])
    executor = executor_of(request)

    async def work():
        timeline.forecast_timestamps(e.meta.get(series_id), horizon)  # (the forecast route's 422
        # past the year 9999: no picture of a forecast it refuses)
        [(length, mean)] = await executor.ops([Op(series_id, None, horizon)], "series_forecast",
                                              (e.forecast_series, series_id, horizon))
        recent = await run_in_threadpool(e.recent_points, series_id)
        return length, mean, recent, timeline.plot_times(e.meta.get(series_id), len(recent), horizon)

    length, mean, recent, times = await request.app.state.series_locks.run([series_id], work)
    bands = distribution.intervals(mean, levels) if levels else []
    png = await run_in_threadpool(plot.forecast_png, series_id, recent, length, mean, bands, times)
    return Response(png, media_type="image/png")


@router.get("/series/{series_id}", response_model=schemas.SeriesInfo,
            response_model_exclude_none=True, dependencies=KnownQuery, tags=["series"],
            summary="Describe a series", responses=errors(401, 404, 422, 503))
async def series_info(request: Request, series_id: str = SeriesId):
    """Its length, state size, and frequency and last timestamp when it has timestamps."""
    e = engine_of(request)

    async def work():
        return {**e.describe(series_id), **timeline.describe(e.meta.get(series_id))}

    return await request.app.state.series_locks.run([series_id], work)


@router.delete("/series/{series_id}", status_code=204, dependencies=KnownQuery, tags=["series"],
               summary="Delete a series", responses=errors(401, 404, 422, 503))
async def series_delete(request: Request, series_id: str = SeriesId):
    """Forget the series and its state (logged: it stays deleted after a restart)."""
    e = engine_of(request)

    async def work():
        await run_in_threadpool(e.delete, series_id)  # may fsync the log

    await request.app.state.series_locks.run([series_id], work)
    return Response(status_code=204)
