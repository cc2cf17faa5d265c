"""The Cohere-compatible rerank API (``/v1/rerank``, ``/v2/rerank``) on top of the /rank pipeline.

Mapping: ``query`` is the user context — ``user:<id>`` takes that user's stored history, any other text is
read as history titles, one per line, oldest first. Each document is one candidate item (``item_id`` = its
index, used only to map the results back). Documents, and a query's titles, are known by their text alone:
no statistic is looked up by those ids (``Ranker.rank(catalogue_ids=False)``), so each document is scored as a
new item with that title, and its score does not depend on where it stands among the documents.
``relevance_score`` = sigmoid(r2rank score) = P(" yes") / (P(" yes") + P(" no")): the model's probability of
"yes" among the two answers, in (0, 1) and in the same order as the r2rank score.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from service.exceptions import InvalidRequest
from service.protocol import HARD_MAX_CANDIDATES, EchoedExtras, ItemIn, RankRequest, RankResponse

DocumentText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
USER_QUERY_PREFIX = "user:"


class DocumentObject(EchoedExtras):
    text: DocumentText


class RerankRequest(BaseModel):
    """Cohere's rerank body (both versions); r2rank-only fields are marked as extensions."""

    model_config = ConfigDict(
        extra="ignore",  # other Cohere fields (max_chunks_per_doc, max_tokens_per_doc, rank_fields) are accepted
        json_schema_extra={
            "examples": [
                {
                    "model": "r2rank",
                    "query": "Super Mario Odyssey\nThe Legend of Zelda: Breath of the Wild",
                    "documents": ["Mario Kart 8 Deluxe", "Call of Duty: WWII", "Splatoon 2"],
                    "top_n": 2,
                    "return_documents": True,
                }
            ]
        },
    )

    model: str | None = Field(None, description="Accepted and echoed nowhere: the service serves one model.")
    query: Annotated[str, StringConstraints(min_length=1, max_length=20_000)] = Field(
        description="History titles, one per line (oldest first), or 'user:<id>' for the stored history."
    )
    documents: list[DocumentText | DocumentObject] = Field(
        min_length=1, max_length=HARD_MAX_CANDIDATES, description="Candidate items (their titles)."
    )
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    reasoning: Literal["full", "none"] = Field("full", description="r2rank extension: see POST /rank.")


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str
    results: list[RerankResult]
    meta: dict[str, Any]


def relevance_score(score: float) -> float:
    """sigmoid(log P(yes) − log P(no)), computed without overflow."""
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    z = math.exp(score)
    return z / (1.0 + z)


def _text(document: str | DocumentObject) -> str:
    return document if isinstance(document, str) else document.text


def to_rank_request(body: RerankRequest) -> RankRequest:
    """The /rank request a rerank body stands for; a query or document /rank cannot take is a 422 naming the
    rerank field (``query``, ``documents``)."""
    try:
        return _rank_request(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "query"
        param = {"candidates": "documents"}.get(field, "query")
        raise InvalidRequest(f"{param}: {first['msg']}", param) from None


def _rank_request(body: RerankRequest) -> RankRequest:
    query = body.query.strip()
    user_id: str | None = None
    history: list[ItemIn] | None
    if query.startswith(USER_QUERY_PREFIX) and "\n" not in query:
        user_id, history = query[len(USER_QUERY_PREFIX) :].strip() or None, None
    else:
        lines = [line.strip() for line in query.splitlines() if line.strip()]
        history = [ItemIn(item_id=f"q{i}", title=line[:2000]) for i, line in enumerate(lines)]
    return RankRequest(
        user_id=user_id,
        history=history,
        candidates=[ItemIn(item_id=str(i), title=_text(d)) for i, d in enumerate(body.documents)],
        top_k=body.top_n,
        reasoning=body.reasoning,
    )


def to_rerank_response(body: RerankRequest, ranked: RankResponse, api_version: str) -> RerankResponse:
    results = [
        RerankResult(
            index=int(item.item_id),
            relevance_score=relevance_score(item.score) if item.score is not None else 0.0,  # deadline fallback
            document=RerankDocument(text=_text(body.documents[int(item.item_id)])) if body.return_documents else None,
        )
        for item in ranked.items
    ]
    return RerankResponse(
        id=ranked.request_id,
        results=results,
        meta={
            "api_version": {"version": api_version},
            "billed_units": {"search_units": 1},
            "model_version": ranked.model_version,
        },
    )
