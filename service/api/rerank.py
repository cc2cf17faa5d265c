"""Cohere-compatible rerank: POST /v1/rerank and /v2/rerank (same engine, contract, limits and errors)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.api.deps import RankerDep
from service.auth import require
from service.errors import ApiError
from service.protocol import ERROR_RESPONSES
from service.rerank import RerankRequest, RerankResponse, to_rank_request, to_rerank_response

router = APIRouter(tags=["rerank"], responses=ERROR_RESPONSES, dependencies=[Depends(require("rank"))])


async def _rerank(body: RerankRequest, ranker: RankerDep, request: Request, version: str) -> RerankResponse:
    rank_request = to_rank_request(body, request.headers.get("x-request-id"))
    try:
        ranked = await ranker.rank(rank_request)
    except ApiError as exc:  # name the rerank field, not the /rank one it maps to
        exc.param = {"candidates": "documents", "top_k": "top_n", "user_id": "query"}.get(exc.param, exc.param)
        exc.message = exc.message.replace("candidates:", "documents:", 1)
        raise
    return to_rerank_response(body, ranked, version)


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, summary="Cohere v1 rerank")
async def rerank_v1(body: RerankRequest, ranker: RankerDep, request: Request) -> RerankResponse:
    """Cohere's v1 rerank. `relevance_score` = sigmoid(r2rank score) = P(yes)/(P(yes)+P(no))."""
    return await _rerank(body, ranker, request, "1")


@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, summary="Cohere v2 rerank")
async def rerank_v2(body: RerankRequest, ranker: RankerDep, request: Request) -> RerankResponse:
    """Cohere's v2 rerank (same mapping as v1)."""
    return await _rerank(body, ranker, request, "2")
