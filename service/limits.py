"""Request body size limit, enforced while the body streams in (Content-Length may be absent or lie).

A client that sends its whole body before reading the reply (Python's ``urllib``, most HTTP libraries
without ``Expect: 100-continue``) must still read the 413: if the server answered and closed while body bytes
were unread, the kernel would reset the connection and the client would see ``ECONNRESET`` instead. So the
rest of an oversized body is read and discarded (bounded in bytes and time, never stored) before the 413 is
sent. A client that asked ``Expect: 100-continue`` has sent nothing yet and gets the 413 at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import send_error

DRAIN_MAX_BYTES = 64 * 1024 * 1024  # beyond this an oversized body is not read to its end (the client may see a reset)
DRAIN_TIMEOUT_S = 15.0


class BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Answers 413 (with the usual error body) once more than ``max_bytes`` are declared or arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if not expects_continue and int(declared) <= DRAIN_MAX_BYTES:
                await _drain(receive)
            await self._reject(send)
            return
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    if message.get("more_body"):
                        await _drain(receive)
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # whatever the app answers to a body it never got whole, the caller gets the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if too_large and not started:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        message = f"body: request body larger than {self.max_bytes} bytes"
        await send_error(send, 413, message, "request_too_large", "body")


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of the request body, up to ``DRAIN_MAX_BYTES`` and ``DRAIN_TIMEOUT_S``."""

    async def read() -> None:
        drained = 0
        while drained <= DRAIN_MAX_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(read(), DRAIN_TIMEOUT_S)
