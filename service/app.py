"""The FastAPI app factory. Nothing is built at import time: ``create_app(settings)`` builds everything,
and the engine lives exactly as long as the app's lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse

from contract.checkpoint import open_checkpoint
from service.api import admin, health, items, rank, rerank, users
from service.config import Settings
from service.engine.base import ReasoningEngine
from service.engine.factory import build_engine
from service.errors import install_error_handlers
from service.limits import BodySizeLimitMiddleware
from service.observe import ObserveMiddleware
from service.state import ServiceState

logger = logging.getLogger(__name__)

API_VERSION = "0.1.0"


def create_app(settings: Settings | None = None, engine: ReasoningEngine | None = None) -> FastAPI:
    """Build the app. ``engine`` lets tests inject a backend; by default the settings choose one."""
    settings = settings or Settings()
    if engine is None:
        engine = build_engine(settings, open_checkpoint(settings.model_path))
    state = ServiceState.create(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="r2rank",
        version=API_VERSION,
        description="Reasoning-to-Rank: an LLM reasons about each user-item pair, then scores it.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.state.r2rank = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ObserveMiddleware, metrics=state.metrics)  # outermost: ids and metrics for every reply
    for router in (rank.router, rerank.router, users.router, items.router, admin.router, health.router):
        app.include_router(router)
    app.openapi = _openapi_with_runtime_bounds(app, settings)  # type: ignore[method-assign]
    return app


def _openapi_with_runtime_bounds(app: FastAPI, settings: Settings):
    """The schema with the configured list bounds (``R2RANK_MAX_CANDIDATES``, ``R2RANK_MAX_HISTORY_REQUEST``) in
    place of the models' hard ones, so a client generated from it refuses what this service refuses."""
    build = app.openapi
    bounds = {
        "RankRequest": {"candidates": settings.max_candidates, "history": settings.max_history_request},
        "RerankRequest": {"documents": settings.max_candidates},
    }

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for model, fields in bounds.items():
                properties = schema["components"]["schemas"][model]["properties"]
                for name, bound in fields.items():
                    for variant in properties[name].get("anyOf", [properties[name]]):
                        if variant.get("type") == "array":
                            variant["maxItems"] = bound
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
