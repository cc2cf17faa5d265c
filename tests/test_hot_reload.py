"""Model refresh under load: publish a new checkpoint with `r2rank-train publish` while a client loop ranks.
0 failed requests, model_version switches, no cached score of the old model after the swap; the eval gate
refuses a worse model unless forced; rollback is one call. Two API processes on one Redis: a replica started
after a publish boots the published model, and follows every later publish and rollback."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtest.procs import DEFAULT_MODEL, REPO_ROOT, delete_prefix, start_service

pytestmark = pytest.mark.engine


def _checkpoint(root: Path, name: str, ndcg: float) -> Path:
    """A copy of the shipped model with its own model_version and eval metric (same weights: the swap
    mechanics, not the weights, are under test)."""
    target = root / name
    shutil.copytree(DEFAULT_MODEL, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(model_version=f"test-{name}", metrics={"ndcg@10": ndcg})
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def _publish(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", "publish", *args, "--url", url],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def reloadable(log_dir, redis_prefix, tmp_path_factory):
    """The leader (takes the publishes) on its own key prefix: the session's shared service must not follow
    these test models. ``env`` starts more replicas of the same fleet (one key secret signs its record)."""
    root = tmp_path_factory.mktemp("models")
    paths = {name: _checkpoint(root, name, ndcg) for name, ndcg in (("a", 0.5), ("b", 0.6), ("c", 0.4))}
    prefix = f"{redis_prefix}-fleet"
    env = {"R2RANK_MODEL_PATH": str(paths["a"]), "R2RANK_MODELS_ROOT": str(root), "R2RANK_REDIS_PREFIX": prefix,
           "R2RANK_MODEL_SYNC_INTERVAL_S": "1", "R2RANK_KEY_SECRET": f"fleet-{prefix}"}  # fmt: skip
    server = start_service(log_dir, env=env)
    server.wait_ready("/readyz")
    yield server, paths, env
    server.stop()
    delete_prefix(prefix)


def _serves(url: str, version: str, timeout: float = 240.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while (seen := httpx.get(f"{url}/readyz").json().get("model_version")) != version:
        assert time.monotonic() < deadline, f"still serving {seen}, not {version}"
        time.sleep(1.0)


def test_publish_under_load_swaps_without_failures(reloadable, demo):
    server, paths, _ = reloadable
    body = demo.rank_request(demo.users[120], reasoning="none")
    responses: list[tuple[int, str | None, int]] = []

    async def client_loop(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            while not stop.is_set():
                r = await http.post("/rank", json=body)
                data = r.json() if r.status_code == 200 else {}
                responses.append((r.status_code, data.get("model_version"), data.get("cache_hits", -1)))

    async def scenario() -> subprocess.CompletedProcess:
        stop = asyncio.Event()
        loops = [asyncio.create_task(client_loop(stop)) for _ in range(3)]
        await asyncio.sleep(1.0)
        published = await asyncio.to_thread(_publish, server.url, str(paths["b"]))
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*loops)
        return published

    published = asyncio.run(scenario())
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout.strip().splitlines()[-1])["model_version"] == "test-b"
    statuses = [s for s, _, _ in responses]
    assert statuses and set(statuses) == {200}, f"failed requests during the swap: {statuses}"
    versions = [v for _, v, _ in responses]
    assert versions[0] == "test-a" and versions[-1] == "test-b"
    first_b = next(i for i, v in enumerate(versions) if v == "test-b")
    assert all(v == "test-b" for v in versions[first_b:]), "an old-model answer after the swap"
    assert responses[first_b][2] == 0, "a cached score of the old model was served after the swap"
    assert any(hits > 0 for _, v, hits in responses[:first_b] if v == "test-a")  # the cache was in use before
    status = httpx.get(f"{server.url}/admin/models").json()
    assert status["current"]["model_version"] == "test-b" and status["previous"]["model_version"] == "test-a"
    assert 'model_version="test-b"' in httpx.get(f"{server.url}/metrics").text


def test_eval_gate_force_and_rollback_reach_every_replica(reloadable, log_dir):
    server, paths, env = reloadable
    replica = start_service(log_dir, env={**env, "R2RANK_ENFORCE_EAGER": "true"})  # configured: test-a
    try:
        replica.wait_ready("/readyz")
        assert httpx.get(f"{replica.url}/readyz").json()["model_version"] == "test-b"  # boots what is published
        refused = _publish(server.url, str(paths["c"]))  # ndcg 0.4 < serving 0.6
        assert refused.returncode == 1 and "worse" in refused.stderr
        assert httpx.get(f"{server.url}/admin/models").json()["current"]["model_version"] == "test-b"
        forced = _publish(server.url, str(paths["c"]), "--force")
        assert forced.returncode == 0, forced.stderr
        _serves(replica.url, "test-c")  # follows the publish
        assert httpx.get(f"{replica.url}/admin/models").json()["published"]["model_version"] == "test-c"
        rolled = _publish(server.url, "--rollback")
        assert rolled.returncode == 0, rolled.stderr
        assert httpx.get(f"{server.url}/admin/models").json()["current"]["model_version"] == "test-b"
        _serves(replica.url, "test-b")  # and the rollback
    finally:
        replica.stop()
    outside = httpx.post(f"{server.url}/admin/models", json={"path": str(DEFAULT_MODEL)})
    assert outside.status_code == 422 and outside.json()["error"]["param"] == "path"
    assert httpx.get(f"{server.url}/readyz").json()["model_version"] == "test-b"
