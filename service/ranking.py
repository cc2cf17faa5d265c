"""The /rank pipeline: validate → build prompts (contract) → score every item at once → sort.

Kept free of HTTP: the router hands it a ``RankRequest`` and gets a ``RankResponse`` back, so the same
pipeline serves other front doors (e.g. a rerank API) and is testable without a server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from service import contract
from service.checkpoint import Checkpoint
from service.config import Settings
from service.engine.base import ItemScore, ReasoningEngine, ScoringJob
from service.errors import ApiError
from service.metrics import Metrics
from service.protocol import ItemIn, RankedItem, RankRequest, RankResponse


@dataclass(frozen=True)
class PreparedRequest:
    """A request turned into engine jobs; the history prefix is tokenized once for all candidates."""

    history_titles: list[str]
    jobs: list[ScoringJob]


def prepare_prompts(
    checkpoint: Checkpoint, history: Sequence[ItemIn], candidates: Sequence[ItemIn], reasoning: contract.Reasoning
) -> PreparedRequest:
    manifest = checkpoint.manifest
    encoder = checkpoint.encoder

    def safe_title(title: str) -> str:
        return contract.truncate_to_tokens(contract.clean_title(title), encoder, manifest.max_title_tokens)

    titles = [t for t in (safe_title(h.title) for h in history[-manifest.max_history_items :]) if t]
    titles = contract.select_history(titles, encoder, manifest.max_history_items, manifest.max_history_tokens)
    prefix_ids = encoder.encode(contract.history_prefix(titles))
    jobs = [
        ScoringJob(prefix_ids + encoder.encode(contract.candidate_segment(safe_title(c.title), reasoning)), reasoning)
        for c in candidates
    ]
    return PreparedRequest(titles, jobs)


def rank_order(item_ids: Sequence[str], scores: Sequence[float]) -> list[int]:
    """Indices by score descending; ties broken by item_id ascending, so the order is deterministic."""
    return sorted(range(len(item_ids)), key=lambda i: (-scores[i], item_ids[i]))


class Ranker:
    def __init__(self, engine: ReasoningEngine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics

    @property
    def model_version(self) -> str:
        return self.engine.model_version

    def validate(self, request: RankRequest) -> None:
        """Limits that depend on settings (the schema holds the static ones)."""
        if len(request.candidates) > self.settings.max_candidates:
            raise ApiError(
                422,
                f"candidates: at most {self.settings.max_candidates} per request, got {len(request.candidates)}",
                "invalid_request",
                "candidates",
            )
        if len(request.history) > self.settings.max_history_request:
            raise ApiError(
                422,
                f"history: at most {self.settings.max_history_request} items, got {len(request.history)}",
                "invalid_request",
                "history",
            )
        if request.include_rationales and request.reasoning == "none":
            raise ApiError(
                422,
                "include_rationales: no rationale exists with reasoning='none'",
                "invalid_request",
                "include_rationales",
            )

    async def rank(self, request: RankRequest, request_id: str | None = None) -> RankResponse:
        started = time.perf_counter()
        self.validate(request)
        request_id = request_id or request.request_id or uuid.uuid4().hex
        prepared = prepare_prompts(self.engine.checkpoint, request.history, request.candidates, request.reasoning)

        engine_started = time.perf_counter()
        results = await self.engine.score_items(prepared.jobs, request_id)
        engine_s = time.perf_counter() - engine_started
        self._record(request.reasoning, results, engine_s)

        items = self._build_items(request, results)
        return RankResponse(
            request_id=request_id,
            model_version=self.model_version,
            items=items,
            degraded=False,
            timings_ms={
                "total": round((time.perf_counter() - started) * 1000, 3),
                "engine": round(engine_s * 1000, 3),
            },
        )

    def _build_items(self, request: RankRequest, results: Sequence[ItemScore]) -> list[RankedItem]:
        ids = [c.item_id for c in request.candidates]
        order = rank_order(ids, [r.score for r in results])
        if request.top_k is not None:
            order = order[: request.top_k]
        return [
            RankedItem(
                item_id=ids[i],
                score=results[i].score,
                rank=rank,
                rationale=results[i].rationale if request.include_rationales else None,
            )
            for rank, i in enumerate(order, start=1)
        ]

    def _record(self, reasoning: str, results: Sequence[ItemScore], engine_s: float) -> None:
        self.metrics.items_scored.labels(reasoning).inc(len(results))
        self.metrics.rationale_tokens.inc(sum(r.rationale_tokens for r in results))
        self.metrics.engine_latency.labels(reasoning).observe(engine_s)
