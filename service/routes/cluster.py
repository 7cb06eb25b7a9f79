"""Moving a series between replicas (scale-out, deploy/rebalance.py): its state and metadata out
as one checked record, and in again on another replica of the same model.

`GET /series/{id}/export` answers the series' record: a one-series snapshot in the snapshot
format (service/snapshots.py: safetensors, content sha256, state version, model fingerprint),
with its sha256 in `X-Rimer-Sha256`. `PUT /series/{id}/import` takes such a record, checks it
whole, logs it (a state record in the write-ahead log, fsynced like an append) and holds the
series: 201. It is idempotent: the same record again (or a series held already with the same
state) is a 200 that changes nothing; a series held with another state is a 409, never
overwritten. A record of another model is a 409; a damaged one, or one of another id, a 422.
Both go through the series' lock, so they are ordered with the series' appends and deletes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.deps import KnownQuery, SeriesId, engine_of
from service.docs import errors
from service.errors import ServiceError
from service.snapshots import (
    ModelMismatch,
    StoreError,
    read_series_record,
    record_sha256,
    series_record,
)

router = APIRouter()


class ImportResult(BaseModel):
    id: str
    length: int
    imported: bool  # False: held already with exactly this state (nothing changed)
    sha256: str  # the record's content sha256 (X-Rimer-Sha256 of the export)

RECORD_TYPE = "application/vnd.rimer.series-record"


@router.get("/series/{series_id}/export", dependencies=KnownQuery, tags=["cluster"],
            summary="Export a series' state", response_class=Response,
            responses={200: {"content": {RECORD_TYPE: {}}, "description": "the series' record"},
                       **errors(401, 404, 422, 503)})
async def series_export(request: Request, series_id: str = SeriesId):
    """The series' state and metadata as one checked record (a one-series snapshot), for
    `PUT /series/{id}/import` on another replica serving the same model."""
    e = engine_of(request)

    async def work():
        def record():
            state, meta = e.export_series(series_id)
            return series_record(e, series_id, state, meta)
        return await run_in_threadpool(record)

    data = await request.app.state.series_locks.run([series_id], work)
    return Response(data, media_type=RECORD_TYPE, headers={"X-Rimer-Sha256": record_sha256(data)})


@router.put("/series/{series_id}/import", dependencies=KnownQuery, tags=["cluster"],
            summary="Import a series' state",
            openapi_extra={"requestBody": {  # (read raw, not by a model: described here)
                "required": True, "description": "the record `GET /series/{id}/export` answered",
                "content": {RECORD_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
            status_code=201, response_model=ImportResult,
            responses={200: {"model": ImportResult,
                             "description": "held already with exactly this state: nothing changed"},
                       **errors(401, 409, 413, 422, 503)})
async def series_import(request: Request, series_id: str = SeriesId):
    """Hold the series of a record from `GET /series/{id}/export` (durably: logged before the
    answer). 201 imported; 200 held already with exactly this state (nothing changed); 409 held
    with another state, or a record of another model; 422 a damaged record or another id."""
    e = engine_of(request)
    data = await request.body()
    try:
        found, state, meta, digest = await run_in_threadpool(read_series_record, data, e)
    except ModelMismatch as exc:
        raise ServiceError(409, str(exc), "body") from exc
    except StoreError as exc:
        raise ServiceError(422, str(exc), "body") from exc
    if found != series_id:
        raise ServiceError(422, f"the record holds series {found!r}, not {series_id!r}", "id")

    async def work():
        return await run_in_threadpool(e.import_series, series_id, state, meta, data, digest)

    imported = await request.app.state.series_locks.run([series_id], work)
    return JSONResponse({"id": series_id, "length": int(state.length[0]), "imported": imported,
                         "sha256": digest}, status_code=201 if imported else 200)
