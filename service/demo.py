"""The shipped demo subset (``data/demo``): real Amazon Video Games users and items (see its SOURCE.md).

Used by the README example, the tests, the load test and the benchmarks, so they all rank the same requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


@dataclass(frozen=True)
class DemoUser:
    user_id: str
    history: list[str]
    candidates: list[str]
    target: str


@dataclass(frozen=True)
class DemoData:
    directory: Path = DEMO_DIR

    @cached_property
    def titles(self) -> dict[str, str]:
        rows = _read_jsonl(self.directory / "items.jsonl")
        return {row["item_id"]: row["title"] for row in rows}

    @cached_property
    def users(self) -> list[DemoUser]:
        return [DemoUser(**row) for row in _read_jsonl(self.directory / "users.jsonl")]

    def item(self, item_id: str) -> dict[str, str]:
        return {"item_id": item_id, "title": self.titles[item_id]}

    def rank_request(self, user: DemoUser, n_candidates: int | None = None, **options: Any) -> dict[str, Any]:
        """A /rank body with inline history and titles (1 positive + N negatives, as shipped)."""
        candidates = user.candidates[:n_candidates] if n_candidates else user.candidates
        return {
            "user_id": user.user_id,
            "history": [self.item(i) for i in user.history],
            "candidates": [self.item(i) for i in candidates],
            **options,
        }


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
