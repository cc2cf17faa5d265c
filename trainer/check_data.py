"""``r2rank-train check-data DIR``: every problem of a generic catalogue before any training, with file and line.

Loading (``trainer.data``) stops at the first bad line; this reads both files whole and lists every problem
(errors: what makes training refuse; warnings: what it skips or reads in a way the team may not expect), then
says what the recipe will get from the data: users that split leave-one-out, and the users each stage draws.
The rules are docs/data.md's.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from contract.catalogue import jsonl_rows, parse_timestamp
from trainer.data import (
    ATTRIBUTE_NAME,
    MAX_ATTRIBUTE_CHARS,
    DataError,
    leave_one_out,
    selection_users,
)

MIN_INTERACTIONS = 3  # leave-one-out: at least one training item, the validation item, the test item
LONG_TITLE_CHARS = 200  # the prompt keeps 32 tokens of a title: longer ones are cut
SHOWN_PER_KIND = 20  # problems of one kind listed one by one; the rest are counted


@dataclass
class Problem:
    severity: str  # "error" (training refuses) or "warning" (skipped, cut, or read some way to know about)
    kind: str
    where: str  # file:line, or the file
    message: str


@dataclass
class DataReport:
    """What ``check_dataset`` found and what the recipe will get."""

    problems: list[Problem] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def add(self, severity: str, kind: str, where: str, message: str) -> None:
        self.problems.append(Problem(severity, kind, where, message))

    def render(self) -> str:
        """Problems grouped by kind (the first ``SHOWN_PER_KIND`` of each listed), then the figures."""
        lines = []
        by_kind: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for problem in self.problems:
            by_kind[(problem.severity, problem.kind)].append(problem)
        for (severity, kind), found in sorted(by_kind.items()):
            lines.append(f"{severity.upper()} {kind}: {len(found)}")
            lines += [f"  {p.where}: {p.message}" for p in found[:SHOWN_PER_KIND]]
            if len(found) > SHOWN_PER_KIND:
                lines.append(f"  ... and {len(found) - SHOWN_PER_KIND} more")
        lines += [f"{name}: {value:,}" for name, value in self.figures.items()]
        verdict = f"{len(self.errors)} errors" if self.errors else "ready to train"
        lines.append(f"{verdict} ({len(self.problems) - len(self.errors)} warnings)")
        return "\n".join(lines)


def _rows(path: Path, report: DataReport):
    """(line number, object) for every JSON object line; bad lines become problems."""
    for lineno, row, problem in jsonl_rows(path):
        if row is None:
            kind = "invalid JSON" if problem.startswith("invalid JSON") else "not a JSON object"
            report.add("error", kind, f"{path.name}:{lineno}", problem.removeprefix("invalid JSON: "))
            continue
        yield lineno, row


def _check_items(path: Path, report: DataReport) -> set[str]:
    items: set[str] = set()
    attribute_names: Counter = Counter()
    for lineno, row in _rows(path, report):
        where = f"{path.name}:{lineno}"
        missing = [k for k in ("item_id", "title") if k not in row or not str(row[k]).strip()]
        if missing:
            report.add("error", "missing field", where, f"field {missing[0]!r} missing or empty")
            continue
        item_id, title = str(row["item_id"]), str(row["title"]).strip()
        if item_id in items:
            report.add("warning", "duplicate item id", where, f"item {item_id!r} again: the last line wins")
        items.add(item_id)
        if len(title) > LONG_TITLE_CHARS:
            report.add("warning", "long title", where, f"{len(title)} characters: the prompt keeps its first 32 tokens")
        for name, value in row.items():
            if name in ("item_id", "title"):
                continue
            if (
                isinstance(value, str)
                and ATTRIBUTE_NAME.fullmatch(name)
                and 0 < len(value.strip()) <= MAX_ATTRIBUTE_CHARS
            ):
                attribute_names[name] += 1
    report.figures["items"] = len(items)
    for name, count in sorted(attribute_names.items()):
        report.figures[f"items with attribute {name!r}"] = count
    return items


def _check_interactions(path: Path, items: set[str], report: DataReport) -> dict[str, list[str]]:
    events: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    seen: set[tuple[str, str, float]] = set()
    for lineno, row in _rows(path, report):
        where = f"{path.name}:{lineno}"
        missing = [k for k in ("user_id", "item_id", "timestamp") if k not in row]
        if missing:
            report.add("error", "missing field", where, f"field {missing[0]!r} missing")
            continue
        user, item = str(row["user_id"]), str(row["item_id"])
        if item not in items:
            report.add("error", "unknown item", where, f"field 'item_id': {item!r} is not in items.jsonl")
            continue
        try:
            ts = parse_timestamp(row["timestamp"])
        except (TypeError, ValueError):
            report.add("error", "bad timestamp", where, "field 'timestamp' is neither Unix seconds nor ISO 8601")
            continue
        if isinstance(row["timestamp"], str) and _naive_iso(row["timestamp"]):
            report.add("warning", "timestamp without a zone", where, "read as UTC")
        if (user, item, ts) in seen:
            report.add("warning", "duplicate event", where, f"user {user!r} item {item!r} at the same time again")
        seen.add((user, item, ts))
        events[user].append((ts, lineno, item))
    sequences = {user: [item for _, _, item in sorted(evts)] for user, evts in events.items()}
    report.figures["users"] = len(sequences)
    report.figures["interactions"] = sum(len(s) for s in sequences.values())
    return sequences


def _naive_iso(text: str) -> bool:
    """An ISO date-time with no zone (``2018-03-04T10:00:00``): read as UTC, which may not be what was meant."""
    text = text.strip()
    try:
        float(text)
        return False
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return False
    return parsed.tzinfo is None and len(text) > 10


def check_dataset(source: Path) -> DataReport:
    """Every problem of ``source`` (``items.jsonl`` + ``interactions.jsonl``), and what the recipe will get."""
    from trainer.config import RLConfig, SFTConfig, TeacherConfig
    from trainer.sft import sft_users
    from trainer.teacher import calibration_pool

    report = DataReport()
    source = Path(source)
    for name in ("items.jsonl", "interactions.jsonl"):
        if not (source / name).is_file():
            report.add("error", "missing file", str(source / name), "not found (docs/data.md: the format)")
    if report.errors:
        return report
    items = _check_items(source / "items.jsonl", report)
    sequences = _check_interactions(source / "interactions.jsonl", items, report)
    splits = leave_one_out(sequences)
    short = len(sequences) - len(splits)
    if short:
        severity = "error" if short > len(sequences) / 2 or not splits else "warning"
        report.add(severity, "too few interactions", "interactions.jsonl",
                   f"{short} of {len(sequences)} users have fewer than {MIN_INTERACTIONS} "
                   + ("(more than half: training refuses)" if severity == "error" else "(skipped)"))  # fmt: skip
    report.figures["users that split leave-one-out"] = len(splits)
    if not splits:
        return report
    selection = selection_users(splits)
    report.figures["selection users (choose checkpoints; never trained on)"] = len(selection)
    try:
        sft = sft_users(splits, SFTConfig(), reserve=TeacherConfig().calibration_users)
        report.figures["SFT users (recipe)"] = len(sft)
        pool = calibration_pool(splits, exclude={s.user_id for s in sft})
        report.figures["teacher calibration users (recipe)"] = min(TeacherConfig().calibration_users, len(pool))
    except DataError as exc:
        report.add("error", "too small for SFT", "interactions.jsonl", str(exc))
    report.figures["RL users (recipe)"] = min(RLConfig().users, len(splits) - len(selection))
    return report
