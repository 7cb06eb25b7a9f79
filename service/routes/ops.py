"""Operations: liveness, readiness, Prometheus metrics, the loaded model."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service import schemas
from service.deps import KnownQuery, engine_of
from service.docs import errors
from service.strict_json import StrictJsonRoute

router = APIRouter(route_class=StrictJsonRoute)  # a key given twice in a JSON object: 422


@router.api_route("/healthz", methods=["GET", "HEAD"], response_model=schemas.Health,
                  tags=["operations"], summary="Liveness")  # (HEAD: load balancers' probes)
async def healthz():
    """Liveness: the process answers (weights may still be loading)."""
    return {"status": "ok"}


@router.api_route("/readyz", methods=["GET", "HEAD"], tags=["operations"], summary="Readiness",
                  responses={503: {"description": "the model is not loaded yet"}})
async def readyz(request: Request):
    """Readiness: 200 once the weights are loaded, 503 before."""
    e = getattr(request.app.state, "engine", None)
    if e is None:
        return JSONResponse({"status": "loading", "detail": "the model is not loaded yet"},
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
