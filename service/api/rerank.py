"""Cohere-compatible rerank: POST /v1/rerank and /v2/rerank (same engine, contract, limits and errors)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.api.deps import RankerDep, RequestContextDep, charge_items, request_id_header
from service.auth import AuthenticatedRoute, require
from service.exceptions import ServiceError
from service.protocol import RANKING_ERROR_RESPONSES
from service.rerank import RerankRequest, RerankResponse, to_rank_request, to_rerank_response

router = APIRouter(route_class=AuthenticatedRoute, tags=["rerank"], responses=RANKING_ERROR_RESPONSES,
                   dependencies=[Depends(require("rank")), Depends(request_id_header)])  # fmt: skip


RERANK_PARAMS = {"candidates": "documents", "top_k": "top_n", "user_id": "query"}


async def _rerank(
    body: RerankRequest, ranker: RankerDep, context: RequestContextDep, request: Request, version: str
) -> RerankResponse:
    await charge_items(request, len(body.documents))
    try:
        ranked = await ranker.rank(to_rank_request(body), context.request_id, catalogue_ids=False)
    except ServiceError as exc:  # name the rerank field, not the /rank one it maps to
        raise exc.renamed(RERANK_PARAMS) from None
    return to_rerank_response(body, ranked, version)


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, summary="Cohere v1 rerank")
async def rerank_v1(
    body: RerankRequest, ranker: RankerDep, context: RequestContextDep, request: Request
) -> RerankResponse:
    """Cohere's v1 rerank. `relevance_score` = sigmoid(r2rank score) = P(yes)/(P(yes)+P(no))."""
    return await _rerank(body, ranker, context, request, "1")


@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, summary="Cohere v2 rerank")
async def rerank_v2(
    body: RerankRequest, ranker: RankerDep, context: RequestContextDep, request: Request
) -> RerankResponse:
    """Cohere's v2 rerank (same mapping as v1)."""
    return await _rerank(body, ranker, context, request, "2")
