"""POST /rank: one user, many candidates, ranked by per-item reasoning."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.api.deps import RankerDep, RequestContextDep, charge_items, request_id_header
from service.auth import AuthenticatedRoute, require
from service.protocol import RANKING_ERROR_RESPONSES, RankRequest, RankResponse

router = APIRouter(
    route_class=AuthenticatedRoute, tags=["rank"], dependencies=[Depends(require("rank")), Depends(request_id_header)]
)


@router.post(
    "/rank",
    response_model=RankResponse,
    response_model_exclude_unset=True,  # "rationale" only when asked for; "score": null stays
    responses=RANKING_ERROR_RESPONSES,
    summary="Rank candidate items for one user",
)
async def rank(body: RankRequest, ranker: RankerDep, context: RequestContextDep, request: Request) -> RankResponse:
    """Each candidate is reasoned about and scored on its own (no position bias); items come back by
    score, best first. The request id is the `X-Request-Id` header, else the body's `request_id`, else a new
    one; the reply body, the reply header and the logs carry the same."""
    await charge_items(request, len(body.candidates))
    return await ranker.rank(body, context.adopt(body.request_id))
