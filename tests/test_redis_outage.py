"""Redis dies mid-run and comes back: inline ranking keeps working, writes say 503 (never a false 200),
and every acknowledged write is still there after the restart."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from loadtest.procs import free_port, start_service

pytestmark = pytest.mark.engine


class RedisServer:
    """A redis-server of the test's own, with AOF fsync on every write, so a crash loses nothing acked."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # a crash, not a clean shutdown
        self.proc.wait(10)


@pytest.fixture(scope="module")
def outage_setup(log_dir, tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-aof"))
    server.start()
    env = {"R2RANK_REDIS_URL": server.url, "R2RANK_REDIS_TIMEOUT_S": "0.3", "R2RANK_HISTORY_MAX": "1000"}
    service = start_service(log_dir, env=env)
    try:
        service.wait_ready("/readyz")
        yield server, service
    finally:
        service.stop()
        if server.proc and server.proc.poll() is None:
            server.kill()


async def _append_loop(url: str, user_id: str, start: int, count: int, acked: list[str], statuses: list[int]):
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        for i in range(start, start + count):
            event_id = f"e{i}"
            response = await http.post(f"/users/{user_id}/events", json={"item_id": f"i{i}", "event_id": event_id})
            statuses.append(response.status_code)
            if response.status_code == 200:
                acked.append(event_id)
            await asyncio.sleep(0.01)


def test_outage_keeps_inline_ranking_and_loses_no_acknowledged_write(outage_setup, demo):
    server, service = outage_setup
    url, user_id = service.url, "outage-user"
    acked: list[str] = []
    statuses: list[int] = []

    async def scenario():
        writer = asyncio.create_task(_append_loop(url, user_id, 0, 150, acked, statuses))
        await asyncio.sleep(0.5)
        server.kill()  # mid-run
        async with httpx.AsyncClient(base_url=url, timeout=120.0) as http:
            inline = await http.post("/rank", json=demo.rank_request(demo.users[0], n_candidates=5, reasoning="none"))
            assert inline.status_code == 200, inline.text
            write = await http.put("/items", json=[{"item_id": "x", "title": "X"}])
            assert write.status_code == 503 and write.json()["error"]["type"] == "store_unavailable"
            by_user = await http.post(
                "/rank", json={"user_id": user_id, "candidates": [{"item_id": "a", "title": "A"}]}
            )
            assert by_user.status_code == 503 and "history" in by_user.json()["error"]["message"]
            # readiness reads the background check's last result (a probe never waits on Redis): it turns soon
            for _ in range(40):
                ready = (await http.get("/readyz")).json()
                if not ready["redis"]["ok"]:
                    break
                await asyncio.sleep(0.25)
            assert ready["ready"] is True and ready["redis"]["ok"] is False
            assert "127.0.0.1" not in json.dumps(ready) and "127.0.0.1" not in write.text  # hosts only in logs
        await writer
        return inline

    asyncio.run(scenario())
    assert 503 in statuses, "the outage never showed"
    assert set(statuses) <= {200, 503}, statuses  # never a 500, never a timeout

    server.start()  # same directory: the AOF is replayed
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the service reconnects by itself
        if (
            httpx.post(f"{url}/users/{user_id}/events", json={"item_id": "after", "event_id": "after"}).status_code
            == 200
        ):
            break
        time.sleep(0.5)
    else:
        pytest.fail("writes did not recover after Redis came back")
    acked.append("after")

    stored = [e["item_id"] for e in httpx.get(f"{url}/users/{user_id}/history").json()["items"]]
    acked_items = [f"i{e[1:]}" for e in acked if e != "after"] + ["after"]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    # every acknowledged event survived the crash, in order (a write whose reply was lost may be there too)
    assert [item for item in stored if item in set(acked_items)] == acked_items
    for _ in range(40):
        if httpx.get(f"{url}/readyz").json()["redis"]["ok"]:
            break
        time.sleep(0.25)
    assert httpx.get(f"{url}/readyz").json()["redis"]["ok"] is True


def test_readiness_answers_at_once_while_redis_is_slow(outage_setup):
    """Readiness reads the background Redis check: with Redis stalled for 3 s (DEBUG SLEEP), /readyz answers in
    well under the probes' 1 s timeout and stays ready (inline ranking needs no Redis)."""
    import threading

    server, service = outage_setup
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    stall = threading.Thread(target=lambda: redis.Redis(port=server.port).execute_command("DEBUG", "SLEEP", "3"))
    stall.start()
    time.sleep(0.3)  # the stall has begun
    try:
        timings = []
        for _ in range(5):
            started = time.monotonic()
            response = httpx.get(f"{service.url}/readyz", timeout=5)
            timings.append(time.monotonic() - started)
            assert response.status_code == 200
        print(f"/readyz while Redis stalls: slowest {max(timings) * 1000:.0f} ms")
        assert max(timings) < 0.5, timings
    finally:
        stall.join()


async def test_verified_keys_outlive_a_redis_outage(tmp_path):
    """A key Redis verified keeps working while Redis is down (an outage used to turn every authenticated call
    into a 503, inline ranking included); a key never verified before the outage gets the 503's error."""
    from service.auth import KeyStore
    from service.exceptions import StoreUnavailable
    from service.store import RedisStore

    server = RedisServer(tmp_path)
    server.start()
    store = RedisStore(server.url, prefix="keys", timeout_s=0.3)
    try:
        keys = KeyStore({}, store, secret="outage-secret")
        used, unused = await keys.add(["rank"], name="used"), await keys.add(["rank"], name="unused")
        assert (await keys.entry(used)).scopes == {"rank"}  # verified once, while Redis is up
        server.kill()
        assert (await keys.entry(used)).scopes == {"rank"}  # still honoured while Redis is down
        with pytest.raises(StoreUnavailable):
            await keys.entry(unused)
        with pytest.raises(StoreUnavailable):
            await keys.entry("r2r_never_issued")
    finally:
        await store.close()
        if server.proc and server.proc.poll() is None:
            server.kill()
