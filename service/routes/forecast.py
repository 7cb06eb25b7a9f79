"""`POST /forecast`: stateless forecasts of whole histories sent in the request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request

from service import schemas, timeline
from service.deps import (
    KnownQuery,
    check_many,
    check_points,
    default_capped,
    engine_of,
    executor_of,
    require_quantiles,
)
from service.docs import FORECAST_EXAMPLES, errors
from service.responses import json_response, shaped, with_stamps
from service.strict_json import StrictJsonRoute

router = APIRouter(route_class=StrictJsonRoute)  # a key given twice in a JSON object: 422


@router.post("/forecast", response_model=schemas.ForecastResponse,
             response_model_exclude_none=True, dependencies=KnownQuery, tags=["forecasts"],
             summary="Forecast whole histories", responses=errors(401, 413, 415, 422, 503))
async def forecast(body: Annotated[schemas.ForecastRequest, Body(openapi_examples=FORECAST_EXAMPLES)],
                   request: Request):
    """Forecast `horizon` points after each series' history (at least one patch of points
    each), with prediction intervals (`level`) and quantiles when asked. Nothing is kept:
    for a series that grows, append to a streaming series instead."""
    settings = request.app.state.settings
    body.horizon = default_capped(settings, body.horizon, "horizon" in body.model_fields_set)
    check_many(settings, body)
    require_quantiles(engine_of(request), level=body.level, quantiles=body.quantiles)
    executor = executor_of(request)

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
    histories, stamps = await executor.off_loop(values, plan)
    check_points(settings, sum(len(h) for h in histories), "series")
    means = await executor.forecast(histories, body.horizon, values)
    request.app.state.metrics.points_forecast.labels("forecast").inc(body.horizon * len(body.series))
    return json_response({"model": engine_of(request).name, "horizon": body.horizon, "forecasts": [
        with_stamps({"id": s.id, **shaped(m, body.level, body.quantiles)}, t)
        for s, m, t in zip(body.series, means, stamps)]})
