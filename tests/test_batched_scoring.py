"""The batched composition (two list-valued calls per request) against the per-item one, and the routing key:
the ranking logic only, with a fake backend. The real remote engine is tested in test_remote_engine.py and
behind the router in test_router.py."""

from __future__ import annotations

import pytest

from contract.checkpoint import open_checkpoint
from contract.evidence import Item
from loadtest.procs import DEFAULT_MODEL
from service.engine.base import ItemRejected, ScoringJob
from service.protocol import ItemIn, RankRequest
from service.ranking import routing_key
from tests.fake_engine import FakeEngine

CHECKPOINT = open_checkpoint(DEFAULT_MODEL)
HISTORY = [Item("244", "Super Mario 3D World - Nintendo Wii U"), Item("1", "Halo")]
CANDIDATES = [Item("437", "Super Smash Bros. - Nintendo Wii U"), Item("2", "Halo 2"), Item("3", "Tetris")]


class _ListCountingEngine(FakeEngine):
    """Counts list-valued calls; rejects every prompt whose length is in ``reject_lengths``, as a vLLM server
    rejects a prompt that is too long."""

    def __init__(self, *args, batched: bool, reject_lengths: frozenset[int] = frozenset()) -> None:
        super().__init__(*args)
        self.batched = batched
        self.reject_lengths = reject_lengths
        self.list_calls: list[int] = []
        self.keys: set[str] = set()

    async def _answer_logprobs(self, prompt_ids, request_id, routing_key):
        self.keys.add(routing_key)
        if len(prompt_ids) in self.reject_lengths:
            raise ItemRejected("too long")
        return await super()._answer_logprobs(prompt_ids, request_id, routing_key)

    async def _answer_logprobs_many(self, prompts, request_id, routing_key):
        self.list_calls.append(len(prompts))
        return await super()._answer_logprobs_many(prompts, request_id, routing_key)

    async def _generate_rationales(self, prompts, request_id, routing_key):
        self.list_calls.append(len(prompts))
        return await super()._generate_rationales(prompts, request_id, routing_key)


def _jobs(reasoning: str) -> list[ScoringJob]:
    prompts = CHECKPOINT.prompts.prompts(HISTORY, CANDIDATES, reasoning)
    full = reasoning == "full"
    return [ScoringJob(prompts.prompt_ids(i), reasoning, prompts.evidence[i].text() if full else None,
                       prompts.evidence_only_ids(i) if full else None) for i in range(len(CANDIDATES))]  # fmt: skip


@pytest.mark.parametrize("reasoning", ["full", "none"])
async def test_batched_scores_what_per_item_scores_in_two_calls(reasoning):
    per_item = _ListCountingEngine(CHECKPOINT, batched=False)
    batched = _ListCountingEngine(CHECKPOINT, batched=True)
    expected = await per_item.score_items(_jobs(reasoning), "r", routing_key="k")
    got = await batched.score_items(_jobs(reasoning), "r", routing_key="k")
    assert got == expected and all(got)
    assert per_item.list_calls == []
    assert batched.list_calls == ([3, 3] if reasoning == "full" else [3])
    assert batched.keys == per_item.keys == {"k"}
    assert batched.inflight_items == per_item.inflight_items == 0


@pytest.mark.parametrize("batched", [True, False])
async def test_a_rejected_item_gets_none_and_the_others_are_scored(batched):
    jobs = _jobs("none")
    bad = len(CHECKPOINT.prompts.score_input(jobs[1].prompt_ids))
    engine = _ListCountingEngine(CHECKPOINT, batched=batched, reject_lengths=frozenset({bad}))
    results = await engine.score_items(jobs, "r")
    assert results[1] is None and results[0] is not None and results[2] is not None


async def test_batched_past_the_deadline_is_all_none_and_releases_its_items():
    engine = _ListCountingEngine(CHECKPOINT, batched=True)
    engine.delay = 5.0
    assert await engine.score_items(_jobs("none"), "r", timeout_s=0.05) == [None, None, None]
    assert engine.inflight_items == 0


def test_routing_key_is_the_user_else_the_history_and_never_the_raw_id():
    prompts = CHECKPOINT.prompts.prompts(HISTORY, CANDIDATES[:1], "none")
    other = CHECKPOINT.prompts.prompts(HISTORY[:1], CANDIDATES[:1], "none")
    by_user = RankRequest(user_id="alice@example.com", candidates=[ItemIn(item_id="1", title="x")])
    inline = RankRequest(history=[ItemIn(item_id="1", title="x")], candidates=[ItemIn(item_id="2", title="y")])
    assert routing_key(by_user, prompts) == routing_key(by_user, other)  # the user, whatever the history
    assert "alice" not in routing_key(by_user, prompts)
    assert routing_key(inline, prompts) != routing_key(inline, other)
    assert routing_key(inline, prompts) == routing_key(inline, CHECKPOINT.prompts.prompts(HISTORY, CANDIDATES, "full"))
