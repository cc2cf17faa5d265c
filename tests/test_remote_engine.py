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
