"""Dependencies shared by the routers (``Annotated`` aliases keep handler signatures short)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.errors import ApiError
from service.ranking import Ranker
from service.state import ServiceState


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


StateDep = Annotated[ServiceState, Depends(get_state)]
RankerDep = Annotated[Ranker, Depends(get_ranker)]
