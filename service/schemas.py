"""Request and response bodies of the HTTP API (validation lives here, not in the engine)."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service import timeline

SERIES_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SERIES_ID_RULE = ("1 to 128 characters: letters, digits, '.', '_', ':', '-', starting with a "
                  "letter or digit")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _freq(value) -> int | str:
    return timeline.parse_freq(value)  # ValueError: a 422 naming `freq`


# Parsed by timeline.plan_append (a bad one is a 422 naming it, `timestamps[3]`), which the HTTP
# layer runs off the event loop for a large request: here only the type and length are checked.
Timestamp = Annotated[str, Field(max_length=timeline.MAX_TIMESTAMP_CHARS),
                      WithJsonSchema({"type": "string", "maxLength": timeline.MAX_TIMESTAMP_CHARS,
                                      "description": "ISO 8601; naive ones are UTC",
                                      "examples": ["2024-05-01T13:00:00Z"]})]
Freq = Annotated[int | str, PlainValidator(_freq),
                 WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1},
                                           {"type": "string", "maxLength": timeline.MAX_FREQ_CHARS}],
                                 "description": "seconds, or a number with a unit: s, min, h, "
                                                "d, w ('15min', '1h'); '1b': business days "
                                                "(Monday to Friday)"})]
# Points are held in float32 by the model (its range ends at 3.4e38); 1e30 leaves room for the
# statistics and the forecast's de-normalisation. JSON numbers only: no "1" or true for 1.0.
MAX_ABS_VALUE = 1e30


# The bound is checked by pydantic-core, not by a Python validator (a Python call per point of
# every request); `error_message` gives its errors the reason.
Value = Annotated[float, Field(strict=True, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE),
                  WithJsonSchema({"type": "number", "minimum": -MAX_ABS_VALUE,
                                  "maximum": MAX_ABS_VALUE})]


def _echo(value) -> str:
    """A rejected number as given (repr: 1.0000001e+30, not a rounded 1e+30), an integer of many
    digits shortened."""
    text = repr(value)
    return text if len(text) <= 32 else f"{text[:12]}...({len(text)} digits)"


def plain_digits(name: str) -> str:
    """The message for a query integer that is not plain digits (pydantic's refusal or ours)."""
    return f"{name} must be a whole number in plain digits"


def error_message(error: dict) -> str:
    """A pydantic error's message, with the reason for the values' bound."""
    loc = tuple(error.get("loc", ()))
    if len(loc) == 2 and loc[0] == "query" and error.get("type", "").startswith("int_"):
        return plain_digits(loc[1])
    ctx = error.get("ctx") or {}
    limit = ctx.get("le", ctx.get("ge"))
    kind, given = error.get("type"), error.get("input")
    if kind in ("less_than_equal", "greater_than_equal") and limit in (MAX_ABS_VALUE, -MAX_ABS_VALUE):
        return too_large(given)
    if len(loc) >= 2 and loc[-2] == "values" and isinstance(loc[-1], int):  # (a point: worded as
        # the columnar form's checks word it, service/columnar.py)
        if kind == "finite_number":
            return NOT_FINITE
        if kind in ("float_type", "float_parsing"):
            return too_large(given) if type(given) is int else NOT_A_POINT
    return str(error.get("msg"))


NOT_A_POINT = "a value is a number or null"  # a point's refusals, in every form's words
NOT_FINITE = "must be finite (a missing point is null)"


def too_large(given) -> str:
    return (f"values must be at most {MAX_ABS_VALUE:g} in magnitude (the model holds points in "
            f"float32); got {_echo(given)}")
# Lists are validated `fail_fast`: the first bad element is reported, not one error object per bad
# element (a 12 MB body of a million bad values cost gigabytes that way).
Values = list[Value | None]
TIMESTAMPS_RULE = ("one ISO 8601 timestamp per value (naive ones are UTC), strictly increasing, "
                   "on the series' grid; gaps are filled (see the README)")
FREQ_RULE = ("the frequency of a new series' timestamps (inferred from them when left out); "
             "fixed at creation")
NULLS_RULE = "null: a missing point, filled with the last value before it"


MAX_LEVELS = 10
Level = Annotated[float, Field(strict=True, gt=0, lt=100),
                  WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100})]
QuantileLevel = Annotated[float, Field(strict=True, gt=0, lt=1),
                          WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})]
LEVEL_RULE = ("prediction intervals at these coverage levels (percent, in (0, 100); at most 10), "
              "calibrated online on the series' own errors; needs a model with quantiles")
QUANTILES_RULE = "these quantiles (in (0, 1); at most 10) of each forecast point"
ANOMALY_RULE = ("flag the new points outside the series' calibrated interval at this level "
                "(percent) of the forecast made before them; off when left out")
MAX_GAP_RULE = ("at most this many points may be filled into gaps between timestamps in this "
                "request (at most the server's --max-gap-points, its default); 0: a gap is "
                "refused (422 naming the timestamp after it) instead of filled, so nothing is "
                "appended that was not sent (send null for a point whose value is unknown)")


class Interval(BaseModel):
    level: float
    lo: list[float]
    hi: list[float]


class QuantileValues(BaseModel):
    q: float
    values: list[float]


class Anomaly(BaseModel):
    index: int = Field(description="position among the appended values")
    value: float
    lo: float
    hi: float


class Distribution(Strict):
    """What a forecast request may ask for beside the mean."""

    level: list[Level] | None = Field(None, max_length=MAX_LEVELS, description=LEVEL_RULE)
    quantiles: list[QuantileLevel] | None = Field(None, max_length=MAX_LEVELS,
                                                  description=QUANTILES_RULE)

    @field_validator("level", "quantiles")
    @classmethod
    def each_once(cls, levels: list[float] | None) -> list[float] | None:
        """A level asked for twice would be answered twice: a mistake, said so."""
        if levels is not None and len(set(levels)) != len(levels):
            twice = next(v for i, v in enumerate(levels) if v in levels[:i])
            raise PydanticCustomError("repeated", f"{twice:g} is given twice")
        return levels


class SeriesIn(Strict):
    id: str = Field(pattern=SERIES_ID_PATTERN, description=SERIES_ID_RULE)
    values: Values = Field(min_length=1, fail_fast=True, description="the whole history, oldest first; "
                           + NULLS_RULE)
    timestamps: list[Timestamp] | None = Field(None, fail_fast=True, description=TIMESTAMPS_RULE)
    freq: Freq | None = Field(None, description=FREQ_RULE)


class ForecastRequest(Distribution):
    series: list[SeriesIn] = Field(min_length=1, fail_fast=True)
    horizon: int = Field(96, ge=1, strict=True, description="points to forecast")


class SeriesForecast(BaseModel):
    id: str
    mean: list[float]
    intervals: list[Interval] | None = None
    quantiles: list[QuantileValues] | None = None
    timestamps: list[str] | None = Field(None, description="of the forecast points (when the "
                                         "series had timestamps)")


class ForecastResponse(BaseModel):
    model: str
    horizon: int
    forecasts: list[SeriesForecast]


class AppendRequest(Distribution):
    values: Values = Field(min_length=1, fail_fast=True,
                           description="new points, oldest first; " + NULLS_RULE)
    timestamps: list[Timestamp] | None = Field(None, fail_fast=True, description=TIMESTAMPS_RULE
                                               + "; left out for a series with timestamps: the next "
                                               "grid points")
    freq: Freq | None = Field(None, description=FREQ_RULE)
    horizon: int | None = Field(None, ge=1, strict=True,
                                description="also return a forecast of this many points")
    anomaly_level: Level | None = Field(None, description=ANOMALY_RULE)
    max_gap_points: int | None = Field(None, ge=0, strict=True, description=MAX_GAP_RULE)


class Forecast(BaseModel):
    mean: list[float]
    intervals: list[Interval] | None = None
    quantiles: list[QuantileValues] | None = None
    timestamps: list[str] | None = Field(None, description="of the forecast points (series with "
                                         "timestamps)")


class AppendResponse(BaseModel):
    id: str
    length: int
    forecast: Forecast | None = None
    anomalies: list[Anomaly] | None = Field(None, description="with `anomaly_level`")


class BulkItem(Strict):
    id: str = Field(pattern=SERIES_ID_PATTERN, description=SERIES_ID_RULE)
    values: Values = Field(min_length=1, fail_fast=True,
                           description="new points, oldest first; " + NULLS_RULE)
    timestamps: list[Timestamp] | None = Field(None, fail_fast=True, description=TIMESTAMPS_RULE)
    freq: Freq | None = Field(None, description=FREQ_RULE)


class BulkAppendRequest(Distribution):
    series: list[BulkItem] = Field(min_length=1, fail_fast=True, description="appends, applied in "
                                   "order (an id may repeat: its appends apply in order)")
    horizon: int | None = Field(None, ge=1, strict=True, description="also return each series' "
                                "forecast of this many points")
    anomaly_level: Level | None = Field(None, description=ANOMALY_RULE)
    max_gap_points: int | None = Field(None, ge=0, strict=True, description=MAX_GAP_RULE)

    @model_validator(mode="wrap")
    @classmethod
    def _plain_ingest(cls, value, handler):
        """A plain bulk ingest (ids and numbers only) is checked in bulk, not item by item:
        service.bulk_ingest; anything else as the fields say."""
        from service import bulk_ingest  # (it reads this module's rules)

        return bulk_ingest.recognise(value) or handler(value)


class BulkAppendResponse(BaseModel):
    series: list[AppendResponse]


SeriesIdItem = Annotated[str, Field(pattern=SERIES_ID_PATTERN)]
COLUMNAR_RULE = ("The columnar form: run i is `values[offsets[i]:offsets[i + 1]]` (the last run to "
                 "the end of `values`) and is appended to series `ids[i]`. Checked whole in bulk "
                 "(one bad value refuses the request, naming it by its place in the flat arrays: "
                 "`values[17]`, `offsets[3]`, `ids[2]`). `freq` and `horizon` (and `level`, "
                 "`quantiles`) apply to every series; `anomaly_level` is the per-item form's only.")


class ColumnarBody:
    """A columnar bulk append as parsed JSON, checked by `service.columnar.parse` (in bulk, with
    the service's limits), not by pydantic (which would make an object per point)."""

    __slots__ = ("raw",)

    def __init__(self, raw: dict):
        self.raw = raw


class ColumnarAppendRequest(Distribution):
    """Documents the columnar form of `POST /series/append`; its checks are
    `service.columnar.parse`'s (the validator hands the body on unchecked)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra={"description": COLUMNAR_RULE})

    ids: list[SeriesIdItem] = Field(min_length=1, description="the series, in order; an id may "
                                    "repeat (its runs apply in order). " + SERIES_ID_RULE)
    offsets: list[int] = Field(min_length=1, description="where each series' run starts in "
                               "`values`: one per id, the first 0, strictly increasing (no empty "
                               "runs)")
    values: Values = Field(min_length=1, description="every series' new points, run after run; "
                           + NULLS_RULE)
    timestamps: list[Timestamp] | None = Field(None, description="one per value, parallel to "
                                               "`values`: " + TIMESTAMPS_RULE)
    freq: Freq | None = Field(None, description=FREQ_RULE + " (for every new series of the request)")
    horizon: int | None = Field(None, ge=1, strict=True, description="also return each series' "
                                "forecast of this many points")
    max_gap_points: int | None = Field(None, ge=0, strict=True, description=MAX_GAP_RULE)

    @model_validator(mode="wrap")
    @classmethod
    def _unchecked(cls, value, handler):
        return ColumnarBody(value)


def _form(value) -> str:
    return "columnar" if isinstance(value, dict) and "ids" in value else "per-item"


# POST /series/append's body: the columnar form when it has `ids`, else the per-item one. (The
# tags are left out of error fields: service.errors.field_path.)
BULK_FORMS = ("per-item", "columnar")
BulkAppendBody = Annotated[Annotated[BulkAppendRequest, Tag("per-item")]
                           | Annotated[ColumnarAppendRequest, Tag("columnar")], Discriminator(_form)]


class ColumnarForecast(BaseModel):
    offsets: list[int] = Field(description="where each series' forecast starts in `mean` "
                               "(i * horizon)")
    mean: list[float]
    intervals: list[Interval] | None = Field(None, description="`lo` and `hi` parallel to `mean`")
    quantiles: list[QuantileValues] | None = Field(None, description="`values` parallel to `mean`")
    timestamps: list[str | None] | None = Field(None, description="parallel to `mean` when a "
                                                "series has timestamps (null for those without)")


class ColumnarAppendResponse(BaseModel):
    """The columnar form's answer: parallel to the request's `ids`."""

    ids: list[str]
    lengths: list[int] = Field(description="each series' length after the append")
    forecast: ColumnarForecast | None = Field(None, description="with `horizon`")


class SeriesLength(BaseModel):
    id: str
    length: int


class SeriesList(BaseModel):
    series: list[SeriesLength]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; "
                                    "null on the last page")


class SeriesForecastResponse(BaseModel):
    id: str
    length: int
    horizon: int
    mean: list[float]
    intervals: list[Interval] | None = None
    quantiles: list[QuantileValues] | None = None
    timestamps: list[str] | None = Field(None, description="of the forecast points (series with "
                                         "timestamps)")


class SeriesInfo(BaseModel):
    id: str
    length: int
    model: str
    state_bytes: int
    patches: int
    tail_points: int
    freq: int | str | None = Field(None, description="seconds between points, or '1b' for "
                                   "business days (series with timestamps)")
    last_timestamp: str | None = Field(None, description="of the last point (series with "
                                       "timestamps)")


class ModelInfo(BaseModel):
    name: str
    config: dict
    manifest: dict
    streamable: bool
    device: str
    realigns_forecasts: bool = Field(description="whether a forecast from inside a patch (or from "
                                     "stale statistics) starts afresh at the newest point: a lag "
                                     "model with --realign-forecasts")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str


class ErrorBody(BaseModel):
    """Every refusal's body: what is wrong, and the field it is about (null: the request)."""

    detail: str
    field: str | None = None


class FieldError(BaseModel):
    field: str
    message: str


class ValidationErrorBody(ErrorBody):
    """A 422's body: the first problem in `detail` and `field`, and the first problems listed."""

    errors: list[FieldError] | None = Field(None, description="the first problems found (at most 20)")
