"""The reasoning-engine interface: turn per-item prompts into (score, rationale).

A backend supplies two primitives — greedy rationale generation and the two answer log-probs at the
answer position — and this base class composes them the way the contract prescribes. Every item of a
request is submitted at once; concurrent requests interleave inside the engine's continuous batching, so
there is no lock or per-request serialisation anywhere here.

Two compositions: per item (each item's answer read follows its own rationale: the in-process engine, where a
call costs nothing) and batched (all rationales of a request, then all answer reads, as two list-valued calls:
the remote engine, where each call is an HTTP round trip through the router). Both build the answer input the
same way (``_answer_input``), so they score alike.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from contract.checkpoint import Checkpoint
from contract.evidence import unstated_claims
from contract.prompt import Reasoning
from service.exceptions import EngineError, ItemRejected

__all__ = ["EngineError", "ItemRejected", "ItemScore", "ReasoningEngine", "ScoringJob"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringJob:
    """One candidate of one request: its prompt ids (``RequestPrompts.prompt_ids``); in full mode also its
    evidence line and its evidence-only prompt, so a rationale that cites what the evidence does not state is
    never shown (the answer is then read from the evidence alone)."""

    prompt_ids: list[int]
    reasoning: Reasoning
    evidence_text: str | None = None
    evidence_only_ids: list[int] | None = None


@dataclass(frozen=True)
class ItemScore:
    score: float
    rationale: str | None = None
    rationale_tokens: int = 0
    rationale_withheld: bool = False  # generated, but cited what its evidence does not state: not shown
    unstated: tuple[str, ...] = ()  # of a rationale withheld now: what it cited unstated, by kind (UNSTATED_KINDS)


class ReasoningEngine(ABC):
    """Scores items with one loaded checkpoint. Subclasses own the transport (in-process or HTTP)."""

    name: str = "engine"
    batched: bool = False  # True: a request's items go to the backend as two list-valued calls

    def __init__(self, checkpoint: Checkpoint, max_rationale_tokens: int | None = None) -> None:
        self.checkpoint = checkpoint
        self.max_rationale_tokens = max_rationale_tokens or checkpoint.manifest.max_rationale_tokens
        self.prompts = checkpoint.prompts
        self.yes_id, self.no_id = checkpoint.answer_ids
        self.inflight_items = 0
        self.active_requests = 0  # requests that hold this engine (drain before closing it after a swap)

    @property
    def model_version(self) -> str:
        return self.checkpoint.model_version

    # --- lifecycle -------------------------------------------------------------------------------
    @abstractmethod
    async def start(self) -> None:
        """Load weights / open connections. May take a minute for a local engine."""

    @abstractmethod
    async def close(self) -> None:
        """Free the engine; idempotent."""

    @abstractmethod
    async def check_health(self) -> None:
        """Raise ``EngineError`` if the engine cannot take work right now."""

    def needs_restart(self) -> bool:
        """True when the engine is dead and only a restart can help (a local engine whose process died)."""
        return False

    async def restart(self) -> None:
        await self.close()
        await self.start()

    async def __aenter__(self) -> ReasoningEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- backend primitives ------------------------------------------------------------------------
    # ``routing_key`` names the user whose prompts these are: a consistent-hash router in front of several
    # engines sends one user's prompts to one engine, whose prefix cache then holds the shared history.
    @abstractmethod
    async def _generate_rationale(self, prompt_ids: list[int], request_id: str, routing_key: str) -> tuple[str, int]:
        """Greedy rationale after ``prompt_ids``, stopped at the contract's stop; returns (text, tokens)."""

    @abstractmethod
    async def _answer_logprobs(self, prompt_ids: list[int], request_id: str, routing_key: str) -> tuple[float, float]:
        """log P(yes), log P(no) for the token after ``prompt_ids``."""

    async def _generate_rationales(
        self, prompts: list[list[int]], request_id: str, routing_key: str
    ) -> list[tuple[str, int] | None]:
        """Batched form of ``_generate_rationale`` (``None``: the engine rejected that item). Backends that can
        send a list in one call override this."""
        return await self._each(self._generate_rationale, prompts, request_id, routing_key)

    async def _answer_logprobs_many(
        self, prompts: list[list[int]], request_id: str, routing_key: str
    ) -> list[tuple[float, float] | None]:
        """Batched form of ``_answer_logprobs`` (``None``: the engine rejected that item)."""
        return await self._each(self._answer_logprobs, prompts, request_id, routing_key)

    @staticmethod
    async def _each(primitive, prompts: list[list[int]], request_id: str, routing_key: str) -> list:
        results = await asyncio.gather(*(primitive(ids, f"{request_id}-{i}", routing_key)
                                         for i, ids in enumerate(prompts)), return_exceptions=True)  # fmt: skip
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, ItemRejected):
                raise result
        return [None if isinstance(r, ItemRejected) else r for r in results]

    # --- the composition ---------------------------------------------------------------------------
    async def score_items(
        self,
        jobs: Sequence[ScoringJob],
        request_id: str,
        timeout_s: float | None = None,
        routing_key: str = "",
    ) -> list[ItemScore | None]:
        """Score every job concurrently; order of results = order of jobs.

        Items not finished within ``timeout_s`` come back as ``None`` and are cancelled, which aborts their
        engine requests, so work past a deadline does not pile up (batched, the request's items finish
        together: all or none of them by the deadline). An item the engine rejects on its own comes back as
        ``None`` too. Engine request ids get a random suffix: callers may reuse their own request id, the
        engine may not. If the engine fails, the other items are cancelled and ``EngineError`` is raised.
        """
        base = f"{request_id}-{uuid.uuid4().hex[:8]}"
        if not jobs:
            return []
        if self.batched:
            return await self._score_batched(list(jobs), base, routing_key, timeout_s)
        tasks = [asyncio.ensure_future(self._score_one(job, f"{base}-{i}", routing_key)) for i, job in enumerate(jobs)]
        try:
            done, _ = await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_EXCEPTION)
            failed = next((t for t in done if not t.cancelled() and t.exception() is not None), None)
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
            return [t.result() if t in done else None for t in tasks]  # None: not ready by the deadline
        finally:
            unfinished = [t for t in tasks if not t.done()]
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.gather(*unfinished, return_exceptions=True)

    def _answer_input(self, job: ScoringJob, text: str | None) -> tuple[list[int], str | None, tuple[str, ...]]:
        """What the answer is read after: (ids, rationale shown, the kinds of what it cited unstated). A
        rationale that cites what its evidence does not state is withheld, and the answer is read from the
        evidence alone."""
        if text is None:
            return self.prompts.score_input(job.prompt_ids), None, ()
        rationale = self.prompts.rationale(text)
        problems = unstated_claims(rationale, job.evidence_text) if job.evidence_text else []
        if problems:
            logger.debug("rationale withheld: %r cites %s, evidence %r", rationale, problems, job.evidence_text)
            kinds = tuple(sorted({kind for kind, _ in problems}))
            return self.prompts.score_input(job.evidence_only_ids or job.prompt_ids), None, kinds
        return self.prompts.score_input(job.prompt_ids, self.prompts.rationale_ids([text])[0]), rationale, ()

    async def _score_one(self, job: ScoringJob, request_id: str, routing_key: str) -> ItemScore | None:
        self.inflight_items += 1
        try:
            text, tokens = None, 0
            if job.reasoning == "full":
                text, tokens = await self._generate_rationale(job.prompt_ids, f"{request_id}-r", routing_key)
            score_ids, rationale, unstated = self._answer_input(job, text)
            lp_yes, lp_no = await self._answer_logprobs(score_ids, f"{request_id}-s", routing_key)
            return ItemScore(self.prompts.score(lp_yes, lp_no), rationale, tokens, bool(unstated), unstated)
        except ItemRejected as exc:
            logger.warning("engine rejected item %s: %s", request_id, exc)
            return None
        finally:
            self.inflight_items -= 1

    async def _score_batched(
        self, jobs: list[ScoringJob], request_id: str, routing_key: str, timeout_s: float | None
    ) -> list[ItemScore | None]:
        self.inflight_items += len(jobs)
        try:
            return await asyncio.wait_for(self._two_calls(jobs, request_id, routing_key), timeout_s)
        except TimeoutError:
            return [None] * len(jobs)  # wait_for cancelled the calls, which aborts them in the engine
        finally:
            self.inflight_items -= len(jobs)

    async def _two_calls(self, jobs: list[ScoringJob], request_id: str, routing_key: str) -> list[ItemScore | None]:
        """All rationales in one call, then all answer reads in another."""
        full = [i for i, job in enumerate(jobs) if job.reasoning == "full"]
        generated: dict[int, tuple[str, int] | None] = {}
        if full:
            texts = await self._generate_rationales([jobs[i].prompt_ids for i in full], f"{request_id}-r", routing_key)
            generated = dict(zip(full, texts, strict=True))
        inputs: dict[int, tuple[list[int], str | None, tuple[str, ...], int]] = {}
        for i, job in enumerate(jobs):
            if i in generated and generated[i] is None:
                continue  # rejected: no rationale, no answer read
            text, tokens = generated.get(i) or (None, 0)
            inputs[i] = (*self._answer_input(job, text), tokens)
        order = list(inputs)
        answers = await self._answer_logprobs_many([inputs[i][0] for i in order], f"{request_id}-s", routing_key)
        results: list[ItemScore | None] = [None] * len(jobs)
        for i, answer in zip(order, answers, strict=True):
            if answer is not None:
                _, rationale, unstated, tokens = inputs[i]
                results[i] = ItemScore(self.prompts.score(*answer), rationale, tokens, bool(unstated), unstated)
        return results
