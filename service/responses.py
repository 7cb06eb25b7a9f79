"""Answers' JSON: a forecast's mean with the intervals and quantiles asked for, written fast."""

from __future__ import annotations

import pydantic_core
from fastapi import Response

from service import distribution


def shaped(fc, level, quantiles) -> dict:
    """A forecast's JSON: the mean, and the intervals and quantiles asked for."""
    out = {"mean": fc}
    if level:
        out["intervals"] = distribution.intervals(fc, level)
    if quantiles:
        out["quantiles"] = distribution.quantiles(fc, quantiles)
    return out


def with_stamps(item: dict, stamps: list[str] | None) -> dict:
    """`item` with its forecast's `timestamps` when the series has them (no null field)."""
    return item if stamps is None else {**item, "timestamps": stamps}


def json_response(content: dict) -> Response:
    """`content` (built by the routes, no None fields) as JSON, written by pydantic-core
    (non-finite floats as null, as pydantic writes them). Returned from a route, it skips
    FastAPI's validation of our own output against the route's response model (5 ms of a
    1,000-series bulk append); the model still documents the route. pydantic-core also writes
    floats far faster than the json module, the bulk of a many-series forecast."""
    return Response(pydantic_core.to_json(content, inf_nan_mode="null"),
                    media_type="application/json")
