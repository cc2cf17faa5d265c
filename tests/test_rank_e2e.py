"""/rank end to end: real HTTP, real uvicorn, real vLLM engine on the shipped default model."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from contract.checkpoint import open_checkpoint
from loadtest.procs import DEFAULT_MODEL
from service.ranking import rank_order

SHIPPED_VERSION = open_checkpoint(DEFAULT_MODEL).model_version

pytestmark = pytest.mark.engine


def _scores(response: dict) -> dict[str, float]:
    return {item["item_id"]: item["score"] for item in response["items"]}


def _rank(client: httpx.Client, body: dict) -> dict:
    response = client.post("/rank", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_ready_and_metrics(client: httpx.Client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["model_version"] == SHIPPED_VERSION


def test_rank_sorted_with_ranks_and_no_rationales_by_default(client, demo):
    body = demo.rank_request(demo.users[0])
    result = _rank(client, body)
    items = result["items"]
    assert len(items) == 20
    assert [item["rank"] for item in items] == list(range(1, 21))
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    assert {item["item_id"] for item in items} == set(demo.users[0].candidates)
    assert all("rationale" not in item for item in items)
    assert result["degraded"] is False
    assert result["model_version"] == SHIPPED_VERSION
    assert result["timings_ms"]["total"] >= result["timings_ms"]["engine"] > 0


def test_evidence_when_asked_is_what_the_prompt_stated(client, demo):
    """include_evidence: each item's evidence as fields, its links pointing at history items by reference (#1 =
    the latest), computed from the shipped statistics; the same evidence in both modes."""
    from contract.evidence import Item

    user = demo.users[2]
    body = demo.rank_request(user, include_rationales=True, include_evidence=True)
    result = _rank(client, body)
    checkpoint = open_checkpoint(DEFAULT_MODEL)
    stats = checkpoint.stats
    history = [Item(i, demo.titles[i]) for i in user.history]
    for item in result["items"]:
        evidence = item["evidence"]
        prompts = checkpoint.prompts.prompts(history, [Item(item["item_id"], demo.titles[item["item_id"]])], "full")
        assert evidence["text"] == prompts.evidence[0].text()
        latest_first = [shown.item_id for shown in reversed(prompts.history)]
        for link in evidence["links"]:
            assert latest_first[link["ref"] - 1] == link["item_id"] and link["title"] == demo.titles[link["item_id"]]
            assert link["count"] == stats.follow_count(link["item_id"], item["item_id"])
        stated = prompts.evidence[0].next_item  # the sequence model's rank, where the checkpoint ships one
        assert evidence["next_item"] == (None if stated is None else {"rank": stated.rank})
        assert evidence["co_bought"] == prompts.evidence[0].co_bought  # null where the format states none
        assert isinstance(item["rationale"], str)
    none = _rank(client, demo.rank_request(user, reasoning="none", include_evidence=True))
    by_id = {i["item_id"]: i["evidence"] for i in result["items"]}
    assert all(i["evidence"] == by_id[i["item_id"]] for i in none["items"])  # none sees the same evidence
    assert all("evidence" not in i for i in _rank(client, demo.rank_request(user, reasoning="none"))["items"])


def test_top_k_and_rationales_when_asked(client, demo):
    body = demo.rank_request(demo.users[1], top_k=5, include_rationales=True)
    result = _rank(client, body)
    assert len(result["items"]) == 5
    assert all(isinstance(item["rationale"], str) for item in result["items"])
    full = _rank(client, demo.rank_request(demo.users[1]))
    assert [i["item_id"] for i in full["items"][:5]] == [i["item_id"] for i in result["items"]]


def test_request_id_is_reused(client, demo):
    body = demo.rank_request(demo.users[2], n_candidates=3, reasoning="none")
    assert _rank(client, {**body, "request_id": "from-body"})["request_id"] == "from-body"
    response = client.post("/rank", json=body, headers={"X-Request-Id": "from-header"})
    assert response.json()["request_id"] == "from-header"


def test_permutation_invariance(client, demo):
    """Items never see each other: shuffling the candidates leaves every item's score unchanged."""
    user = demo.users[3]
    body = demo.rank_request(user)
    first = _scores(_rank(client, body))
    for seed in (1, 2):
        shuffled = list(body["candidates"])
        random.Random(seed).shuffle(shuffled)
        again = _scores(_rank(client, {**body, "candidates": shuffled}))
        assert again.keys() == first.keys()
        for item_id, score in first.items():
            assert again[item_id] == pytest.approx(score, abs=1e-4), item_id


def test_reasoning_none_and_full_both_work_and_differ(client, demo):
    body = demo.rank_request(demo.users[4])
    full = _scores(_rank(client, {**body, "reasoning": "full"}))
    none = _scores(_rank(client, {**body, "reasoning": "none"}))
    assert full.keys() == none.keys()
    assert any(abs(full[k] - none[k]) > 1e-3 for k in full)


def test_history_changes_scores(client, demo):
    """The prompt really carries the history (a regression guard for the prefix)."""
    body = demo.rank_request(demo.users[5], reasoning="none")
    with_history = _scores(_rank(client, body))
    without = _scores(_rank(client, {**body, "history": []}))
    assert any(abs(with_history[k] - without[k]) > 1e-4 for k in with_history)


def test_concurrent_requests_equal_sequential(client, service, demo):
    """20 concurrent requests interleave in the engine and give exactly the sequential answers."""
    bodies = [demo.rank_request(user, reasoning="full") for user in demo.users[10:30]]
    sequential = [_scores(_rank(client, body)) for body in bodies]

    async def fire() -> list[dict]:
        async with httpx.AsyncClient(base_url=service.url, timeout=600.0) as http:
            responses = await asyncio.gather(*(http.post("/rank", json=body) for body in bodies))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        return [r.json() for r in responses]

    concurrent = [_scores(r) for r in asyncio.run(fire())]
    for seq, conc in zip(sequential, concurrent, strict=True):
        assert seq.keys() == conc.keys()
        for item_id in seq:
            assert conc[item_id] == pytest.approx(seq[item_id], abs=1e-4)


def test_metrics_count_the_work(client, demo):
    _rank(client, demo.rank_request(demo.users[6], n_candidates=4, reasoning="none"))
    text = client.get("/metrics").text
    assert 'r2rank_requests_total{method="POST",route="/rank",status="200"}' in text
    assert 'r2rank_items_scored_total{reasoning="none"}' in text
    assert "r2rank_rationale_tokens_total" in text
    assert "r2rank_engine_inflight_items" in text
    assert 'r2rank_model_info{engine="vllm-local"' in text
    assert "r2rank_request_latency_seconds_bucket" in text


def test_rank_order_ties_broken_by_item_id():
    assert rank_order(["b", "a", "c"], [1.0, 1.0, 2.0]) == [2, 1, 0]
