"""The fleet's published-model record: signed and of one shape, so a Redis writer cannot steer the fleet or crash
it; and a rollback on any replica goes back to what the fleet served before (real Redis, fake engines)."""

from __future__ import annotations

import json
import logging
import math
import shutil
import uuid
from pathlib import Path

import pytest

from contract.checkpoint import open_checkpoint
from loadtest.procs import DEFAULT_MODEL, delete_prefix
from service.config import Settings
from service.metrics import Metrics
from service.model_manager import ModelManager
from service.published import PublishedRecord, seal, unseal
from service.store import RedisStore
from tests.conftest import REDIS_URL
from tests.fake_engine import FakeEngine

SECRET = "fleet-secret-" + uuid.uuid4().hex
RECORD = PublishedRecord(path="/models/b", model_version="b", previous_path="/models/a", previous_model_version="a",
                         published_at=1.0)  # fmt: skip


def test_only_a_record_of_its_shape_signed_with_the_fleets_secret_is_read():
    assert unseal(SECRET, seal(SECRET, RECORD)) == RECORD
    sealed = json.loads(seal(SECRET, RECORD))
    forged = [
        "[]", "not json", "null", json.dumps(RECORD.model_dump()),  # unsigned
        seal("another-secret", RECORD),
        json.dumps({**sealed, "path": "/models/evil"}),  # edited after signing
        json.dumps({**sealed, "extra": 1}),
        json.dumps({**sealed, "mac": "é" * 64}),
        json.dumps({**sealed, "published_at": math.inf}),
    ]  # fmt: skip
    for raw in forged:
        assert unseal(SECRET, raw) is None, raw


class _Holder:
    def __init__(self, engine) -> None:
        self.engine = engine

    def swap_engine(self, engine) -> None:
        self.engine = engine


@pytest.fixture
def fleet(tmp_path):
    """Checkpoints a, b, c under one models root, and a key prefix of their own."""
    root = tmp_path / "models"
    paths = {}
    for name in "abc":
        paths[name] = root / name
        shutil.copytree(DEFAULT_MODEL, paths[name])
        manifest = json.loads((paths[name] / "manifest.json").read_text())
        (paths[name] / "manifest.json").write_text(json.dumps({**manifest, "model_version": f"test-{name}"}))
    prefix = f"r2rtest-fleet-{uuid.uuid4().hex[:8]}"
    yield root, paths, prefix
    delete_prefix(prefix)


def _replica(root: Path, path: Path, prefix: str, secret: str = SECRET) -> tuple[ModelManager, RedisStore]:
    store = RedisStore(REDIS_URL, prefix=prefix)
    settings = Settings(model_path=path, redis_url=REDIS_URL, redis_prefix=prefix, key_secret=secret)
    manager = ModelManager(_Holder(FakeEngine(open_checkpoint(path))), settings, Metrics(), root,
                           engine_factory=lambda s, checkpoint: FakeEngine(checkpoint), store=store)  # fmt: skip
    return manager, store


async def test_a_bad_record_is_logged_once_and_ignored_never_a_crash(fleet, caplog):
    root, paths, prefix = fleet
    manager, store = _replica(root, paths["a"], prefix)
    try:
        for raw in ("[]", "not json", json.dumps(RECORD.model_dump()), seal("another-secret", RECORD)):
            await store.client.set(f"{prefix}:model:published", raw)
            with caplog.at_level(logging.WARNING, logger="service.model_manager"):
                caplog.clear()
                for _ in range(3):  # polled every few seconds: logged once
                    await manager.follow()
                booted = await manager.engine_to_boot(manager.holder.engine)
            assert manager.holder.engine.model_version == "test-a" and booted is manager.holder.engine
            assert caplog.text.count("ignoring the published-model record") == 1, (raw, caplog.text)
        # a signed record naming a checkpoint outside the models root is not followed either
        outside = RECORD.model_copy(update={"path": str(DEFAULT_MODEL), "model_version": "x"})
        await store.client.set(f"{prefix}:model:published", seal(SECRET, outside))
        await manager.follow()
        assert manager.holder.engine.model_version == "test-a"
    finally:
        await store.close()


async def test_a_rollback_on_any_replica_returns_the_fleet_to_its_previous_model(fleet):
    """Replica A publishes b over a; replica B, configured with c, follows to b. B's own previous model is c,
    but its rollback takes the fleet back to a (the record's history), and A follows."""
    root, paths, prefix = fleet
    (a, store_a), (b, store_b) = _replica(root, paths["a"], prefix), _replica(root, paths["c"], prefix)
    try:
        await a.publish(str(paths["b"]))
        await b.follow()
        assert b.holder.engine.model_version == "test-b" and b.previous.model_version == "test-c"
        result = await b.rollback()
        assert result["model_version"] == "test-a" and result["fleet_wide"]
        await a.follow()
        assert a.holder.engine.model_version == b.holder.engine.model_version == "test-a"
        assert a.status()["published"]["previous_model_version"] == "test-b"
    finally:
        await store_a.close()
        await store_b.close()


async def test_without_a_key_secret_nothing_is_recorded(fleet):
    root, paths, prefix = fleet
    manager, store = _replica(root, paths["a"], prefix, secret="")
    try:
        assert not manager.fleet_wide
        result = await manager.publish(str(paths["b"]))
        assert result["model_version"] == "test-b" and not result["fleet_wide"]
        assert await store.get_published_model() is None
    finally:
        await store.close()
