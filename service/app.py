"""The FastAPI app factory. Nothing is built at import time: ``create_app(settings)`` builds everything,
and the engine lives exactly as long as the app's lifespan."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import ORJSONResponse

from service.api import admin, health, items, rank, rerank, users
from service.config import Settings
from service.engine.base import ReasoningEngine
from service.errors import install_error_handlers
from service.limits import BodySizeLimitMiddleware
from service.logs import request_id_var
from service.state import ServiceState, build_engine, load_checkpoint

logger = logging.getLogger(__name__)
access_log = logging.getLogger("r2rank.access")


def create_app(settings: Settings | None = None, engine: ReasoningEngine | None = None) -> FastAPI:
    """Build the app. ``engine`` lets tests inject a backend; by default the settings choose one."""
    settings = settings or Settings()
    if engine is None:
        engine = build_engine(settings, load_checkpoint(settings))
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
        version="0.1.0",
        description="Reasoning-to-Rank: an LLM reasons about each user-item pair, then scores it.",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.state.r2rank = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.include_router(rank.router)
    app.include_router(rerank.router)
    app.include_router(users.router)
    app.include_router(items.router)
    app.include_router(admin.router)
    app.include_router(health.router)

    @app.middleware("http")
    async def observe(request: Request, call_next) -> Response:
        """Request id (the caller's X-Request-Id or a new one) for logs and the reply; counts and latency by
        route template (not raw path: bounded label cardinality); one access log line."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["X-Request-Id"] = request_id
            return response
        finally:
            elapsed = time.perf_counter() - started
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            state.metrics.requests.labels(path, request.method, str(status)).inc()
            state.metrics.latency.labels(path, request.method).observe(elapsed)
            access_log.info(
                "request",
                extra={"method": request.method, "route": path, "status": status, "ms": round(elapsed * 1000, 2)},
            )
            request_id_var.reset(token)

    return app
