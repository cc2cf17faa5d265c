"""The /rank pipeline: validate → history → titles → evidence and prompts (contract) → score cache → engine → sort.

Free of HTTP: it takes a ``RankRequest`` and its request id and returns a ``RankResponse``, raising domain
errors (``service.exceptions``) that the edge turns into statuses, so the same pipeline serves other front
doors (the rerank API, the trainer's eval) and is testable without a server.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence

from contract.assembly import RequestPrompts
from contract.evidence import Evidence, Item
from service.config import Settings
from service.engine.base import ItemScore, ReasoningEngine, ScoringJob
from service.exceptions import InvalidRequest, Overloaded, StoreUnavailable
from service.metrics import Metrics
from service.protocol import EvidenceOut, ItemIn, RankedItem, RankRequest, RankResponse, ScoreSource
from service.store import CachedScore, RedisStore, score_cache_field, score_cache_fingerprint

logger = logging.getLogger(__name__)

CACHE_BACKOFF_S = 5.0  # after a cache failure, skip the cache this long instead of paying Redis timeouts
POD_ID = f"{socket.gethostname()}-{os.getpid()}"  # this process, in the engine budget's lease ids
LEASE_MARGIN_S = 10.0  # an engine budget lease outlives its request's deadline by this much, then frees itself

WARMUP_REQUEST = RankRequest(
    history=[ItemIn(item_id="w1", title="Warm-up history item")],
    candidates=[ItemIn(item_id="w2", title="Warm-up candidate A"), ItemIn(item_id="w3", title="Warm-up candidate B")],
    reasoning="full",
)


def rank_order(item_ids: Sequence[str], scores: Sequence[float]) -> list[int]:
    """Indices by score descending; ties broken by item_id ascending, so the order is deterministic."""
    return sorted(range(len(item_ids)), key=lambda i: (-scores[i], item_ids[i]))


def routing_key(request: RankRequest, prompts: RequestPrompts) -> str:
    """Who these prompts belong to, for a consistent-hash router: the user id, else (inline history) the
    history prefix, which is what the engines' prefix cache keys on. Hashed: engines and routers log headers,
    and a user id is the product's, not theirs."""
    source = f"u:{request.user_id}" if request.user_id else f"h:{prompts.prefix.text}"
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def evidence_out(evidence: Evidence, history: list[Item]) -> EvidenceOut:
    """The evidence as the API returns it: the prompt's line and its facts, each history reference with the
    item it stands for (``#1`` = the latest item the model saw)."""
    title = {len(history) - i: item.title for i, item in enumerate(history)}
    return EvidenceOut.from_evidence(evidence, title)


def check_candidate_source(request: RankRequest, sources: Sequence[str], model_version: str) -> None:
    """A model reads a candidate source only if it was trained on it: told 'retrieval' without having learned what
    that changes, it would score as if it had not been told, and the caller would not know."""
    if request.candidate_source not in sources:
        raise InvalidRequest(f"candidate_source: the serving model {model_version} was trained on {list(sources)} "
                             f"candidates only, not {request.candidate_source!r}", "candidate_source")  # fmt: skip


async def warm_up_engine(engine: ReasoningEngine, settings: Settings, metrics: Metrics) -> None:
    """One real ranking on ``engine``. No Redis: a cached score must never stand in for engine work."""
    await Ranker(engine, settings, metrics, store=None).rank(WARMUP_REQUEST, "warmup")


class Ranker:
    def __init__(
        self, engine: ReasoningEngine, settings: Settings, metrics: Metrics, store: RedisStore | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self._cache_skip_until = 0.0
        self._admitted_items = 0

    def validate(self, request: RankRequest) -> None:
        """Limits that depend on settings (the schema holds the static ones)."""
        if len(request.candidates) > self.settings.max_candidates:
            raise InvalidRequest(
                f"candidates: at most {self.settings.max_candidates} per request, got {len(request.candidates)}",
                "candidates",
            )
        if request.history is not None and len(request.history) > self.settings.max_history_request:
            raise InvalidRequest(
                f"history: at most {self.settings.max_history_request} items, got {len(request.history)}", "history"
            )
        limit = self.settings.max_title_chars
        for field, items in (("candidates", request.candidates), ("history", request.history or [])):
            for index, item in enumerate(items):
                if item.title is not None and len(item.title) > limit:
                    param = f"{field}.{index}.title"
                    raise InvalidRequest(f"{param}: longer than {limit} characters", param)
        if request.include_rationales and request.reasoning == "none":
            raise InvalidRequest("include_rationales: no rationale exists with reasoning='none'", "include_rationales")

    # --- resolution ---------------------------------------------------------------------------------------
    def _require_store(self, param: str) -> RedisStore:
        if self.store is None:
            raise InvalidRequest(f"{param}: no store is configured; send it inline", param)
        return self.store

    async def _history(self, request: RankRequest) -> list[ItemIn]:
        """Inline history wins; else the stored one (by user_id, titles still to resolve); else none."""
        if request.history is not None:
            return list(request.history)
        if request.user_id is None:
            return []
        store = self._require_store("user_id")
        try:
            stored = await store.get_history(request.user_id)
        except StoreUnavailable as exc:
            raise StoreUnavailable(f"user history unreachable: {exc}", detail=exc.detail) from exc
        return [ItemIn(item_id=entry.item_id) for entry in stored[-self.settings.max_history_request :]]

    async def _with_titles(self, history: list[ItemIn], candidates: list[ItemIn]) -> tuple[list[ItemIn], list[ItemIn]]:
        """Fill missing titles from the catalogue in ONE lookup. Unknown candidates are a 422; unknown
        history items are skipped (they cannot be described to the model)."""
        missing = list(dict.fromkeys(i.item_id for i in (*history, *candidates) if i.title is None))
        if not missing:
            return history, candidates
        param = "candidates" if any(c.title is None for c in candidates) else "history"
        store = self._require_store(param)
        try:
            found = await store.get_items(missing)
        except StoreUnavailable as exc:
            raise StoreUnavailable(f"item catalogue unreachable: {exc}", detail=exc.detail) from exc
        titles = {item_id: item["title"] for item_id, item in found.items()}
        unknown = [c.item_id for c in candidates if c.title is None and c.item_id not in titles]
        if unknown:
            raise InvalidRequest(
                f"candidates: unknown item_id(s) without a title: {unknown[:50]} (send a title or PUT /items)",
                "candidates",
            )

        def fill(items: list[ItemIn]) -> list[ItemIn]:
            return [i if i.title is not None else ItemIn(item_id=i.item_id, title=titles.get(i.item_id)) for i in items]

        return fill(history), fill(candidates)

    # --- scoring ------------------------------------------------------------------------------------------
    def _cache_usable(self) -> bool:
        """A store, the cache switched on, and no recent failure (then Redis timeouts are not paid again)."""
        return self.store is not None and self.settings.score_cache and time.monotonic() >= self._cache_skip_until

    async def _cache_get(self, fingerprint: str, fields: list[str]) -> dict[str, CachedScore]:
        if not self._cache_usable():
            return {}
        try:
            return await self.store.get_scores(fingerprint, fields)
        except StoreUnavailable as exc:
            self._cache_failed(exc)
            return {}

    async def _cache_put(self, fingerprint: str, scores: dict[str, CachedScore]) -> None:
        if not self._cache_usable():
            return
        try:
            await self.store.put_scores(fingerprint, scores)
        except StoreUnavailable as exc:
            self._cache_failed(exc)

    def _cache_failed(self, exc: Exception) -> None:
        logger.warning("score cache unavailable, bypassing it for %.0fs: %s", CACHE_BACKOFF_S, exc)
        self.metrics.cache_lookups.labels("error").inc()
        self._cache_skip_until = time.monotonic() + CACHE_BACKOFF_S

    def _admit(self, items: int) -> None:
        """Backpressure: a bounded amount of work in flight; beyond it a 429, not a growing queue. Checked
        before any work (store lookups, tokenizing, the engine), so an overloaded service spends nothing."""
        if self._admitted_items + items > self.settings.max_inflight_items:
            self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(
                f"overloaded: {self._admitted_items} items in flight (limit {self.settings.max_inflight_items}); "
                "retry after Retry-After seconds"
            )
        self._admitted_items += items

    def _shares_the_engine(self) -> bool:
        return self.settings.engine == "remote" and bool(self.settings.global_max_inflight_items) and (
            self.store is not None)  # fmt: skip

    async def _admit_globally(self, items: int, deadline: float) -> str | None:
        """With remote engines, the budget every API pod shares (through Redis): autoscaled pods together
        cannot queue more than ``global_max_inflight_items`` on the engines. Returns the lease taken (release
        it); the lease expires on its own ``LEASE_MARGIN_S`` after the request's deadline, so a lost release
        frees its items anyway. Redis unreachable: the pod's own bound alone applies, with a warning."""
        if not self._shares_the_engine():
            return None
        lease = f"{POD_ID}:{uuid.uuid4().hex}"
        expires = time.time() + max(0.0, deadline - time.monotonic()) + LEASE_MARGIN_S
        try:
            taken = await self.store.admit_engine_items(lease, items, self.settings.global_max_inflight_items,
                                                        time.time(), expires)  # fmt: skip
        except StoreUnavailable as exc:  # had the admission landed unanswered, its lease expires on its own
            logger.warning("global engine budget unavailable, admitting on this pod's bound: %s", exc)
            return None
        if not taken:
            self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(f"overloaded: the engines' shared budget ({self.settings.global_max_inflight_items} "
                             "items across all API pods) is full; retry after Retry-After seconds")  # fmt: skip
        return lease

    async def _release_globally(self, lease: str) -> None:
        try:
            await self.store.release_engine_items(lease)
        except StoreUnavailable as exc:
            logger.warning("could not release engine budget lease %s (it expires on its own): %s", lease, exc)

    async def _score(
        self,
        prompts: RequestPrompts,
        request: RankRequest,
        candidates: list[ItemIn],
        request_id: str,
        deadline: float,
        engine: ReasoningEngine,
        catalogue_ids: bool = True,
    ) -> tuple[list[ItemScore | None], list[ScoreSource]]:
        """Model scores from the cache or the engine; ``None`` where the deadline came first. Items outside the
        catalogue (``catalogue_ids=False``) are cached by their prompt text alone, whatever id they came with."""
        manifest = engine.checkpoint.manifest
        reasoning = request.reasoning
        fingerprint = score_cache_fingerprint(
            engine.model_version,
            manifest.prompt_format,
            manifest.stats_version,
            reasoning,
            engine.max_rationale_tokens,
            prompts.prefix.text,
            manifest.sequence_version,
        )
        ids = [c.item_id if catalogue_ids else "" for c in candidates]
        fields = [score_cache_field(i, t) for i, t in zip(ids, prompts.segment_texts, strict=True)]
        cached = await self._cache_get(fingerprint, fields)
        misses = [i for i, field in enumerate(fields) if field not in cached]
        fresh: list[ItemScore | None] = []
        if misses:
            full = prompts.reasoning == "full"  # the evidence is needed only to check a generated rationale
            jobs = [ScoringJob(prompts.prompt_ids(i), prompts.reasoning, prompts.evidence[i].text() if full else None,
                               prompts.evidence_only_ids(i) if full else None) for i in misses]  # fmt: skip
            fresh = await engine.score_items(jobs, request_id, timeout_s=max(0.0, deadline - time.monotonic()),
                                             routing_key=routing_key(request, prompts))  # fmt: skip
        scored = {
            fields[i]: CachedScore(r.score, r.rationale, r.rationale_withheld)
            for i, r in zip(misses, fresh, strict=True)
            if r
        }
        await self._cache_put(fingerprint, scored)

        results: list[ItemScore | None] = [
            ItemScore(cached[f].score, cached[f].rationale, rationale_withheld=cached[f].rationale_withheld)
            if f in cached
            else None
            for f in fields
        ]
        sources: list[ScoreSource] = ["cache" if f in cached else "engine" for f in fields]
        for i, result in zip(misses, fresh, strict=True):
            results[i] = result
        self.metrics.cache_lookups.labels("hit").inc(len(cached))
        self.metrics.cache_lookups.labels("miss").inc(len(misses))
        self._record(reasoning, [r for r in fresh if r is not None])
        return results, sources

    async def _fallback_order(
        self, candidates: list[ItemIn], missing: list[int], catalogue_ids: bool = True
    ) -> tuple[list[int], ScoreSource]:
        """Order of the items that missed the deadline: by popularity (Redis), else as sent (always, for items
        outside the catalogue: their ids are no catalogue items' ids)."""
        if self.store is not None and catalogue_ids:
            try:
                counts = await self.store.get_popularity([candidates[i].item_id for i in missing])
                order = sorted(missing, key=lambda i: (-counts[candidates[i].item_id], i))
                return order, "popularity"
            except StoreUnavailable as exc:
                logger.warning("popularity fallback unavailable: %s", exc)
        return sorted(missing), "input_order"

    async def rank(self, request: RankRequest, request_id: str, catalogue_ids: bool = True) -> RankResponse:
        """Rank with the engine current when the request arrives: a model swap mid-request does not touch it
        (``active_requests`` tells the swap when the old engine has drained). ``request_id`` is the caller's
        (resolved once, at the edge); engine request ids derive from it. ``catalogue_ids=False``: the request's
        inline items are known by their text alone (rerank documents, whose ids are their positions), so no
        statistic is looked up by their ids and a document scores the same wherever it stands."""
        engine = self.engine
        engine.active_requests += 1
        try:
            return await self._rank(request, request_id, engine, catalogue_ids)
        finally:
            engine.active_requests -= 1

    async def _rank(
        self, request: RankRequest, request_id: str, engine: ReasoningEngine, catalogue_ids: bool
    ) -> RankResponse:
        started = time.perf_counter()
        deadline = time.monotonic() + (request.deadline_ms or self.settings.default_deadline_ms) / 1000
        self.validate(request)
        check_candidate_source(request, engine.checkpoint.manifest.candidate_sources, engine.model_version)
        items = len(request.candidates)
        self._admit(items)
        try:
            lease = await self._admit_globally(items, deadline)
            try:
                return await self._admitted(request, request_id, engine, started, deadline, catalogue_ids)
            finally:
                if lease is not None:
                    await self._release_globally(lease)
        finally:
            self._admitted_items -= items

    async def _admitted(
        self,
        request: RankRequest,
        request_id: str,
        engine: ReasoningEngine,
        started: float,
        deadline: float,
        catalogue_ids: bool,
    ) -> RankResponse:
        history, candidates = await self._with_titles(await self._history(request), list(request.candidates))
        history_known = catalogue_ids or request.history is None  # a stored history holds catalogue ids
        # tokenizing up to 700 titles takes milliseconds of CPU: off the event loop, which keeps serving
        prompts = await asyncio.to_thread(
            engine.prompts.prompts,
            [Item(i.item_id, i.title or "", history_known) for i in history],
            [Item(c.item_id, c.title or "", catalogue_ids) for c in candidates],
            request.reasoning,
            None,
            request.candidate_source,
        )

        engine_started = time.perf_counter()
        results, sources = await self._score(prompts, request, candidates, request_id, deadline, engine,
                                             catalogue_ids)  # fmt: skip
        engine_s = time.perf_counter() - engine_started
        self.metrics.engine_latency.labels(request.reasoning).observe(engine_s)

        ids = [c.item_id for c in candidates]
        scored = [i for i, r in enumerate(results) if r is not None]
        order = [scored[j] for j in rank_order([ids[i] for i in scored], [results[i].score for i in scored])]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            fallback, source = await self._fallback_order(candidates, missing, catalogue_ids)
            order += fallback
            for i in missing:
                sources[i] = source
            self.metrics.degraded.inc()
            self.metrics.fallback_items.labels(source).inc(len(missing))
        if request.top_k is not None:
            order = order[: request.top_k]
        items = []
        for rank, i in enumerate(order, start=1):
            result = results[i]
            item = RankedItem(item_id=ids[i], score=result.score if result else None, rank=rank, source=sources[i])
            if request.include_rationales:
                item.rationale = result.rationale if result else None
                item.rationale_withheld = bool(result and result.rationale_withheld)
            if request.include_evidence:
                item.evidence = evidence_out(prompts.evidence[i], prompts.history)
            items.append(item)
        return RankResponse(
            request_id=request_id,
            model_version=engine.model_version,
            items=items,
            degraded=bool(missing),
            cache_hits=sources.count("cache"),
            timings_ms={
                "total": round((time.perf_counter() - started) * 1000, 3),
                "engine": round(engine_s * 1000, 3),
            },
        )

    def _record(self, reasoning: str, results: Sequence[ItemScore]) -> None:
        self.metrics.items_scored.labels(reasoning).inc(len(results))
        self.metrics.rationale_tokens.inc(sum(r.rationale_tokens for r in results))
        self.metrics.rationales_withheld.inc(sum(r.rationale_withheld for r in results))
        for kind in (kind for r in results for kind in r.unstated):
            self.metrics.unstated_claims.labels(kind).inc()
