"""The reasoning-engine interface: turn per-item prompts into (score, rationale).

A backend supplies two primitives — greedy rationale generation and the two answer log-probs at the
answer position — and this base class composes them the way the contract prescribes. Every item of a
request is submitted at once (``asyncio.gather``); concurrent requests interleave inside the engine's
continuous batching, so there is no lock or per-request serialisation anywhere here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from contract.checkpoint import Checkpoint
from contract.evidence import unfaithful_citations
from contract.prompt import Reasoning
from service.exceptions import EngineError

__all__ = ["EngineError", "ItemScore", "ReasoningEngine", "ScoringJob"]

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


class ReasoningEngine(ABC):
    """Scores items with one loaded checkpoint. Subclasses own the transport (in-process or HTTP)."""

    name: str = "engine"

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
    @abstractmethod
    async def _generate_rationale(self, prompt_ids: list[int], request_id: str) -> tuple[str, int]:
        """Greedy rationale after ``prompt_ids``, stopped at the contract's stop; returns (text, tokens)."""

    @abstractmethod
    async def _answer_logprobs(self, prompt_ids: list[int], request_id: str) -> tuple[float, float]:
        """log P(yes), log P(no) for the token after ``prompt_ids``."""

    # --- the composition ---------------------------------------------------------------------------
    async def score_items(
        self, jobs: Sequence[ScoringJob], request_id: str, timeout_s: float | None = None
    ) -> list[ItemScore | None]:
        """Score every job concurrently; order of results = order of jobs.

        Items not finished within ``timeout_s`` come back as ``None`` and are cancelled, which aborts their
        engine requests, so work past a deadline does not pile up. Engine request ids get a random suffix:
        callers may reuse their own request id, the engine may not. If an item fails, the others are
        cancelled and ``EngineError`` is raised.
        """
        base = f"{request_id}-{uuid.uuid4().hex[:8]}"
        tasks = [asyncio.ensure_future(self._score_one(job, f"{base}-{i}")) for i, job in enumerate(jobs)]
        if not tasks:
            return []
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

    async def _score_one(self, job: ScoringJob, request_id: str) -> ItemScore:
        self.inflight_items += 1
        try:
            rationale: str | None = None
            tokens = 0
            withheld = False
            if job.reasoning == "full":
                text, tokens = await self._generate_rationale(job.prompt_ids, f"{request_id}-r")
                rationale = self.prompts.rationale(text)
                problems = unfaithful_citations(rationale, job.evidence_text) if job.evidence_text else []
                if problems:
                    logger.debug("rationale withheld: %r cites %s, evidence %r", rationale, problems, job.evidence_text)
                    withheld, rationale = True, None
                    score_ids = self.prompts.score_input(job.evidence_only_ids or job.prompt_ids)
                else:
                    score_ids = self.prompts.score_input(job.prompt_ids, self.prompts.rationale_ids([text])[0])
            else:
                score_ids = self.prompts.score_input(job.prompt_ids)
            lp_yes, lp_no = await self._answer_logprobs(score_ids, f"{request_id}-s")
            result = ItemScore(self.prompts.score(lp_yes, lp_no), rationale, tokens, withheld)
        finally:
            self.inflight_items -= 1
        return result
