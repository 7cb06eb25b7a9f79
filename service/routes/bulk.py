"""`POST /series/append`: many series in one request, in the per-item form (`series`: an
object per series) or the columnar form (`ids`, `offsets`, one flat `values` array; checked in
bulk and applied without an object per series: service/columnar.py). A plain per-item bulk
ingest is recognised and takes the columnar path too (service/bulk_ingest.py). Checked whole:
one bad item refuses them all, and nothing changes."""

from __future__ import annotations

import re
from typing import Annotated, NamedTuple

import numpy as np
from fastapi import APIRouter, Body, Request

from service import columnar, distribution, schemas, timeline
from service.append_rules import before_op, flagged, plan_append
from service.bulk_ingest import BulkIngest
from service.deps import (
    KnownQuery,
    check_distribution,
    check_many,
    check_points,
    engine_of,
    executor_of,
    require_quantiles,
)
from service.docs import BULK_422, BULK_EXAMPLES, errors
from service.engine import Engine, Op
from service.errors import ServiceError, shown
from service.responses import json_response, shaped, with_stamps
from service.scheduler import work_of
from service.strict_json import StrictJsonRoute

router = APIRouter(route_class=StrictJsonRoute)  # a key given twice in a JSON object: 422


@router.post("/series/append",
             response_model=schemas.BulkAppendResponse | schemas.ColumnarAppendResponse,
             response_model_exclude_none=True, dependencies=KnownQuery, tags=["series"],
             summary="Append to many series",
             responses=errors(401, 409, 413, 415, 422, 503, named={422: BULK_422}))
async def bulk_append(body: Annotated[schemas.BulkAppendBody, Body(openapi_examples=BULK_EXAMPLES)],
                      request: Request):
    """Append to many series at once (created on their first append), and forecast each when
    `horizon` is given. Checked whole: one bad item refuses them all, and nothing changes.
    Two forms: per item (`series`: one object per series) and columnar (`ids`, `offsets` and
    one flat `values` array: checked in bulk and applied without an object per series, the
    faster form for many series), answered in the form asked."""
    if isinstance(body, schemas.ColumnarBody):
        return await columnar_append(body.raw, request)
    if isinstance(body, BulkIngest):
        answer = await plain_ingest(body, request)
        if answer is not None:
            return answer
        body = body.as_request()  # (a series with a frequency: the per-item rules below)
    settings, metrics = request.app.state.settings, request.app.state.metrics
    points = check_many(settings, body)
    e = engine_of(request)
    check_distribution(e, body)
    executor = executor_of(request)

    def plan_all(columns: bool = False):
        """The ops, and their values (given ones plus those filled into gaps); with `columns`
        (a bulk ingest) the same as arrays, without an `Op` per item: (ids, bounds, values,
        metas), values in all."""
        allowed = columnar.gap_budget(settings, body.max_gap_points)
        ops, chain, budget, horizon = [], {}, allowed, body.horizon
        ids, bounds, flat, metas = [], [0], [], []
        meta_of = e.meta
        for i, s in enumerate(body.series):
            sid = s.id
            # The common case first (one dict lookup, no Plan); the rules for the rest.
            meta = (None if sid in chain else
                    timeline.plain_append_meta(meta_of.get(sid), s.values, s.timestamps, s.freq))
            if meta is not None:
                chain[sid], values = meta, s.values
            else:
                planned = plan_append(e, sid, s, budget, f"series[{i}]", chain)
                budget -= planned.filled
                values, meta = planned.values, planned.meta
            if columns:
                ids.append(sid)
                flat += values
                bounds.append(len(flat))
                metas.append(meta)
            else:
                ops.append(Op(sid, values, horizon, f"series[{i}]", meta=meta))
        filled = budget < allowed  # (gaps add values; nulls do not)
        if columns:
            return (ids, bounds, np.array(flat, dtype=np.float64), metas), len(flat) if filled else points
        return ops, sum(len(op.values) for op in ops) if filled else points

    async def work():
        if not body.horizon and body.anomaly_level is None:  # a bulk ingest: the engine's
            # columnar path (the same rules and records)
            (ids, bounds, values, metas), planned = await executor.off_loop(points, plan_all, True)
            check_points(settings, planned, "series")
            lengths, _ = await executor.call(
                "bulk_append", planned, len(ids), e.append_columns, ids, bounds, values, metas,
                None, "series")
            return None, planned, [None] * len(ids), [(n, None) for n in lengths], None
        ops, planned = await executor.off_loop(points, plan_all)
        check_points(settings, planned, "series")
        stamps = ([timeline.forecast_timestamps(op.meta, body.horizon, op.field("horizon"))
                   for op in ops] if body.horizon else [None] * len(ops))
        work = work_of(planned, (body.horizon or 0) * len(ops))
        if body.anomaly_level is None:
            return ops, planned, stamps, await executor.ops(ops, "bulk_append", work=work), None
        # anomaly flags: before each item, a forecast of its points from the state before it
        firsts = [before_op(e, settings.max_horizon, op.series_id, len(op.values), op.prefix)
                  for op in ops]
        lengths = {}  # (a series named again is forecastable after its earlier items)
        for i, op in enumerate(ops):
            if firsts[i] is None and lengths.get(op.series_id, 0) >= e.patch_len:
                firsts[i] = Op(op.series_id, None, min(len(op.values), settings.max_horizon), op.prefix)
            lengths[op.series_id] = lengths.get(op.series_id, e.held_length(op.series_id) or 0) \
                + len(op.values)
        both = [o for first, op in zip(firsts, ops) for o in ((first, op) if first else (op,))]
        results = await executor.ops(both, "bulk_append", work=work)
        out, befores, at = [], [], 0
        for first in firsts:
            befores.append(results[at][1] if first else None)
            at += 1 if first is None else 2
            out.append(results[at - 1])
        return ops, planned, stamps, out, befores

    locks = request.app.state.series_locks
    try:
        ops, planned, stamps, results, befores = await locks.run([s.id for s in body.series], work)
    except ServiceError as exc:
        raise _body_field(exc, [s.id for s in body.series]) from None
    metrics.points_appended.inc(planned)
    if not body.horizon and befores is None:  # lengths only (a bulk ingest's case)
        return json_response({"series": [{"id": s.id, "length": length}
                                         for s, (length, _) in zip(body.series, results)]})
    out, forecast = [], 0
    for i, (s, (length, mean), t) in enumerate(zip(body.series, results, stamps)):
        item = {"id": s.id, "length": length}
        if mean is not None:
            item["forecast"] = with_stamps(shaped(mean, body.level, body.quantiles), t)
            forecast += len(mean)
        if befores is not None:
            item["anomalies"] = flagged(request, befores[i], ops[i].values, body.anomaly_level)
        out.append(item)
    if forecast:
        metrics.points_forecast.labels("append").inc(forecast)
    return json_response({"series": out})


class _NotPlain(Exception):
    """A series of a plain bulk ingest has a frequency (its points take grid timestamps)."""


async def plain_ingest(body: BulkIngest, request: Request):
    """The per-item form's plain bulk ingest (service/bulk_ingest.py) as the per-item path
    applies it when every item is plain: the same limits, records and answer, without an
    object per item. None where a series has a frequency (found under the series' locks):
    the caller takes the per-item path then."""
    settings, metrics = request.app.state.settings, request.app.state.metrics
    ids, points = body.ids, len(body.floats)
    if len(ids) > settings.max_series_per_request:
        raise ServiceError(413, f"{len(ids)} series in one request; the limit is "
                                f"{settings.max_series_per_request}", "series")
    check_points(settings, points, "series")
    e = engine_of(request)
    executor = executor_of(request)

    async def work():
        if any(m is not None and m.get("freq") is not None for m in map(e.meta.get, ids)):
            raise _NotPlain
        lengths, _ = await executor.call("bulk_append", points, len(ids), e.append_columns, ids,
                                         body.bounds, body.values, body.metas(), None, "series")
        return lengths

    try:
        lengths = await request.app.state.series_locks.run(ids, work)
    except _NotPlain:
        return None
    metrics.points_appended.inc(points)
    return json_response({"series": [{"id": i, "length": n} for i, n in zip(ids, lengths)]})


def plan_columns(e: Engine, cols: columnar.Columns, gap_budget: int
                 ) -> tuple[list[int], np.ndarray, list[dict], int]:
    """The columnar form's runs with gaps and nulls filled: (bounds, values, metadata per
    series, values in all). The common case (no timestamps, freq or nulls, no series with a
    frequency) in bulk: each series' metadata is its last value, as `plain_append_meta` says."""
    ids, raw, bounds = cols.ids, cols.raw, cols.bounds
    if cols.timestamps is None and cols.freq is None and not cols.nulls:
        current = list(map(e.meta.get, ids))
        if not any(m is not None and m.get("freq") is not None for m in current):
            return bounds, cols.values, [{"last": raw[b - 1]} for b in bounds[1:]], len(raw)
    chain: dict[str, dict] = {}
    budget, values, out, metas = gap_budget, [], [0], []
    for i, sid in enumerate(ids):
        a, b = bounds[i], bounds[i + 1]
        item = _Run(raw[a:b], cols.timestamps[a:b] if cols.timestamps is not None else None,
                    cols.freq)
        try:
            planned = plan_append(e, sid, item, budget, "", chain)
        except timeline.TimelineError as exc:
            field = columnar.field_of(exc.field, i, a)
            about = field if field == f"ids[{i}]" else f"{field} (series ids[{i}])"
            message = exc.message  # (its place in the run, `values[0]`, as in the body: `values[7]`)
            if exc.field and field and "[" in exc.field and exc.field != field:
                message = message.replace(exc.field, field)
            raise timeline.TimelineError(exc.status, f"{about}, {sid!r}: {message}",
                                         field) from None
        budget -= planned.filled
        values += planned.values
        out.append(len(values))
        metas.append(planned.meta)
    return out, np.array(values, dtype=np.float64), metas, len(values)


class _Run(NamedTuple):
    """One series' run of a columnar append, as `plan_append` reads an item."""

    values: list
    timestamps: list[str] | None
    freq: int | str | None


BODY_FIELDS = ("horizon", "anomaly_level", "level", "quantiles")  # given once, for every item


def _body_field(exc: ServiceError, ids: list[str]) -> ServiceError:
    """The engine names a refused op of a per-item bulk request `series[i].horizon`, but an item
    has no horizon (sending one is a 422): the body's field is named, and its message says
    for which item (as the columnar form does)."""
    m = re.fullmatch(r"series\[(\d+)\]\.(\w+)", exc.field or "")
    if m and m[2] in BODY_FIELDS:
        exc.field = m[2]
        exc.message = f"{m[2]}: for series[{m[1]}] ({shown(ids[int(m[1])])!r}), {exc.message}"
    return exc


def _columnar_field(exc: ServiceError, ids: list[str]) -> ServiceError:
    """The engine names an op of a columnar request `ids[i].id`, `ids[i].horizon`, ...: the
    series, `ids[i]`, is the field (its message says what is wrong), but for the horizon, which
    the body gives once for all (`horizon`, its message naming the series)."""
    m = re.fullmatch(r"ids\[(\d+)\]\.(\w+)", exc.field or "")
    if m and m[2] == "horizon":
        exc.field = "horizon"
        exc.message = f"horizon: for ids[{m[1]}] ({shown(ids[int(m[1])])!r}), {exc.message}"
    elif m:
        exc.field = f"ids[{m[1]}]"
    return exc


async def columnar_append(body: dict, request: Request):
    """POST /series/append in the columnar form (service/columnar.py): the per-item form's rules
    and limits, checked on arrays, applied by `Engine.append_columns`, answered in columns."""
    settings, metrics = request.app.state.settings, request.app.state.metrics
    e = engine_of(request)
    executor = executor_of(request)
    size = len(body["values"]) if type(body.get("values")) is list else 0
    cols = await executor.off_loop(size, columnar.parse, body, settings)
    require_quantiles(e, level=cols.level, quantiles=cols.quantiles)
    for name in ("level", "quantiles"):
        if getattr(cols, name) and cols.horizon is None:
            raise ServiceError(422, f"{name} needs a horizon (they describe the forecast)", name)
    ids, horizon = cols.ids, cols.horizon

    async def work():
        bounds, values, metas, total = await executor.off_loop(
            size, plan_columns, e, cols, cols.gap_budget)
        check_points(settings, total, "values")
        stamps = ([timeline.forecast_timestamps(m, horizon) for m in metas] if horizon else None)
        try:
            lengths, means = await executor.call(
                "bulk_append", work_of(total, (horizon or 0) * len(ids)), len(ids),
                e.append_columns, ids, bounds, values, metas, horizon)
        except ServiceError as exc:
            raise _columnar_field(exc, ids) from None
        return total, lengths, means, stamps

    total, lengths, means, stamps = await request.app.state.series_locks.run(ids, work)
    metrics.points_appended.inc(total)
    if not horizon:
        return json_response({"ids": ids, "lengths": lengths})
    forecast = {"offsets": list(range(0, horizon * len(ids), horizon)),
                "mean": [x for m in means for x in m]}
    if cols.level:
        per = [distribution.intervals(m, cols.level) for m in means]
        forecast["intervals"] = [
            {"level": level, "lo": [x for p in per for x in p[k]["lo"]],
             "hi": [x for p in per for x in p[k]["hi"]]} for k, level in enumerate(cols.level)]
    if cols.quantiles:
        per = [distribution.quantiles(m, cols.quantiles) for m in means]
        forecast["quantiles"] = [{"q": q, "values": [x for p in per for x in p[k]["values"]]}
                                 for k, q in enumerate(cols.quantiles)]
    if any(t is not None for t in stamps):
        forecast["timestamps"] = [x for t in stamps for x in (t or [None] * horizon)]
    metrics.points_forecast.labels("append").inc(horizon * len(ids))
    return json_response({"ids": ids, "lengths": lengths, "forecast": forecast})
