"""Shared fixtures. One real service process (with its in-process vLLM engine) per test session."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from loadtest.procs import ServerProcess, delete_prefix, start_service
from service.demo import DemoData
from service.store import RedisStore


@pytest.fixture
async def store():
    """A store on the shared Redis under a fresh prefix, histories capped at 5; its keys are deleted after."""
    prefix = f"r2rtest-store-{uuid.uuid4().hex[:8]}"
    store = RedisStore(REDIS_URL, prefix=prefix, history_max=5)
    yield store
    await store.close()
    delete_prefix(prefix)


@pytest.fixture(scope="session")
def demo() -> DemoData:
    return DemoData()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("logs")


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """The session's own key prefix on the shared Redis; every key under it is deleted at the end."""
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (make test starts it)")
    prefix = f"r2rtest-{uuid.uuid4().hex[:8]}"
    yield prefix
    delete_prefix(prefix)


@pytest.fixture(scope="session")
def service(log_dir, redis_prefix) -> Iterator[ServerProcess]:
    """`r2rank-serve` on the shipped default model with the local vLLM engine and the shared Redis."""
    server = start_service(log_dir, env={"R2RANK_REDIS_URL": REDIS_URL, "R2RANK_REDIS_PREFIX": redis_prefix})
    server.wait_ready("/readyz")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(service: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=300.0) as http:
        yield http


@pytest.fixture(scope="session")
def tiny_data(demo: DemoData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 demo users as a generic dataset (items.jsonl + interactions.jsonl with timestamps)."""
    root = tmp_path_factory.mktemp("generic")
    with (root / "items.jsonl").open("w") as handle:
        for item_id, title in demo.titles.items():
            handle.write(json.dumps({"item_id": item_id, "title": title}) + "\n")
    with (root / "interactions.jsonl").open("w") as handle:
        for user in demo.users[:150]:
            for ts, item in enumerate([*user.history, user.target]):
                handle.write(json.dumps({"user_id": user.user_id, "item_id": item, "timestamp": ts}) + "\n")
    return root
