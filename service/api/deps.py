"""Dependencies shared by the routers (``Annotated`` aliases keep handler signatures short)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import ApiError
from service.ranking import Ranker
from service.state import ServiceState
from service.store import RedisStore


def get_state(request: Request) -> ServiceState:
    return request.app.state.r2rank


def get_ranker(request: Request) -> Ranker:
    state: ServiceState = request.app.state.r2rank
    if not state.ready:
        raise ApiError(
            503,
            f"ranking engine is not ready: {state.not_ready_reason}",
            "engine_unavailable",
            headers={"Retry-After": "5"},
        )
    return state.ranker


def get_store(request: Request) -> RedisStore:
    store = request.app.state.r2rank.store
    if store is None:
        raise ApiError(503, "no Redis store is configured (R2RANK_REDIS_URL is empty)", "store_unavailable")
    return store


StateDep = Annotated[ServiceState, Depends(get_state)]
StoreDep = Annotated[RedisStore, Depends(get_store)]
RankerDep = Annotated[Ranker, Depends(get_ranker)]
