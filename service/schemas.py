"""Request and response bodies of the HTTP API (validation lives here, not in the engine)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SERIES_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SERIES_ID_RULE = ("1 to 128 characters: letters, digits, '.', '_', ':', '-', starting with a "
                  "letter or digit")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SeriesIn(Strict):
    id: str = Field(pattern=SERIES_ID_PATTERN, description=SERIES_ID_RULE)
    values: list[float] = Field(min_length=1, description="the whole history, oldest first")


class ForecastRequest(Strict):
    series: list[SeriesIn] = Field(min_length=1)
    horizon: int = Field(96, ge=1, description="points to forecast")


class SeriesForecast(BaseModel):
    id: str
    mean: list[float]


class ForecastResponse(BaseModel):
    model: str
    horizon: int
    forecasts: list[SeriesForecast]


class AppendRequest(Strict):
    values: list[float] = Field(min_length=1, description="new points, oldest first")
    horizon: int | None = Field(None, ge=1, description="also return a forecast of this many points")


class Forecast(BaseModel):
    mean: list[float]


class AppendResponse(BaseModel):
    id: str
    length: int
    forecast: Forecast | None = None


class BulkItem(Strict):
    id: str = Field(pattern=SERIES_ID_PATTERN, description=SERIES_ID_RULE)
    values: list[float] = Field(min_length=1, description="new points, oldest first")


class BulkAppendRequest(Strict):
    series: list[BulkItem] = Field(min_length=1, description="appends, applied in order (an id "
                                   "may repeat: its appends apply in order)")
    horizon: int | None = Field(None, ge=1, description="also return each series' forecast of "
                                "this many points")


class BulkAppendResponse(BaseModel):
    series: list[AppendResponse]


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


class SeriesInfo(BaseModel):
    id: str
    length: int
    model: str
    state_bytes: int
    patches: int
    tail_points: int


class ModelInfo(BaseModel):
    name: str
    config: dict
    manifest: dict
    streamable: bool
    device: str


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str


class ErrorBody(BaseModel):
    detail: str
    field: str | None = None
