"""What an append through the HTTP layer does beyond the engine's step: gaps and nulls filled
from the series' metadata (service/timeline.py), and the forecast made before it that anomaly
flags compare its points with. Shared by the one-series and the bulk routes."""

from __future__ import annotations

from fastapi import Request

from service import distribution, timeline
from service.engine import Engine, Op
from service.errors import shown


def series_exists(e: Engine, series_id: str) -> bool:
    # Every append through this layer sets metadata; else (logged before timestamps existed,
    # or none) ask the engine. Requests on one series are serialised by the series locks, so
    # nothing else creates or deletes this series meanwhile.
    return series_id in e.meta or e.held_length(series_id) is not None


def plan_append(e: Engine, series_id: str, item, budget: int, prefix: str,
                chain: dict[str, dict]) -> timeline.Plan:
    """Gaps and nulls filled, and the metadata after the append; `chain` holds the metadata
    earlier items of the same request leave (a bulk append may name a series twice)."""
    if series_id in chain:
        meta, exists = chain[series_id], True
    else:
        meta = e.meta.get(series_id)
        exists = meta is not None or series_exists(e, series_id)
    try:
        planned = timeline.plan_append(meta, exists, item.values, item.timestamps, item.freq,
                                       budget, prefix)
    except timeline.TimelineError as exc:
        if prefix:  # (an item of a per-item bulk body: the message says which series, as the
            # columnar form's does; the field already names the item)
            exc.message = f"{prefix} ({shown(series_id)!r}): {exc.message}"
        raise
    chain[series_id] = planned.meta
    return planned


def before_op(e: Engine, max_horizon: int, series_id: str, values: int, prefix: str = "") -> Op | None:
    """For anomaly flags: a forecast of the points an append brings, made before it (None
    where the series has no forecast yet: unknown, or under one patch)."""
    held = e.held_length(series_id)
    if held is None or held < e.patch_len:
        return None
    return Op(series_id, None, min(values, max_horizon), prefix)


def flagged(request: Request, before, values: list[float], level: float | None) -> list[dict] | None:
    if level is None:
        return None
    found = distribution.outside(before, values, level) if before is not None else []
    request.app.state.metrics.anomalies.inc(len(found))
    return found
