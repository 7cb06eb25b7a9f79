"""Operations: liveness, readiness, Prometheus metrics, the loaded model."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service import schemas
from service.deps import KnownQuery, engine_of
from service.docs import errors
from service.strict_json import StrictJsonRoute

router = APIRouter(route_class=StrictJsonRoute)  # a key given twice in a JSON object: 422


# (HEAD for load balancers' probes, kept out of the schema: one operation per path there)
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=schemas.Health, tags=["operations"], summary="Liveness")
async def healthz():
    """Liveness: the process answers (weights may still be loading)."""
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", tags=["operations"], summary="Readiness",
            responses={503: {"description": "the model is not loaded yet, or the write-ahead "
                                            "log failed and every change is refused"}})
async def readyz(request: Request):
    """Readiness: 200 once the weights are loaded; 503 before, and after the write-ahead log
    failed (a full disk: every change is refused until a restart, while forecasts still work)."""
    e = getattr(request.app.state, "engine", None)
    if e is None:
        return JSONResponse({"status": "loading", "detail": "the model is not loaded yet"},
                            status_code=503)
    store = getattr(request.app.state, "store", None)
    failure = store.log_failure() if store is not None else None
    if failure is not None:
        return JSONResponse({"status": "failing", "detail": f"the write-ahead log failed "
                             f"({failure}); changes are refused until the service is restarted"},
                            status_code=503)
    return {"status": "ready", "model": e.name, "backend": e.backend, "device": str(e.device)}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request):
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/models", response_model=schemas.ModelsResponse, dependencies=KnownQuery,
            tags=["operations"], summary="The loaded model", responses=errors(401, 422, 503))
async def models(request: Request):
    """Its name, configuration, manifest (training data, licences, hardware) and device."""
    e = engine_of(request)
    return {"models": [{"name": e.name, "config": e.model.cfg.to_dict(), "manifest": e.manifest,
                        "streamable": e.model.cfg.streamable, "device": str(e.device),
                        "realigns_forecasts": e.model.realigns}]}
