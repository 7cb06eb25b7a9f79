"""The columnar form of a bulk append (`POST /series/append` with `ids`), checked in bulk.

    {"ids": ["a", "b", "c"], "offsets": [0, 2, 3], "values": [1.0, 2.0, 5.0, 7.5, 8.0],
     "timestamps"?: [...one per value...], "freq"?: "1h", "horizon"?: 24,
     "level"?: [80], "quantiles"?: [0.1, 0.9]}

Run i is `values[offsets[i]:offsets[i + 1]]` (the last run to the end of `values`); `offsets[0]`
is 0 and offsets increase strictly (no empty runs: the per-item form's `values` has at least one
point), so `len(offsets) == len(ids)` and `offsets[-1] < len(values)`. `timestamps`, when given, is
parallel to `values`; `freq` and `horizon` apply to every series. `anomaly_level` is refused
(use the per-item form). An id may repeat: its runs apply in order, as in the per-item form.

The body is the one `strict_json` parsed; nothing here makes an object per series or per point:
type checks are one `set(map(type, ...))` per list, the ids one regular expression over them all,
the values one `np.array` and vectorised bound checks. A refusal is a `ServiceError` naming the
field (`offsets[3]`, `values[17]`, `ids[2]`), with the per-item form's status and limits."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from service import schemas, timeline
from service.deps import check_answer, check_horizon
from service.errors import ServiceError, shown
from service.settings import Settings

ALLOWED = ("ids", "offsets", "values", "timestamps", "freq", "horizon", "level", "quantiles",
           "max_gap_points")
PER_ITEM_ONLY = ("anomaly_level",)
_ID = schemas.SERIES_ID_PATTERN[1:-1]  # (without ^ and $: fullmatch below)
_ONE_ID = re.compile(_ID)
_IDS = re.compile(f"(?:{_ID}\n)*{_ID}")  # every id at once, joined by newlines (none may hold one)
_NUMBER = (float, int)
_NONE = type(None)


@dataclass(eq=False)
class Columns:
    """A checked columnar body: `values` as float64 (nulls NaN, `nulls` says whether any)."""

    ids: list[str]
    offsets: np.ndarray  # int64, len(ids)
    values: np.ndarray  # float64
    raw: list  # the values as sent (ints stay ints: the metadata's `last` is the value sent)
    nulls: bool
    timestamps: list[str] | None
    freq: int | str | None  # seconds, or timeline.BUSINESS_DAYS
    horizon: int | None
    level: list[float] | None
    quantiles: list[float] | None
    gap_budget: int  # points gaps may add (the request's max_gap_points, within the server's)

    @property
    def bounds(self) -> list[int]:
        """offsets and the end: run i is values[bounds[i]:bounds[i + 1]]."""
        return [*self.offsets.tolist(), len(self.values)]


def all_series_ids(ids: list[str]) -> bool:
    """Whether every string of `ids` is a series id: one regular expression over them all,
    joined by newlines (none may hold one: an id holding a newline would pass as two, so the
    newlines are counted too)."""
    joined = "\n".join(ids)
    return joined.count("\n") == len(ids) - 1 and _IDS.fullmatch(joined) is not None


def _fail(message: str, field: str, status: int = 422) -> ServiceError:
    return ServiceError(status, f"{field}: {message}", field)


def _list(body: dict, name: str) -> list:
    value = body.get(name)
    if type(value) is not list:
        raise _fail(f"must be a list (got {type(value).__name__ if value is not None else 'null'})",
                    name)
    return value


def _first(items: list, ok) -> int:
    return next(i for i, v in enumerate(items) if not ok(v))


def parse(body: dict, settings: Settings) -> Columns:
    """The body checked whole, or the ServiceError for its first problem."""
    if "series" in body:
        raise _fail("a body has either `series` (the per-item form) or `ids`, `offsets` and "
                    "`values` (the columnar form), not both", "series")
    for key in body:
        if key in PER_ITEM_ONLY:
            raise _fail("not taken by the columnar form; send the per-item form "
                        "(`series`) to flag anomalies", key)
        if key not in ALLOWED:
            raise _fail(f"unknown field; the columnar form takes {', '.join(ALLOWED)}", shown(key))

    ids = _list(body, "ids")
    if not ids:
        raise _fail("at least one series", "ids")
    if len(ids) > settings.max_series_per_request:
        raise ServiceError(413, f"{len(ids)} series in one request; the limit is "
                                f"{settings.max_series_per_request}", "ids")
    if set(map(type, ids)) != {str}:
        i = _first(ids, lambda v: type(v) is str)
        raise _fail("a series id is a string", f"ids[{i}]")
    if not all_series_ids(ids):
        i = _first(ids, _ONE_ID.fullmatch)
        raise _fail(f"{shown(ids[i])!r} is not a series id ({schemas.SERIES_ID_RULE})", f"ids[{i}]")

    raw = _list(body, "values")
    if not raw:
        raise _fail("at least one value", "values")
    if len(raw) > settings.max_points_per_request:
        raise ServiceError(413, f"{len(raw)} values in one request; the limit is "
                                f"{settings.max_points_per_request}", "values")
    kinds = set(map(type, raw))
    if not kinds <= {float, int, _NONE}:
        i = _first(raw, lambda v: type(v) in (float, int, _NONE))
        raise _fail(schemas.NOT_A_POINT, f"values[{i}]")
    try:
        values = np.array(raw, dtype=np.float64)  # (null: NaN)
    except OverflowError:  # an integer past float64
        values = None
    if values is None or not (np.abs(values) <= schemas.MAX_ABS_VALUE).all():
        nulls = False
        for i, v in enumerate(raw):
            if v is None:
                nulls = True
            elif v != v or not -schemas.MAX_ABS_VALUE <= v <= schemas.MAX_ABS_VALUE:
                why = (schemas.NOT_FINITE if v != v or abs(v) == float("inf")
                       else schemas.too_large(v))
                raise _fail(why, f"values[{i}]")
    else:
        nulls = False

    offsets = _list(body, "offsets")
    if len(offsets) != len(ids):
        raise _fail(f"one offset per id: {len(ids)} ids, {len(offsets)} offsets", "offsets")
    if set(map(type, offsets)) != {int}:
        i = _first(offsets, lambda v: type(v) is int)
        raise _fail("an offset is an integer", f"offsets[{i}]")
    if offsets[0] != 0:
        raise _fail("the first series' run starts at 0", "offsets[0]")
    try:
        off = np.array(offsets, dtype=np.int64)
    except OverflowError:
        off = None
    if off is None or off[-1] >= len(raw) or not (np.diff(off) > 0).all():
        for i in range(1, len(offsets)):
            if not offsets[i - 1] < offsets[i] < len(raw):
                what = (f"is past the last value ({len(raw)} values)" if offsets[i] >= len(raw)
                        else f"must be greater than offsets[{i - 1}] ({offsets[i - 1]}): each "
                             "series' run holds at least one value")
                raise _fail(f"{shown(str(offsets[i]), 24)} {what}", f"offsets[{i}]")

    timestamps = body.get("timestamps")
    if timestamps is not None:
        if type(timestamps) is not list:
            raise _fail("must be a list of ISO 8601 strings, one per value", "timestamps")
        if len(timestamps) != len(raw):
            raise _fail(f"one timestamp per value: {len(raw)} values, {len(timestamps)} "
                        "timestamps", "timestamps")
        if set(map(type, timestamps)) != {str}:
            i = _first(timestamps, lambda v: type(v) is str)
            raise _fail("a timestamp is an ISO 8601 string", f"timestamps[{i}]")
        if max(map(len, timestamps)) > timeline.MAX_TIMESTAMP_CHARS:
            i = _first(timestamps, lambda v: len(v) <= timeline.MAX_TIMESTAMP_CHARS)
            raise _fail(f"a timestamp is at most {timeline.MAX_TIMESTAMP_CHARS} characters",
                        f"timestamps[{i}]")

    freq = body.get("freq")
    if freq is not None:
        try:
            freq = timeline.parse_freq(freq)
        except ValueError as exc:
            raise _fail(str(exc), "freq") from None

    horizon = body.get("horizon")
    if horizon is not None:
        if type(horizon) is not int or horizon < 1:
            raise _fail("a whole number of points, at least 1", "horizon")
        check_horizon(settings, horizon)
    dist = {k: body.get(k) for k in ("level", "quantiles") if body.get(k) is not None}
    if dist:
        import pydantic

        from service.errors import field_path
        try:
            checked = schemas.Distribution.model_validate(dist)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            raise _fail(schemas.error_message(first), field_path(first)) from None
        dist = {"level": checked.level, "quantiles": checked.quantiles}
    check_answer(settings, len(ids), horizon, dist.get("level"), dist.get("quantiles"))
    budget = body.get("max_gap_points")
    if budget is not None and (type(budget) is not int or budget < 0):
        raise _fail("a whole number of points, at least 0", "max_gap_points")
    return Columns(ids, off, values, raw, nulls, timestamps, freq, horizon,
                   dist.get("level"), dist.get("quantiles"), gap_budget(settings, budget))


def gap_budget(settings: Settings, asked: int | None) -> int:
    """Points gaps may add to one request: the request's `max_gap_points`, at most the server's."""
    return settings.max_gap_points if asked is None else min(asked, settings.max_gap_points)


def field_of(field: str | None, i: int, start: int) -> str | None:
    """A per-series rule's field (timeline: `values[3]`, `timestamps[0]`, `timestamps` for the
    run as a whole; the engine: `ids[i].horizon`) in the columnar body: points by their place in
    the flat arrays (a whole run by its first), the series by `ids[i]`."""
    if field is None:
        return None
    m = re.fullmatch(r"(?:ids\[\d+\]\.)?(values|timestamps)\[(\d+)\]", field)
    if m:
        return f"{m[1]}[{start + int(m[2])}]"
    m = re.fullmatch(r"(?:ids\[\d+\]\.)?(\w+)", field)
    if m and m[1] in ("freq", "horizon"):
        return m[1]
    if m and m[1] in ("values", "timestamps"):  # the run as a whole: its first point
        return f"{m[1]}[{start}]"
    return f"ids[{i}]"
