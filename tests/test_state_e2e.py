"""Histories, catalogue and score cache through the real service (real HTTP, engine and Redis)."""

from __future__ import annotations

import dataclasses
import uuid

import httpx
import pytest

from contract.checkpoint import open_checkpoint
from contract.evidence import UNSTATED_KINDS
from loadtest.procs import DEFAULT_MODEL, delete_prefix
from service.config import Settings
from service.metrics import Metrics
from service.protocol import ItemIn, RankRequest
from service.ranking import Ranker
from service.store import RedisStore
from tests.conftest import REDIS_URL
from tests.fake_engine import FakeEngine

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def loaded_user(client: httpx.Client, demo) -> dict:
    """A demo user whose items are in the catalogue and whose history is stored."""
    user = demo.users[40]
    ids = sorted(set(user.history) | set(user.candidates))
    response = client.put("/items", json=[demo.item(i) for i in ids])
    assert response.status_code == 200 and response.json()["upserted"] == len(ids)
    user_id = f"user-{uuid.uuid4().hex[:6]}"
    response = client.put(f"/users/{user_id}/history", json={"items": [{"item_id": i} for i in user.history]})
    assert response.status_code == 200
    assert [e["item_id"] for e in response.json()["items"]] == user.history
    return {"user_id": user_id, "user": user}


def _scores(body: dict) -> dict[str, float]:
    return {item["item_id"]: item["score"] for item in body["items"]}


def test_rank_by_user_id_equals_inline(client, demo, loaded_user):
    user = loaded_user["user"]
    by_id = client.post(
        "/rank",
        json={"user_id": loaded_user["user_id"], "candidates": [{"item_id": i} for i in user.candidates],
              "reasoning": "full"},
    )  # fmt: skip
    inline = client.post("/rank", json=demo.rank_request(user, reasoning="full") | {"user_id": "someone-else"})
    assert by_id.status_code == 200 and inline.status_code == 200, (by_id.text, inline.text)
    assert [i["item_id"] for i in by_id.json()["items"]] == [i["item_id"] for i in inline.json()["items"]]
    for item_id, score in _scores(inline.json()).items():
        assert _scores(by_id.json())[item_id] == pytest.approx(score, abs=1e-4)


def test_score_cache_hit_then_miss_after_new_event(client, loaded_user):
    user = loaded_user["user"]
    body = {"user_id": loaded_user["user_id"], "candidates": [{"item_id": i} for i in user.candidates],
            "reasoning": "none"}  # fmt: skip
    first = client.post("/rank", json=body).json()
    second = client.post("/rank", json=body).json()
    assert second["cache_hits"] == len(user.candidates)
    assert _scores(second) == _scores(first)
    event = client.post(f"/users/{loaded_user['user_id']}/events", json={"item_id": user.candidates[0]})
    assert event.status_code == 200 and event.json()["stored"] is True
    third = client.post("/rank", json=body).json()
    assert third["cache_hits"] == 0  # the history changed, so every score is recomputed
    assert "r2rank_score_cache_total" in client.get("/metrics").text


def test_inline_history_wins_over_stored(client, loaded_user):
    user = loaded_user["user"]
    candidates = [{"item_id": i} for i in user.candidates[:3]]
    stored = client.post("/rank", json={"user_id": loaded_user["user_id"], "candidates": candidates,
                                        "reasoning": "none"}).json()  # fmt: skip
    inline_empty = client.post("/rank", json={"user_id": loaded_user["user_id"], "history": [],
                                              "candidates": candidates, "reasoning": "none"}).json()  # fmt: skip
    assert _scores(stored) != _scores(inline_empty)


def test_unknown_candidate_ids_listed(client):
    response = client.post("/rank", json={"candidates": [{"item_id": "nope-1"}, {"item_id": "nope-2"}]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "candidates" and "nope-1" in error["message"] and "nope-2" in error["message"]


def test_events_idempotent_over_http(client):
    user_id = f"user-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        response = client.post(f"/users/{user_id}/events", json={"item_id": "7", "event_id": "evt-1"})
        assert response.status_code == 200
    assert response.json() == {"user_id": user_id, "stored": False, "history_length": 1}
    assert [e["item_id"] for e in client.get(f"/users/{user_id}/history").json()["items"]] == ["7"]
    assert client.delete(f"/users/{user_id}/history").status_code == 204
    assert client.get(f"/users/{user_id}/history").json()["items"] == []


def test_items_endpoint_and_validation(client):
    assert client.put("/items", json=[{"item_id": "cat-1", "title": "Chess", "platform": "PC"}]).json() == {
        "upserted": 1
    }
    assert client.get("/items/cat-1").json() == {"item_id": "cat-1", "title": "Chess", "platform": "PC"}
    missing = client.get("/items/does-not-exist")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "item_id"
    bad = client.put("/items", json=[{"item_id": "x"}])
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "0.title"
    bad_event = client.post("/users/u/events", json={"item_id": "x", "timestamp": "yesterday"})
    assert bad_event.status_code == 422 and bad_event.json()["error"]["param"] == "timestamp"


def test_readyz_reports_redis_separately(client):
    body = client.get("/readyz").json()
    assert body["redis"] == {"configured": True, "ok": True, "detail": None}
    assert body["engine"]["ok"] is True


class _ConstantEngine(FakeEngine):
    """Counts its calls (its own count, apart from other fakes')."""

    calls = 0


async def test_new_model_version_never_reuses_scores():
    """Same request, same Redis: a checkpoint with another model_version misses the cache."""
    prefix = f"r2rtest-mv-{uuid.uuid4().hex[:6]}"
    store = RedisStore(REDIS_URL, prefix=prefix)
    checkpoint = open_checkpoint(DEFAULT_MODEL)
    request = RankRequest(
        history=[ItemIn(item_id="1", title="Halo")],
        candidates=[ItemIn(item_id="2", title="Halo 2"), ItemIn(item_id="3", title="Tetris")],
        reasoning="none",
    )
    try:
        rankers = []
        for version in ("m1", "m2"):
            manifest = checkpoint.manifest.model_copy(update={"model_version": version})
            engine = _ConstantEngine(dataclasses.replace(checkpoint, manifest=manifest))
            rankers.append(Ranker(engine, Settings(), Metrics(), store))
        assert (await rankers[0].rank(request, "t1")).cache_hits == 0
        assert (await rankers[0].rank(request, "t2")).cache_hits == 2
        calls = _ConstantEngine.calls
        assert (await rankers[1].rank(request, "t3")).cache_hits == 0
        assert _ConstantEngine.calls == calls + 2
    finally:
        await store.close()
        delete_prefix(prefix)


class _MiscopyingEngine(FakeEngine):
    """Its rationale cites a count no evidence states."""

    rationale = "Strong link: follows #1 99x; likely."


async def test_withheld_rationale_is_flagged_fresh_and_from_the_cache():
    """A rationale citing what its evidence does not state is never served, and the reply says so, also when
    the score comes back from the cache (where a null rationale alone could not tell); the metrics count what
    it cited unstated, by kind, once per rationale generated (not again from the cache)."""
    prefix = f"r2rtest-wh-{uuid.uuid4().hex[:6]}"
    store = RedisStore(REDIS_URL, prefix=prefix)
    checkpoint = open_checkpoint(DEFAULT_MODEL)
    request = RankRequest(
        history=[ItemIn(item_id="244", title="Super Mario 3D World - Nintendo Wii U")],
        candidates=[ItemIn(item_id="437", title="Super Smash Bros. - Nintendo Wii U"),
                    ItemIn(item_id="3522", title="Destiny - Standard Edition - PlayStation 4")],
        reasoning="full", include_rationales=True,
    )  # fmt: skip
    try:
        metrics = Metrics()
        miscopying = Ranker(_MiscopyingEngine(checkpoint), Settings(), metrics, store)
        for expected_hits in (0, 2):
            response = await miscopying.rank(request, "t")
            assert response.cache_hits == expected_hits
            assert [(i.rationale, i.rationale_withheld) for i in response.items] == [(None, True)] * 2
            unstated = {kind: metrics.registry.get_sample_value("r2rank_unstated_claims_total", {"claim": kind})
                        for kind in UNSTATED_KINDS}  # fmt: skip
            assert {kind: n for kind, n in unstated.items() if n} == {"link count": 2, "number": 2}  # "#1 99x"
        delete_prefix(prefix)
        honest = Ranker(_ConstantEngine(checkpoint), Settings(), Metrics(), store)
        for expected_hits in (0, 2):
            response = await honest.rank(request, "t")
            assert response.cache_hits == expected_hits
            assert [(i.rationale, i.rationale_withheld) for i in response.items] == [("r", False)] * 2
    finally:
        await store.close()
        delete_prefix(prefix)
