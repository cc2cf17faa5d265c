"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import StateDep

router = APIRouter(tags=["health"])

NOT_READY = {503: {"description": "Not ready: the body says which part (engine, redis) and why."}}


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", summary="Engine loaded and a warm-up ranking passed (Redis reported separately)", responses=NOT_READY
)
async def readyz(state: StateDep) -> JSONResponse:
    """What the background checks last saw (engine every 2 s, Redis every 2 s): answered at once, so a slow
    engine or router cannot make probes time out, and an unauthenticated probe sends nothing to the engine."""
    engine_ok, engine_detail = state.ready, state.not_ready_reason
    body = {
        "ready": engine_ok,
        "model_version": state.engine.model_version,
        "candidate_sources": list(state.engine.checkpoint.manifest.candidate_sources),  # what /rank may be told
        "engine": {"backend": state.engine.name, "ok": engine_ok, "detail": engine_detail},
        "redis": state.store_status(),
    }
    return JSONResponse(status_code=200 if engine_ok else 503, content=body)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
