"""What can go wrong inside the service, said in the domain's words; ``service.errors`` turns each kind into
an HTTP status, the one error body and ``Retry-After`` at the edge.

The pipeline (``ranking``, ``model_manager``, the store, the engines, auth) raises these and never an HTTP
status, so the same code serves other front doors and tests without a server.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every domain error: a message for the caller, the field it is about, a machine-readable type."""

    type: str = "internal_error"

    def __init__(
        self, message: str, param: str | None = None, type_: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.detail = detail  # for the logs only: may name internal hosts and URLs, which replies never carry
        if type_ is not None:
            self.type = type_

    def renamed(self, params: dict[str, str]) -> ServiceError:
        """The same error about another front door's field (rerank's ``documents`` for ``candidates``)."""
        param = params.get(self.param or "", self.param)
        message = self.message
        if self.param and param != self.param and message.startswith(f"{self.param}"):
            message = param + message[len(self.param) :]
        self.param, self.message = param, message
        self.args = (message,)
        return self


class InvalidRequest(ServiceError):
    """The request cannot be served as sent; ``param`` names the field to change."""

    type = "invalid_request"


class NotFound(ServiceError):
    type = "not_found"


class Conflict(ServiceError):
    """Refused in the current state (an eval gate, no previous model, an operation this setup cannot do)."""

    type = "conflict"


class Unauthenticated(ServiceError):
    type = "unauthenticated"


class Forbidden(ServiceError):
    type = "forbidden"


class RetryLater(ServiceError):
    """Transient: the caller should retry after ``retry_after_s``."""

    def __init__(
        self, message: str, retry_after_s: float = 1.0, param: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message, param, detail=detail)
        self.retry_after_s = retry_after_s


class Overloaded(RetryLater):
    """More work in flight than the service admits (backpressure, not a queue)."""

    type = "overloaded"


class StoreUnavailable(RetryLater):
    """Redis could not be reached or answered an error: nothing was (or can be known to be) stored."""

    type = "store_unavailable"


class EngineError(RetryLater):
    """The engine failed, is unreachable, or is not ready: ours and transient, never the caller's fault."""

    type = "engine_unavailable"


class ItemRejected(EngineError):
    """The engine refused one item's prompt (an HTTP 400 for it alone): that item gets a fallback score and the
    rest of the request is still scored, where an engine failure fails the request."""

    type = "engine_rejected_item"
