"""RedisStore on the real Redis (own key prefix, cleaned up): histories, events, catalogue, score cache."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from loadtest.procs import delete_prefix
from service.store import CachedScore, RedisStore, score_cache_field, score_cache_fingerprint
from tests.conftest import REDIS_URL


async def test_replace_get_delete_history(store):
    await store.replace_history("u1", [("a", 1.0), ("b", 2.0), ("c", 2.0)])
    assert [e.item_id for e in await store.get_history("u1")] == ["a", "b", "c"]
    await store.replace_history("u1", [("x", 5.0)])
    assert [e.item_id for e in await store.get_history("u1")] == ["x"]
    assert await store.delete_history("u1") is True
    assert await store.get_history("u1") == []


async def test_event_idempotent_by_event_id(store):
    assert await store.append_event("u1", "a", None, "ev-1") == (True, 1)
    assert await store.append_event("u1", "a", None, "ev-1") == (False, 1)  # the retry stores nothing
    assert await store.append_event("u1", "a", None, "ev-2") == (True, 2)  # same item, new event
    assert [e.item_id for e in await store.get_history("u1")] == ["a", "a"]


async def test_history_capped_to_most_recent(store):
    for i in range(8):
        await store.append_event("u1", f"i{i}", float(i), None)
    assert [e.item_id for e in await store.get_history("u1")] == ["i3", "i4", "i5", "i6", "i7"]


async def test_timestamps_order_history_and_arrival_breaks_ties(store):
    await store.append_event("u1", "late", 300.0, None)
    await store.append_event("u1", "early", 100.0, None)
    await store.append_event("u1", "tie-1", 200.0, None)
    await store.append_event("u1", "tie-2", 200.0, None)
    assert [e.item_id for e in await store.get_history("u1")] == ["early", "tie-1", "tie-2", "late"]


async def test_fifty_concurrent_appends_all_kept_in_order():
    """50 concurrent appends for one user: none lost, none duplicated, ordered by arrival."""
    prefix = f"r2rtest-store-{uuid.uuid4().hex[:8]}"
    store = RedisStore(REDIS_URL, prefix=prefix, history_max=100)
    try:
        results = await asyncio.gather(
            *(store.append_event("u1", f"item-{i}", None, f"ev-{i}") for i in range(50)),
            *(store.append_event("u1", f"item-{i}", None, f"ev-{i}") for i in range(50)),  # retries
        )
        assert sum(stored for stored, _ in results) == 50
        history = await store.get_history("u1")
        assert sorted(e.item_id for e in history) == sorted(f"item-{i}" for i in range(50))
        stamps = [e.timestamp for e in history]
        assert stamps == sorted(stamps)
    finally:
        await store.close()
        delete_prefix(prefix)


async def test_user_ttl(store):
    ttl_store = RedisStore(REDIS_URL, prefix=store.prefix, user_ttl_s=1)
    await ttl_store.append_event("u-ttl", "a", None, "e1")
    assert len(await ttl_store.get_history("u-ttl")) == 1
    ttl = await ttl_store.client.ttl(ttl_store._user_keys("u-ttl")[0])
    assert 0 < ttl <= 1
    await asyncio.sleep(2.1)
    assert await ttl_store.get_history("u-ttl") == []
    await ttl_store.close()


async def test_items_bulk_upsert_and_lookup(store):
    items = [{"item_id": str(i), "title": f"Game {i}", "platform": "PS4"} for i in range(5000)]
    assert await store.upsert_items(items) == 5000
    found = await store.get_items(["0", "4999", "nope"])
    assert found == {"0": {"title": "Game 0", "platform": "PS4"}, "4999": {"title": "Game 4999", "platform": "PS4"}}
    await store.upsert_items([{"item_id": "0", "title": "Renamed"}])
    assert (await store.get_items(["0"]))["0"] == {"title": "Renamed"}


async def test_score_cache_keys_on_model_history_and_title(store):
    fp = score_cache_fingerprint("m1", "fmt", "stats1", "full", 32, "history text")
    field = score_cache_field("42", "Candidate: Mario Kart\nEvidence: no links")
    await store.put_scores(fp, {field: CachedScore(1.5, "because")})
    assert await store.get_scores(fp, [field]) == {field: CachedScore(1.5, "because")}
    # a new model version, new statistics, a new history (event), another mode, another title or evidence, another
    # sequence model: misses
    others = [
        ("m1", "fmt", "stats1", "full", 32, "history text", "seq2"),
        ("m2", "fmt", "stats1", "full", 32, "history text"),
        ("m1", "fmt", "stats2", "full", 32, "history text"),
        ("m1", "fmt", "stats1", "full", 32, "history text+"),
        ("m1", "fmt", "stats1", "none", 32, "history text"),
    ]
    for other in others:
        assert await store.get_scores(score_cache_fingerprint(*other), [field]) == {}
    assert await store.get_scores(fp, [score_cache_field("42", "Candidate: Mario Kart 2\nEvidence: no links")]) == {}
    assert await store.get_scores(fp, [score_cache_field("42", "Candidate: Mario Kart\nEvidence: follows #1 2x")]) == {}
    ttl = await store.client.ttl(store._score_key(fp))
    assert 0 < ttl <= store.score_ttl_s


async def test_corrupt_or_foreign_entries_read_as_misses_never_errors(store):
    """Whatever another writer left in Redis, a read is a miss (logged), never an exception that becomes a 500."""
    fp = score_cache_fingerprint("m1", "fmt", "stats1", "full", 32, "history")
    good = score_cache_field("1", "Candidate: A")
    await store.put_scores(fp, {good: CachedScore(0.5, "fine")})
    junk = {"not json": "{", "a list": "[1, 2]", "no score": '{"r": "x"}', "nan": '{"s": NaN}',
            "text score": '{"s": "high"}', "odd rationale": '{"s": 1.0, "r": [1]}'}  # fmt: skip
    await store.client.hset(store._score_key(fp), mapping=junk)
    assert await store.get_scores(fp, [good, *junk]) == {good: CachedScore(0.5, "fine")}
    await store.upsert_items([{"item_id": "ok", "title": "Fine"}])
    await store.client.hset(store._items_key, mapping={"bad": "{", "list": "[]", "untitled": '{"name": 1}',
                                                         "clash": '{"title": "X", "item_id": "other"}'})  # fmt: skip
    assert await store.get_items(["ok", "bad", "list", "untitled", "clash", "absent"]) == {"ok": {"title": "Fine"}}


def test_a_stored_key_entry_with_a_non_ascii_mac_is_refused_not_an_error():
    import json

    from service.auth import KeyEntry, decode_entry, encode_entry

    raw = encode_entry("secret", "digest", KeyEntry(frozenset({"rank"}), "k", None, None, 1.0))
    assert decode_entry("secret", "digest", raw) is not None
    forged = {**json.loads(raw), "mac": "é" * 64}
    assert decode_entry("secret", "digest", json.dumps(forged)) is None


async def test_unreachable_redis_raises_store_unavailable():
    from service.store import StoreUnavailable

    store = RedisStore("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.append_event("u", "a", None, None)
    assert time.monotonic() - started < 5  # bounded, never hangs
    await store.close()


def test_load_demo_command(demo):
    """`r2rank-serve load-demo` stores the demo catalogue and histories under the configured prefix."""
    import os
    import subprocess
    import sys

    from loadtest.procs import REPO_ROOT

    prefix = f"r2rtest-demo-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "R2RANK_REDIS_URL": REDIS_URL, "R2RANK_REDIS_PREFIX": prefix}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "load-demo", "--users", "5"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"loaded {len(demo.titles)} items and 5 user histories" in result.stdout

        async def check():
            store = RedisStore(REDIS_URL, prefix=prefix)
            history = await store.get_history(demo.users[0].user_id)
            items = await store.get_items(demo.users[0].candidates)
            await store.close()
            return history, items

        history, items = asyncio.run(check())
        assert [e.item_id for e in history] == demo.users[0].history
        assert set(items) == set(demo.users[0].candidates)
    finally:
        delete_prefix(prefix)
