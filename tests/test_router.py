"""Scale-out on loopback: two real `vllm serve` CPU engines behind the real `vllm-router`, the service with
R2RANK_ENGINE=remote pointed at the router. Consistent hashing keeps each user on one engine (read from the
engines' own counters) and hits the prefix cache more than round robin on the same request mix; an engine
killed under load is taken out by the router's health check while the service keeps answering, its users
move to the survivor, and a restarted engine takes traffic again."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from loadtest.bench_router import (
    ENGINE_KEY,
    compare_policies,
    engine_counters,
    request_mix,
    routed_service,
    start_engines,
)
from loadtest.procs import DEFAULT_MODEL, ServerProcess, start_vllm_server
from tests.faults import statuses_under_fault

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def engines(log_dir) -> Iterator[list[ServerProcess]]:
    started = start_engines(log_dir, 2)
    yield started
    for engine in started:
        engine.stop()


def test_consistent_hash_keeps_each_user_on_one_engine_and_hits_the_cache_more(engines, log_dir, demo):
    mix = request_mix(demo, users=4, requests=2, candidates=6)
    hashed, round_robin = compare_policies(log_dir, engines, mix, ("consistent_hash", "round_robin"))
    (log_dir / "router-policies.json").write_text(json.dumps([vars(hashed), vars(round_robin)], indent=2))
    print(f"\n{hashed}\n{round_robin}")
    assert hashed.users_on_one_engine == 1.0 and hashed.mean_share_on_main_engine == 1.0
    assert round_robin.mean_share_on_main_engine < 1.0  # round robin splits a user's calls
    assert hashed.prefix_cache_hit_rate > round_robin.prefix_cache_hit_rate


def _calls(engine: ServerProcess) -> float:
    """Prompts the engine finished (each prompt of a list-valued call counts once)."""
    return engine_counters(engine.url)["vllm:request_success"]


def _users_on_each_engine(service_url: str, engines: list[ServerProcess], users: list[str], demo,
                          per_engine: int = 3) -> list[list[dict]]:  # fmt: skip
    """Rank requests of ``per_engine`` users the router hashes onto each engine, found by sending one request per
    user and reading which engine's counter moved: the ring depends on the engines' ports, so a fixed list of
    users may all land on one engine."""
    chosen: list[list[dict]] = [[] for _ in engines]
    for user in users:
        body = demo.rank_request(user, n_candidates=4, reasoning="full")
        before = [_calls(engine) for engine in engines]
        assert httpx.post(f"{service_url}/rank", json=body, timeout=60).status_code == 200
        on = next((i for i, (e, calls) in enumerate(zip(engines, before, strict=True)) if _calls(e) > calls), None)
        assert on is not None, f"no engine's counter moved for user {user}"
        if len(chosen[on]) < per_engine:
            chosen[on].append(body)
        if all(len(bodies) == per_engine for bodies in chosen):
            return chosen
    raise AssertionError(f"fewer than {per_engine} of {len(users)} users on an engine: {[len(c) for c in chosen]}")


def test_an_engine_killed_under_load_is_routed_around_and_rejoins(engines, log_dir, demo):
    with routed_service(log_dir, engines, "consistent_hash", env={"R2RANK_ENGINE_TIMEOUT_S": "20"}) as (_, service):
        survivors_users, killed_users = _users_on_each_engine(service.url, engines, demo.users[240:300], demo)
        bodies = killed_users + survivors_users  # the load under the kill is the killed engine's users'
        statuses = statuses_under_fault(service.url, bodies[:3], 12.0, 3.0, lambda: engines[1].stop(signal.SIGKILL))
        print(f"\nstatuses under the kill: {dict((s, statuses.count(s)) for s in set(statuses))}")
        assert statuses.count(200) > 0 and all(s < 500 or s == 503 for s in statuses), statuses
        assert statuses[-3:] == [200, 200, 200], statuses  # the router took the dead engine out
        survivor = _calls(engines[0])
        for body in bodies:  # every user, those of the dead engine included, answered by the survivor
            assert httpx.post(f"{service.url}/rank", json=body, timeout=60).status_code == 200
        assert _calls(engines[0]) - survivor == 2 * sum(len(b["candidates"]) for b in bodies)  # vLLM counts prompts

        port = int(engines[1].url.rsplit(":", 1)[1])
        engines[1] = start_vllm_server(log_dir, DEFAULT_MODEL, port, "--api-key", ENGINE_KEY, stats=True)
        engines[1].wait_ready("/health")
        deadline = time.monotonic() + 60
        while _calls(engines[1]) == 0:  # the router's health check brings it back into the ring
            assert time.monotonic() < deadline, "the restarted engine never took traffic"
            for body in bodies:
                assert httpx.post(f"{service.url}/rank", json=body, timeout=60).status_code == 200
            time.sleep(1.0)
