"""The outermost middleware: the request id, resolved once; request counts and latency; one access line.

The id is the caller's ``X-Request-Id`` (validated) or a new one, set before any other code runs, so the reply
header, the reply body (``request_id``) and every log line of the request carry the same value. A route
whose body has a ``request_id`` field adopts it when no header came (``RequestContext.adopt``).
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import send_error
from service.logs import RequestContext, request_context
from service.metrics import Metrics
from service.protocol import MAX_REQUEST_ID_CHARS, valid_request_id

access_log = logging.getLogger("r2rank.access")

REQUEST_ID_HEADER = "X-Request-Id"


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        header = next((v for k, v in scope.get("headers") or [] if k == b"x-request-id"), None)
        presented = header.decode("latin-1") if header is not None else None
        context = RequestContext(presented or uuid.uuid4().hex, from_header=bool(presented))
        token = request_context.set(context)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", context.request_id.encode())]
            await send(message)

        try:
            if presented is not None and not valid_request_id(presented):
                context.request_id, context.from_header = uuid.uuid4().hex, False
                message = f"{REQUEST_ID_HEADER}: at most {MAX_REQUEST_ID_CHARS} printable ASCII characters"
                await send_error(send_with_id, 422, message, "invalid_request", REQUEST_ID_HEADER)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(elapsed)
            access_log.info("request", extra={"method": method, "route": path, "status": status,
                                              "ms": round(elapsed * 1000, 2)})  # fmt: skip
            request_context.reset(token)
