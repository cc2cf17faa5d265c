"""The catalogue files' shared rules: what the trainer trains on and ``r2rank-serve load`` loads must read alike.

``items.jsonl`` and ``interactions.jsonl`` (docs/data.md) reach the trainer (``trainer.data``) and the
service's bulk load (``service.bulk_load``); the ids and the order of a user's interactions must come out the
same in both, so the evidence the service states is keyed as the trainer counted it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path


def parse_timestamp(value: object) -> float:
    """Unix seconds, or an ISO 8601 date/time (``2018-03-04``, ``2018-03-04T10:00:00Z``); one without a zone is
    read as UTC (not the machine's local time: the same file gives the same order on every machine)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def item_order(item_ids: Iterable[str]) -> list[str]:
    """``item_ids`` in the catalogue's one fixed order: shorter ids first, then by text (so numeric ids run
    ``"2"`` before ``"10"``). What indexes items by position (the statistics' arrays, a sequence model's
    embedding rows) takes this order, so the same catalogue gives the same indexes in the trainer and the
    service."""
    return sorted(item_ids, key=lambda item: (len(item), item))


def oldest_first(events: Iterable[tuple[float, int, str]]) -> list[tuple[str, float]]:
    """A user's ``(timestamp, line number, item)`` events as ``(item, timestamp)``, oldest first; equal timestamps
    keep their order in the file."""
    return [(item, timestamp) for timestamp, _, item in sorted(events)]


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, object, None) per JSON object line, or (line number, None, why) for a line that is not one;
    blank lines are skipped."""
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"invalid JSON: {exc.msg}"
                continue
            if not isinstance(row, dict):
                yield lineno, None, "expected a JSON object"
                continue
            yield lineno, row, None
