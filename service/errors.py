"""One error shape for every failure: ``{"error": {"message", "type", "param", "code"}}``.

Validation problems are the caller's (4xx, ``param`` names the field); an engine failure is ours and
transient (503); anything unexpected is a 500 without a stack trace in the body.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.engine.base import EngineError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Raise anywhere in a request to answer with this status and error body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        type_: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type_
        self.param = param
        self.headers = headers


def error_body(status_code: int, message: str, type_: str, param: str | None = None, **extra: object) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": status_code, **extra}}


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


async def _api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.status_code,
        content=error_body(exc.status_code, exc.message, exc.type, exc.param),
        headers=exc.headers,
    )


async def _engine_error_handler(request: Request, exc: EngineError) -> JSONResponse:
    logger.warning("engine error: %s", exc)
    return JSONResponse(
        status_code=503,
        content=error_body(503, f"ranking engine unavailable: {exc}", "engine_unavailable"),
        headers={"Retry-After": "1"},
    )


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
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(EngineError, _engine_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
