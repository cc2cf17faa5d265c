"""HTTP at the edge: every failure leaves as ``{"error": {"message", "type", "param", "code"}}``.

Domain errors (``service.exceptions``) map to their status here and nowhere else; validation problems are
the caller's (422, ``param`` names the field); an engine or store failure is ours and transient (503 with
``Retry-After``); anything unexpected is a 500 without a stack trace in the body.
"""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from service.exceptions import (
    Conflict,
    EngineError,
    Forbidden,
    InvalidRequest,
    NotFound,
    Overloaded,
    RetryLater,
    ServiceError,
    StoreUnavailable,
    Unauthenticated,
)

logger = logging.getLogger(__name__)

STATUS: dict[type[ServiceError], int] = {
    InvalidRequest: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthenticated: 401,
    Forbidden: 403,
    Overloaded: 429,
    StoreUnavailable: 503,
    EngineError: 503,
}
"""Status of each domain error (its nearest listed base class decides)."""


def status_of(exc: ServiceError) -> int:
    return next((STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS), 500)


def error_body(status_code: int, message: str, type_: str, param: str | None = None, **extra: object) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": status_code, **extra}}


async def send_error(send: Send, status_code: int, message: str, type_: str, param: str | None = None) -> None:
    """The one error shape straight to an ASGI ``send`` (for middlewares that answer before any route)."""
    body = orjson.dumps(error_body(status_code, message, type_, param))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _loc_to_param(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    param = _loc_to_param(tuple(first.get("loc", ("body",))))
    if first.get("type") == "json_invalid":
        message = f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        param = "body"
    else:
        message = f"{param}: {first['msg']}"
    details = [{"param": _loc_to_param(tuple(e.get("loc", ()))), "message": e["msg"]} for e in errors[:20]]
    return JSONResponse(status_code=422, content=error_body(422, message, "invalid_request", param, details=details))


async def _service_error_handler(request: Request, exc: ServiceError) -> JSONResponse:
    status = status_of(exc)
    headers: dict[str, str] = {}
    message = exc.message
    if isinstance(exc, RetryLater):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, EngineError):
        logger.warning("engine error: %s (%s)", exc, exc.detail)
        message = f"ranking engine unavailable: {message}"
    if isinstance(exc, StoreUnavailable):
        logger.warning("store error: %s (%s)", exc, exc.detail)
        request.app.state.r2rank.metrics.store_errors.labels(_operation(request)).inc()
    if status == 500:
        logger.error("domain error without a status: %r", exc)
    return JSONResponse(status_code=status, content=error_body(status, message, exc.type, exc.param), headers=headers)


def _operation(request: Request) -> str:
    """The resource a failed store call served (``users``, ``items``, ``rank``...): a bounded metric label."""
    route = getattr(request.scope.get("route"), "path", "") or "/"
    return route.strip("/").split("/")[0] or "root"


async def _http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(
        status_code=exc.status_code,
        content=error_body(exc.status_code, str(exc.detail), "http_error"),
        headers=getattr(exc, "headers", None),
    )


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s", request.url.path)
    return JSONResponse(status_code=500, content=error_body(500, "internal error", "internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
