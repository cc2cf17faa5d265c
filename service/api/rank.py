"""POST /rank: one user, many candidates, ranked by per-item reasoning."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.api.deps import RankerDep
from service.auth import require
from service.protocol import ERROR_RESPONSES, RankRequest, RankResponse

router = APIRouter(tags=["rank"], dependencies=[Depends(require("rank"))])


@router.post(
    "/rank",
    response_model=RankResponse,
    response_model_exclude_unset=True,  # "rationale" only when asked for; "score": null stays
    responses=ERROR_RESPONSES,
    summary="Rank candidate items for one user",
)
async def rank(body: RankRequest, ranker: RankerDep, request: Request) -> RankResponse:
    """Each candidate is reasoned about and scored on its own (no position bias); items come back by
    score, best first. Reuses the `X-Request-Id` header as request id when given."""
    request_id = request.headers.get("x-request-id") or body.request_id or request.state.request_id
    return await ranker.rank(body, request_id=request_id)
