"""A unit-test engine for the ranking logic (cache, budgets, swaps): no model runs. Real engines are tested
through vLLM elsewhere."""

from __future__ import annotations

import asyncio

from service.engine.base import ReasoningEngine


class FakeEngine(ReasoningEngine):
    """Writes ``rationale`` for every item and scores by prompt length after ``delay`` seconds (a delay holds
    budget in flight); ``calls`` counts answer reads across instances of the class."""

    rationale = "r"
    delay = 0.0
    calls = 0

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def check_health(self) -> None: ...

    async def _generate_rationale(self, prompt_ids, request_id, routing_key):
        return self.rationale, 1

    async def _answer_logprobs(self, prompt_ids, request_id, routing_key):
        type(self).calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return -float(len(prompt_ids)) / 100, -1.0
