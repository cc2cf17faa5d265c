"""Dependencies shared by the routers (``Annotated`` aliases keep handler signatures short)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from service.exceptions import EngineError, StoreUnavailable
from service.logs import RequestContext, request_context
from service.ranking import Ranker
from service.state import ServiceState
from service.store import RedisStore


def get_state(request: Request) -> ServiceState:
    return request.app.state.r2rank


def get_ranker(request: Request) -> Ranker:
    state: ServiceState = request.app.state.r2rank
    if not state.ready:
        raise EngineError(f"not ready: {state.not_ready_reason}", retry_after_s=5)
    return state.ranker


def get_store(request: Request) -> RedisStore:
    store = request.app.state.r2rank.store
    if store is None:
        raise StoreUnavailable("no Redis store is configured (R2RANK_REDIS_URL is empty)")
    return store


async def charge_items(request: Request, items: int) -> None:
    """Take a request's candidate items from its API key's item rate (when it has one)."""
    charged = getattr(request.state, "api_key", None)
    if charged is not None:
        await request.app.state.r2rank.rates.take_items(*charged, items)


def request_id_header(
    x_request_id: Annotated[
        str | None,
        Header(
            alias="X-Request-Id",
            max_length=128,
            description="The request's id (1-128 printable ASCII characters): echoed in the reply and the logs.",
        ),
    ] = None,
) -> None:
    """Declares the header in the API's schema (``ObserveMiddleware`` reads and validates it)."""


def get_request_context() -> RequestContext:
    """The request's id holder, set by ``ObserveMiddleware`` before anything else ran."""
    context = request_context.get()
    if context is None:  # only an app mounted without its middleware
        raise RuntimeError("ObserveMiddleware is not installed")
    return context


StateDep = Annotated[ServiceState, Depends(get_state)]
StoreDep = Annotated[RedisStore, Depends(get_store)]
RankerDep = Annotated[Ranker, Depends(get_ranker)]
RequestContextDep = Annotated[RequestContext, Depends(get_request_context)]
