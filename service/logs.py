"""Logging: one JSON object per line with the request id; user histories and rationales are never logged
at INFO (only ids, counts and timings are)."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RequestContext:
    """What every log line of one request carries. Mutable on purpose: the id is resolved once at the edge,
    and a body ``request_id`` (for callers that cannot set headers) replaces the generated one before any work,
    visible to the middleware that writes the reply header and the access line."""

    request_id: str
    from_header: bool = False

    def adopt(self, request_id: str | None) -> str:
        """The request's id: the header's if one came, else ``request_id`` if given, else the generated one."""
        if request_id and not self.from_header:
            self.request_id = request_id
        return self.request_id


request_context: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = request_context.get()
        record.request_id = context.request_id if context else None
        return True


def configure_logging(level: str = "info", json_logs: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if json_logs:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )  # fmt: skip
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):  # our middleware writes one access line per request instead
        logging.getLogger(noisy).disabled = True
