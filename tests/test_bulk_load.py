"""`r2rank-serve load`: a catalogue and its histories into the real Redis, read as the trainer reads them;
rows the API would refuse are refused with their line; a rerun leaves the same state."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from loadtest.procs import REPO_ROOT, delete_prefix
from service.store import RedisStore
from tests.conftest import REDIS_URL
from trainer.data import load_splits


def _catalogue(directory: Path, bad_rows: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    items = [{"item_id": f"i{i}", "title": f"Game {i}", "platform": "Switch"} for i in range(40)]
    rows = [json.dumps(r) for r in items] + ([json.dumps({"item_id": "no-title"}), "{not json"] if bad_rows else [])
    (directory / "items.jsonl").write_text("\n".join(rows) + "\n")
    events = []
    for u in range(30):  # written newest first: the order comes from the timestamps, as in training
        events += [{"user_id": f"u{u}", "item_id": f"i{(u + k) % 40}", "timestamp": f"2021-05-0{k + 1}T12:00:00Z"}
                   for k in reversed(range(6))]  # fmt: skip
    if bad_rows:
        events += [{"user_id": "u1", "item_id": "i999", "timestamp": 5},  # unknown item
                   {"user_id": "u2", "item_id": "i1", "timestamp": "soon"},  # bad timestamp
                   {"user_id": "", "item_id": "i1", "timestamp": 5}]  # fmt: skip
    (directory / "interactions.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")


def _load(directory: Path, prefix: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "R2RANK_REDIS_URL": REDIS_URL, "R2RANK_REDIS_PREFIX": prefix}
    result = subprocess.run([sys.executable, "-m", "service.cli", "load", str(directory)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result


async def _state(prefix: str) -> tuple[dict, dict, list]:
    store = RedisStore(REDIS_URL, prefix)
    try:
        histories = {f"u{u}": [e.item_id for e in await store.get_history(f"u{u}")] for u in range(30)}
        items = await store.get_items(["i0", "i39", "no-title"])
        popularity = await store.client.zrange(f"{prefix}:pop", 0, -1, withscores=True)
        return histories, items, popularity
    finally:
        await store.close()


def test_load_stores_what_training_read_refuses_bad_rows_and_is_idempotent(tmp_path):
    _catalogue(tmp_path)
    prefix = f"r2rtest-load-{uuid.uuid4().hex[:8]}"
    try:
        first = _load(tmp_path, prefix)
        assert "40 items, 30 user histories (180 events) loaded" in first.stdout
        refused = ("items.jsonl:41: field 'title'", "items.jsonl:42: invalid JSON", "interactions.jsonl:181:",
                   "interactions.jsonl:182: field 'timestamp'", "interactions.jsonl:183: field 'user_id'")  # fmt: skip
        assert all(where in first.stdout for where in refused), first.stdout
        histories, items, popularity = asyncio.run(_state(prefix))
        _catalogue(tmp_path / "clean", bad_rows=False)
        _, splits = load_splits(tmp_path / "clean")  # the trainer's order of the same rows
        trained = {s.user_id: [*s.train, s.valid_target, s.test_target] for s in splits}
        assert histories == {u: trained[u] for u in histories}
        assert items["i0"]["title"] == "Game 0" and items["i0"]["platform"] == "Switch" and "no-title" not in items
        assert sum(score for _, score in popularity) == 180
        _load(tmp_path, prefix)  # a rerun (an interrupted load resumed, or the same file again) changes nothing
        assert asyncio.run(_state(prefix)) == (histories, items, popularity)
    finally:
        delete_prefix(prefix)
