"""``r2rank-serve load DIR``: a team's catalogue and histories into Redis, as the trainer read them.

The service must know the items and histories by the ids the model was trained on (its evidence statistics
and sequence model are keyed by them), so this reads the very files ``make train DATA=DIR`` read (docs/data.md,
``contract.catalogue``): ``items.jsonl`` into the catalogue, ``interactions.jsonl`` into one history per user,
oldest first. Each row passes the API's own validation (``CatalogItem``, ``HistoryEntryIn``); a row that fails
is refused with its line and the rest load.

Idempotent and resumable: items are upserted and each history is replaced whole, so a rerun (after an
interruption, or of a corrected file) leaves the same state; the popularity counts the deadline fallback
orders by are set, not added, for the items the file holds. Histories load concurrently (``concurrency``
users at a time, each one Redis script call).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from contract.catalogue import jsonl_rows, oldest_first, parse_timestamp
from service.protocol import CatalogItem, HistoryEntryIn
from service.store import RedisStore

ITEM_BATCH_ROWS = 5_000
MAX_USER_ID = 256  # as the API's path parameter
SHOWN_REFUSALS = 20


@dataclass
class LoadReport:
    items: int = 0
    users: int = 0
    events: int = 0
    refused: list[str] = field(default_factory=list)  # "file:line: why"
    seconds: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"{self.items:,} items, {self.users:,} user histories ({self.events:,} events) loaded"]
        for name, seconds in self.seconds.items():
            count = self.items if name == "items" else self.events
            lines.append(
                f"{name}: {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} {name if name == 'items' else 'events'}/s)"
            )
        if self.refused:
            lines.append(f"refused {len(self.refused):,} rows:")
            lines += [f"  {r}" for r in self.refused[:SHOWN_REFUSALS]]
            if len(self.refused) > SHOWN_REFUSALS:
                lines.append(f"  ... and {len(self.refused) - SHOWN_REFUSALS:,} more")
        return "\n".join(lines)


def _why(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"field {'.'.join(str(p) for p in first['loc'])!r}: {first['msg']}"


async def load_items(store: RedisStore, path: Path, report: LoadReport) -> set[str]:
    """Upsert every valid item; the ids loaded."""
    started, ids, batch = time.monotonic(), set(), []
    for lineno, row, problem in jsonl_rows(path):
        if row is None:
            report.refused.append(f"{path.name}:{lineno}: {problem}")
            continue
        try:
            item = CatalogItem.model_validate(row)
        except ValidationError as exc:
            report.refused.append(f"{path.name}:{lineno}: {_why(exc)}")
            continue
        batch.append(item.model_dump())
        ids.add(item.item_id)
        if len(batch) >= ITEM_BATCH_ROWS:
            await store.upsert_items(batch)
            batch = []
    if batch:
        await store.upsert_items(batch)
    report.items = len(ids)
    report.seconds["items"] = time.monotonic() - started
    return ids


def read_histories(path: Path, known: set[str] | None, report: LoadReport) -> dict[str, list[tuple[str, float]]]:
    """Each user's (item, timestamp) pairs, in the order ``trainer.data`` reads them (``oldest_first``)."""
    events: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for lineno, row, problem in jsonl_rows(path):
        where = f"{path.name}:{lineno}"
        if row is None:
            report.refused.append(f"{where}: {problem}")
            continue
        user = str(row.get("user_id", "")).strip()
        if not 0 < len(user) <= MAX_USER_ID:
            report.refused.append(f"{where}: field 'user_id' missing, empty or over {MAX_USER_ID} characters")
            continue
        try:
            timestamp = parse_timestamp(row["timestamp"]) if "timestamp" in row else None
            entry = HistoryEntryIn.model_validate({"item_id": row.get("item_id"), "timestamp": timestamp})
        except (TypeError, ValueError) as exc:
            why = _why(exc) if isinstance(exc, ValidationError) else "field 'timestamp': not Unix seconds nor ISO 8601"
            report.refused.append(f"{where}: {why}")
            continue
        if entry.timestamp is None:
            report.refused.append(f"{where}: field 'timestamp' missing")
            continue
        if known is not None and entry.item_id not in known:
            report.refused.append(f"{where}: field 'item_id': {entry.item_id!r} is not in the catalogue file")
            continue
        events[user].append((entry.timestamp, lineno, entry.item_id))
    return {user: oldest_first(rows) for user, rows in events.items()}


async def load_histories(
    store: RedisStore,
    histories: dict[str, list[tuple[str, float]]],
    report: LoadReport,
    concurrency: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Replace every user's history (``concurrency`` at a time), then set the items' popularity counts."""
    started = time.monotonic()
    queue = iter(list(histories.items()))
    done = 0
    popularity: Counter = Counter()

    async def worker() -> None:
        nonlocal done
        for user, entries in queue:
            await store.replace_history(user, entries, count_popularity=False)
            popularity.update(item for item, _ in entries[-store.history_max :])
            done += 1
            if progress is not None:
                progress(done, len(histories))

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    await store.set_popularity(popularity)
    report.users = len(histories)
    report.events = sum(len(entries) for entries in histories.values())
    report.seconds["histories"] = time.monotonic() - started


def progress_printer(every_s: float = 2.0) -> Callable[[int, int], None]:
    """A progress line on stderr at most every ``every_s`` seconds (and at the end)."""
    started = last = time.monotonic()

    def show(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < every_s and done < total:
            return
        last = now
        rate = done / max(now - started, 1e-9)
        eta = (total - done) / rate if rate > 0 else 0.0
        print(f"histories {done:,}/{total:,} users · {rate:,.0f} users/s · ETA {eta:.0f} s", file=sys.stderr)

    return show


async def load_directory(store: RedisStore, directory: Path, concurrency: int = 32, quiet: bool = False) -> LoadReport:
    """``items.jsonl`` then ``interactions.jsonl`` from ``directory`` (either may be absent, not both)."""
    directory = Path(directory)
    items, interactions = directory / "items.jsonl", directory / "interactions.jsonl"
    if not items.is_file() and not interactions.is_file():
        raise FileNotFoundError(f"{directory}: neither items.jsonl nor interactions.jsonl (docs/data.md)")
    report = LoadReport()
    known = await load_items(store, items, report) if items.is_file() else None
    if interactions.is_file():
        histories = read_histories(interactions, known, report)
        await load_histories(store, histories, report, concurrency, None if quiet else progress_printer())
    return report
