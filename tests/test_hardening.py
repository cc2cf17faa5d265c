"""Ways in and ways down found by reading the code as an attacker would, each closed and tested: hostile ids in
the typed client's paths, duplicate writes on a retried append, odd timestamps, ids that break key shapes,
popularity counted for trimmed items, demo resets that dropped the API keys."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from loadtest.procs import delete_prefix
from service.client import R2RankClient, R2RankError
from service.store import RedisStore
from tests.conftest import REDIS_URL
from tests.fake_engine import FakeEngine


@pytest.mark.engine
def test_the_client_escapes_ids_so_none_reaches_another_route(service):
    """``delete_history("victim/history?")`` used to delete the victim's history; each id is now one path segment."""
    with R2RankClient(service.url) as client:
        client.put_history("victim", ["1", "2"])
        for hostile in ("victim/history?", "victim/history#", "../users/victim", "victim%2Fhistory"):
            with contextlib.suppress(R2RankError):
                client.delete_history(hostile)
            with contextlib.suppress(R2RankError):
                client.get_item(hostile)
        assert [e.item_id for e in client.get_history("victim").items] == ["1", "2"]
        client.delete_history("victim")


@pytest.mark.engine
@pytest.mark.parametrize("timestamp", ["Infinity", "-Infinity", "NaN", "1e308", "-1"])
def test_timestamps_must_be_finite_and_sane(client, timestamp):
    """A timestamp of Infinity or 1e308 pinned an entry as newest forever (and GET answered null): now a 422."""
    raw = f'{{"item_id": "x", "timestamp": {timestamp}}}'
    response = client.post("/users/ts-user/events", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "timestamp"
    history = client.put("/users/ts-user/history", json={"items": [{"item_id": "x", "timestamp": 1e308}]})
    assert history.status_code == 422 and history.json()["error"]["param"] == "items.0.timestamp"


class RedisProxy:
    """A TCP proxy in front of Redis that lets a subclass see every request chunk (``request``) and hold or drop
    every reply chunk (``reply``: False drops it): faults that land between a write and its confirmation."""

    def __init__(self, target_port: int = 6379) -> None:
        self.target_port = target_port
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def request(self, data: bytes) -> None:
        """Sees a chunk on its way to Redis (which always receives it)."""

    async def reply(self, data: bytes) -> bool:
        """Whether a reply chunk reaches the client (it may also be held first)."""
        return True

    async def _handle(self, client_reader, client_writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def to_redis() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await client_reader.read(65536):
                    self.request(data)
                    upstream_writer.write(data)
                    await upstream_writer.drain()
            upstream_writer.close()

        async def to_client() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await upstream_reader.read(65536):
                    if await self.reply(data):
                        client_writer.write(data)
                        await client_writer.drain()
            client_writer.close()

        await asyncio.gather(to_redis(), to_client())

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class DelayFirstScriptReply(RedisProxy):
    """Passes the first script call (EVALSHA) on and holds its reply back for longer than the client's timeout:
    the write happened, the client does not hear it in time, as when Redis stalls or the network drops
    mid-write. Everything after passes through."""

    def __init__(self, target_port: int = 6379) -> None:
        super().__init__(target_port)
        self.dropped = False
        self._armed = False

    def request(self, data: bytes) -> None:
        if not self.dropped and b"EVALSHA" in data:
            self._armed = True

    async def reply(self, data: bytes) -> bool:
        if self._armed and not self.dropped:
            self.dropped = True  # the reply to the script call: late, past the client's timeout
            await asyncio.sleep(2.0)
        return True


async def test_a_retried_append_after_a_lost_reply_stores_the_event_once():
    """The store retries an append whose reply came too late; the event id it made before the first try lets
    Redis recognise the repeat: one entry, not two (without an id, each retry stored it again)."""
    proxy = DelayFirstScriptReply()
    port = await proxy.start()
    prefix = f"r2rtest-retry-{uuid.uuid4().hex[:8]}"
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix=prefix, timeout_s=1.0)
    direct = RedisStore(REDIS_URL, prefix=prefix)
    try:
        await direct.append_event("someone-else", "x", None, None)  # the script is in Redis's cache already
        await store.ping()
        stored, length = await store.append_event("u1", "item-a", None, None)  # was a 503 "nothing was stored"
        assert proxy.dropped, "the proxy never held a reply: the test did not exercise a retry"
        assert stored and length == 1
        history = await direct.get_history("u1")
        assert [entry.item_id for entry in history] == ["item-a"], history
    finally:
        await store.close()
        await direct.close()
        await proxy.stop()
        delete_prefix(prefix)


async def test_ids_with_braces_keep_their_keys_apart(store):
    """A user id's hash tag is a digest: braces in an id cannot split or merge slots, and ids stay apart."""
    for user in ("a}b", "{a", "a", "}{"):
        await store.replace_history(user, [(user, 1.0)])
    for user in ("a}b", "{a", "a", "}{"):
        assert [e.item_id for e in await store.get_history(user)] == [user]
    keys = [k.decode() for k in redis.Redis.from_url(REDIS_URL).keys(f"{store.prefix}:*:hist")]
    assert len(keys) == 4 and all(k.count("{") == 1 and k.count("}") == 1 for k in keys), keys


async def test_replace_history_counts_only_what_it_keeps(store):
    """history_max is 5: replacing with 8 items keeps the 5 latest, and popularity counts those 5 only."""
    await store.replace_history("trim", [(f"t{i}", float(i)) for i in range(8)])
    counts = await store.get_popularity([f"t{i}" for i in range(8)])
    assert [counts[f"t{i}"] for i in range(8)] == [0, 0, 0, 1, 1, 1, 1, 1]


async def test_a_demo_reset_leaves_the_api_keys(store):
    await store.put_api_key("d" * 64, "{}")
    await store.upsert_items([{"item_id": "1", "title": "One"}])
    await store.delete_prefix()
    assert await store.get_api_key("d" * 64) == "{}" and await store.count_items() == 0
    await store.delete_prefix(keep_api_keys=False)
    assert await store.get_api_key("d" * 64) is None


@pytest.mark.engine
def test_hostile_request_ids_are_a_422_not_a_500(client):
    body = {"candidates": [{"item_id": "1", "title": "A"}], "reasoning": "none"}
    for value in (b"x" * 129, "café".encode()):  # bytes: httpx would refuse to send a non-ASCII str header
        response = client.post("/rank", json=body, headers={"X-Request-Id": value})
        assert response.status_code == 422 and response.json()["error"]["param"] == "X-Request-Id", value
    rerank = client.post("/v1/rerank", json={"query": "user:" + "u" * 257, "documents": ["A"]})
    assert rerank.status_code == 422 and rerank.json()["error"]["param"] == "query", rerank.text
    assert httpx.get(f"{client.base_url}/healthz").status_code == 200


class _SlowEngine(FakeEngine):
    """Every answer takes half a second: it holds its budget in flight."""

    delay = 0.5


async def test_remote_engine_budget_is_shared_by_every_api_pod():
    """Two API pods on one Redis, remote engine, a global budget of 30 items: while pod A holds 20, pod B's
    20 are refused with a 429 (each pod's own bound of 1,024 would have let both in); after A finishes, B passes."""
    from contract.checkpoint import open_checkpoint
    from loadtest.procs import DEFAULT_MODEL
    from service.config import Settings
    from service.exceptions import Overloaded
    from service.metrics import Metrics
    from service.protocol import ItemIn, RankRequest
    from service.ranking import Ranker

    prefix = f"r2rtest-budget-{uuid.uuid4().hex[:8]}"
    settings = Settings(engine="remote", engine_url="http://unused", global_max_inflight_items=30,
                        redis_url=REDIS_URL, redis_prefix=prefix, score_cache=False)  # fmt: skip
    checkpoint = open_checkpoint(DEFAULT_MODEL)
    stores = [RedisStore(REDIS_URL, prefix=prefix) for _ in range(2)]
    pods = [Ranker(_SlowEngine(checkpoint), settings, Metrics(), store) for store in stores]
    request = RankRequest(candidates=[ItemIn(item_id=str(i), title=f"Item {i}") for i in range(20)], reasoning="none")
    try:
        holding = asyncio.create_task(pods[0].rank(request, "a"))
        await asyncio.sleep(0.2)  # pod A has taken its 20
        with pytest.raises(Overloaded, match="shared budget"):
            await pods[1].rank(request, "b")
        await holding
        assert len((await pods[1].rank(request, "b2")).items) == 20  # released: B passes now
    finally:
        for store in stores:
            await store.close()
        delete_prefix(prefix)


class _ReplyDroppingProxy(RedisProxy):
    """While ``drop`` is set, every command still reaches Redis (and runs) but its reply never reaches the
    client: a lost reply, landing exactly between "done" and "confirmed"."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.drop = False

    async def reply(self, data: bytes) -> bool:
        return not self.drop


async def test_the_engine_budget_cannot_leak_when_an_admit_reply_and_a_release_are_lost(monkeypatch):
    """Pod A's Redis replies are dropped while it ranks 20 items: its admission lands in Redis unconfirmed and
    its release never arrives. The budget (30 items) then holds A's 20 until the lease expires (deadline plus
    a margin), after which it is whole again: pod B gets its 20 and the total in flight returns to 0. (Counters
    used to keep such items for good, or go negative after a repeated release.)"""
    from urllib.parse import urlparse

    from contract.checkpoint import open_checkpoint
    from loadtest.procs import DEFAULT_MODEL
    from service import ranking
    from service.config import Settings
    from service.exceptions import Overloaded
    from service.metrics import Metrics
    from service.protocol import ItemIn, RankRequest
    from service.ranking import Ranker

    monkeypatch.setattr(ranking, "LEASE_MARGIN_S", 0.5)
    prefix = f"r2rtest-lease-{uuid.uuid4().hex[:8]}"
    settings = Settings(engine="remote", engine_url="http://unused", global_max_inflight_items=30,
                        redis_url=REDIS_URL, redis_prefix=prefix, score_cache=False)  # fmt: skip
    proxy = _ReplyDroppingProxy(urlparse(REDIS_URL).port or 6379)
    via_proxy = f"redis://127.0.0.1:{await proxy.start()}/0"
    store_a, store_b = RedisStore(via_proxy, prefix=prefix, timeout_s=0.3), RedisStore(REDIS_URL, prefix=prefix)
    checkpoint = open_checkpoint(DEFAULT_MODEL)
    pod_a, pod_b = (Ranker(_SlowEngine(checkpoint), settings, Metrics(), store) for store in (store_a, store_b))
    request = RankRequest(candidates=[ItemIn(item_id=str(i), title=f"Item {i}") for i in range(20)], reasoning="none",
                          deadline_ms=3000)  # fmt: skip
    try:
        await store_a.ping()  # connected (and the admission script loaded) before replies start to vanish
        await pod_a.rank(RankRequest(candidates=request.candidates[:1], reasoning="none"), "warm")
        proxy.drop = True
        answered = await pod_a.rank(request, "a")  # admitted on its own bound: Redis never confirmed the lease
        assert len(answered.items) == 20 and not answered.degraded
        proxy.drop = False
        assert await store_b.engine_items_in_flight(time.time()) == 20  # the unconfirmed lease, never released
        with pytest.raises(Overloaded, match="shared budget"):
            await pod_b.rank(request, "b")
        await asyncio.sleep(3.0)  # the lease's deadline (3 s from admission) and margin (0.5 s) pass
        assert await store_b.engine_items_in_flight(time.time()) == 0
        assert len((await pod_b.rank(request, "b2")).items) == 20  # the budget is whole again
        assert await store_b.engine_items_in_flight(time.time()) == 0
        await store_b.release_engine_items("never-admitted")  # a stray or repeated release changes nothing
        assert await store_b.engine_items_in_flight(time.time()) == 0
    finally:
        for store in (store_a, store_b):
            await store.close()
        await proxy.stop()
        delete_prefix(prefix)


class _Holder:
    def __init__(self, engine) -> None:
        self.engine = engine

    def swap_engine(self, engine) -> None:
        self.engine = engine


class _BrokenEngine(_SlowEngine):
    """Starts, then fails its warm-up with an error that is not an EngineError (a bug, a bad checkpoint)."""

    closed = False

    async def _answer_logprobs(self, prompt_ids, request_id, routing_key):
        raise ValueError("weights of the wrong shape")

    async def close(self) -> None:
        type(self).closed = True


async def test_a_swap_that_fails_any_way_closes_the_new_engine_and_answers_503(tmp_path):
    """Before, only an EngineError closed the new engine: anything else was a 500 with the new engine left
    running beside the old one. A non-numeric eval metric in a manifest was a 500 too; now it counts as no
    metric: the gate refuses it (409) where the serving model has one, and a forced publish goes on."""
    import json
    import shutil

    from contract.checkpoint import open_checkpoint
    from loadtest.procs import DEFAULT_MODEL
    from service.config import Settings
    from service.exceptions import Conflict, EngineError
    from service.metrics import Metrics
    from service.model_manager import ModelManager, gate_score

    def copy_with_metrics(name: str, metrics: dict) -> Path:
        target = tmp_path / "models" / name
        shutil.copytree(DEFAULT_MODEL, target)
        manifest = json.loads((target / "manifest.json").read_text())
        (target / "manifest.json").write_text(json.dumps({**manifest, "metrics": metrics}))
        return target

    serving = _SlowEngine(open_checkpoint(copy_with_metrics("serving", {"ndcg@10": 0.5})))
    candidate = copy_with_metrics("next", {"ndcg@10": "very good"})
    assert gate_score(open_checkpoint(candidate)) is None  # not a number: no gate, and no 500

    holder = _Holder(serving)
    manager = ModelManager(holder, Settings(redis_url=None), Metrics(), tmp_path / "models",
                           engine_factory=lambda settings, checkpoint: _BrokenEngine(checkpoint))  # fmt: skip
    with pytest.raises(Conflict, match="no ndcg@10"):
        await manager.publish(str(candidate))
    with pytest.raises(EngineError, match="still serving the old one"):
        await manager.publish(str(candidate), force=True)
    assert _BrokenEngine.closed and holder.engine is serving


class _StallingEngine(FakeEngine):
    """Healthy until ``stall()``; then its health check never answers (a hung engine or router)."""

    healthy = asyncio.Event()

    async def check_health(self) -> None:
        await self.healthy.wait()


async def test_readiness_answers_at_once_while_the_engine_stalls(monkeypatch):
    """/readyz reads what the background check last saw: it answers while the engine's health check hangs (it
    used to wait on the engine, up to 5 s, beyond the probe's 2 s), and the stall turns the pod unready once
    the bounded background check gives up."""
    import time

    from contract.checkpoint import open_checkpoint
    from loadtest.procs import DEFAULT_MODEL
    from service import state as state_module
    from service.api.health import readyz
    from service.config import Settings

    monkeypatch.setattr(state_module, "HEALTH_CHECK_INTERVAL_S", 0.05)
    monkeypatch.setattr(state_module, "HEALTH_CHECK_TIMEOUT_S", 0.3)
    _StallingEngine.healthy = asyncio.Event()
    _StallingEngine.healthy.set()
    settings = Settings(model_path=DEFAULT_MODEL, redis_url=None, model_sync_interval_s=0)
    state = state_module.ServiceState.create(settings, _StallingEngine(open_checkpoint(DEFAULT_MODEL)))
    await state.start()
    try:
        for _ in range(100):
            if state.ready:
                break
            await asyncio.sleep(0.05)
        assert (await readyz(state)).status_code == 200
        _StallingEngine.healthy.clear()  # from now on the engine never answers a health check
        answer = await asyncio.wait_for(readyz(state), 1.0)  # a probe that waited on the engine would hang here
        assert answer.status_code == 200  # what the last finished check saw
        await asyncio.sleep(0.6)  # the bounded background check gives up on the stalled engine
        started = time.perf_counter()
        answer = await asyncio.wait_for(readyz(state), 1.0)
        print(f"/readyz while the engine stalls: {1000 * (time.perf_counter() - started):.2f} ms")
        assert answer.status_code == 503 and b"no health answer" in answer.body, answer.body
    finally:
        _StallingEngine.healthy.set()
        await state.stop()


@pytest.mark.parametrize(("name", "secret"), [("R2RANK_KEY_SECRET", "ks-7f3a9"), ("R2RANK_ENGINE_API_KEY", "ek-2b8c1"),
                                              ("R2RANK_REDIS_URL", "redis://:rp5d@h/0")])  # fmt: skip
def test_a_settings_error_names_the_setting_never_the_secrets(name, secret):
    """A model-level validation error (here: a remote engine without its URL) used to print the settings it was
    given, secrets included, into the start-up log."""
    import os
    import subprocess
    import sys

    from loadtest.procs import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("R2RANK_")}
    env.update({"R2RANK_ENGINE": "remote", name: secret})
    result = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--port", "1"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "R2RANK_ENGINE_URL is required" in output, output[-2000:]
    assert secret.removeprefix("redis://:").split("@")[0] not in output, f"{name} leaked into the error output"


@pytest.mark.parametrize("name", ["R2RANK_KEY_SECRET", "R2RANK_ENGINE_API_KEY", "R2RANK_REDIS_URL"])
def test_compose_demo_secrets_are_refused_once_keys_are_on(name):
    """deploy/docker-compose.yml's public `local-demo-only` defaults serve the laptop demo (keys off); with API keys
    on they would sign and guard nothing, so they are refused like the manifests' CHANGE-ME placeholders."""
    from pydantic import ValidationError

    from service.config import DEMO_SECRET, Settings

    value = f"redis://:{DEMO_SECRET}@redis:6379/0" if name == "R2RANK_REDIS_URL" else DEMO_SECRET
    field = {"R2RANK_KEY_SECRET": "key_secret", "R2RANK_ENGINE_API_KEY": "engine_api_key",
             "R2RANK_REDIS_URL": "redis_url"}[name]  # fmt: skip
    Settings(**{field: value})  # the demo: keys off
    with pytest.raises(ValidationError, match=name):
        Settings(**{field: value, "auth_enabled": True})
