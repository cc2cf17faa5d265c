"""The remote backend: a real `vllm serve` on the shipped model, reached over HTTP by a second service."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from loadtest.procs import ServerProcess, free_port, start_service, start_vllm_server

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def remote_service(log_dir) -> Iterator[ServerProcess]:
    vllm_server = start_vllm_server(log_dir)
    service = None
    try:
        vllm_server.wait_ready("/health")
        service = start_service(log_dir, env={"R2RANK_ENGINE": "remote", "R2RANK_ENGINE_URL": vllm_server.url})
        service.wait_ready("/readyz")
        yield service
    finally:
        if service is not None:
            service.stop()
        vllm_server.stop()


def _rank(url: str, body: dict) -> dict:
    response = httpx.post(f"{url}/rank", json=body, timeout=300.0)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("reasoning", ["full", "none"])
def test_remote_ranks_like_in_process(service, remote_service, demo, reasoning):
    """Same checkpoint, same contract, same ids: the remote engine gives the in-process ranking."""
    body = demo.rank_request(demo.users[7], reasoning=reasoning, include_rationales=reasoning == "full")
    local = _rank(service.url, body)
    remote = _rank(remote_service.url, body)
    assert [i["item_id"] for i in remote["items"]] == [i["item_id"] for i in local["items"]]
    for a, b in zip(local["items"], remote["items"], strict=True):
        assert b["score"] == pytest.approx(a["score"], abs=1e-3)
        assert b.get("rationale") == a.get("rationale")
    assert remote["model_version"] == local["model_version"]
    ready = httpx.get(f"{remote_service.url}/readyz").json()
    assert ready["engine"]["backend"] == "vllm-remote"


def test_unreachable_remote_engine_gives_503_not_500(log_dir, demo):
    """Nothing listens at the engine URL: the API still starts, is not ready, and /rank answers 503."""
    dead_url = f"http://127.0.0.1:{free_port()}"
    service = start_service(log_dir, env={"R2RANK_ENGINE": "remote", "R2RANK_ENGINE_URL": dead_url})
    try:
        service.wait_ready("/healthz", timeout=120)
        ready = httpx.get(f"{service.url}/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "unreachable" in ready.json()["engine"]["detail"]
        response = httpx.post(f"{service.url}/rank", json=demo.rank_request(demo.users[0], n_candidates=2))
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "engine_unavailable"
        assert response.headers.get("retry-after")
    finally:
        service.stop()


def test_killed_remote_engine_gives_503_then_recovers(log_dir, demo):
    """Kill `vllm serve` mid-load: requests get 503 (never 500), /readyz turns false; start it again on the
    same port: the service reconnects by itself and is ready again."""
    import asyncio
    import signal
    import time

    vllm_server = start_vllm_server(log_dir)
    vllm_server.wait_ready("/health")
    port = int(vllm_server.url.rsplit(":", 1)[1])
    service = start_service(log_dir, env={"R2RANK_ENGINE": "remote", "R2RANK_ENGINE_URL": vllm_server.url,
                                          "R2RANK_ENGINE_TIMEOUT_S": "10"})  # fmt: skip
    try:
        service.wait_ready("/readyz")
        body = demo.rank_request(demo.users[8], n_candidates=5, reasoning="full")

        async def load(seconds: float) -> list[int]:
            statuses: list[int] = []
            async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    batch = await asyncio.gather(*(http.post("/rank", json=body) for _ in range(4)))
                    statuses += [r.status_code for r in batch]
            return statuses

        async def scenario() -> list[int]:
            task = asyncio.create_task(load(8.0))
            await asyncio.sleep(2.0)
            vllm_server.stop(signal.SIGKILL)
            return await task

        statuses = asyncio.run(scenario())
        assert 200 in statuses and 503 in statuses, statuses
        assert set(statuses) <= {200, 503}, statuses
        deadline = time.monotonic() + 30
        while httpx.get(f"{service.url}/readyz").status_code == 200:
            assert time.monotonic() < deadline, "readyz stayed true with the engine dead"
            time.sleep(0.5)

        restarted = start_vllm_server(log_dir, port=port)
        try:
            restarted.wait_ready("/health")
            service.wait_ready("/readyz", timeout=120)
            assert httpx.post(f"{service.url}/rank", json=body, timeout=60).status_code == 200
        finally:
            restarted.stop()
    finally:
        service.stop()
        vllm_server.stop()
