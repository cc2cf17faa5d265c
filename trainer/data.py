"""Reading interaction data and splitting it leave-one-out.

Two input formats reach the same in-memory shape (``Catalogue`` + per-user sequences, oldest first):
- the LLMRank/RecBole Video Games files (``Games-6k.item``, ``Games-6k.test.inter``), see the data's
  SOURCE.md: the full sequence of a user is ``test history + test target``;
- a generic format: ``items.jsonl`` (``{"item_id", "title", ...}``; short string fields such as ``brand`` or
  ``category`` are kept as attributes) and ``interactions.jsonl`` (``{"user_id", "item_id", "timestamp"}``,
  the timestamp in Unix seconds or ISO 8601), sorted by timestamp per user.

Split: the last item of each sequence is the test target, the second-to-last the validation target, the
rest is training. Nothing computed for training (statistics, tokenizer corpus) may look past the
training prefix.
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from contract.catalogue import item_order, jsonl_rows, oldest_first, parse_timestamp

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-videogames"
"""The Video Games data beside the project (``../shared/data/amazon-videogames``)."""


class DataError(ValueError):
    """Malformed input; the message names file, line and field."""


ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,19}")
MAX_ATTRIBUTE_CHARS = 64


@dataclass
class Catalogue:
    titles: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # item_id -> {name: value}, where given

    def title(self, item_id: str) -> str:
        return self.titles[item_id]

    def __len__(self) -> int:
        return len(self.titles)


@dataclass(frozen=True)
class UserSplit:
    """One user's leave-one-out split (item ids, oldest first)."""

    user_id: str
    train: list[str]
    valid_target: str
    test_target: str

    @property
    def valid_history(self) -> list[str]:
        return self.train

    @property
    def test_history(self) -> list[str]:
        return [*self.train, self.valid_target]


def _read_tsv(path: Path) -> Iterable[tuple[int, list[str]]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if line:
                yield lineno, line.split("\t")


def read_recbole_items(path: Path) -> Catalogue:
    """``item_id<TAB>title`` with a typed header line."""
    catalogue = Catalogue()
    for lineno, cols in _read_tsv(path):
        if lineno == 1 and cols[0].startswith("item_id"):
            continue
        if len(cols) < 2 or not cols[1].strip():
            raise DataError(f"{path}:{lineno}: expected item_id<TAB>title with a non-empty title")
        catalogue.titles[cols[0]] = cols[1].strip()
    if not catalogue.titles:
        raise DataError(f"{path}: no items")
    return catalogue


def read_recbole_sequences(path: Path, catalogue: Catalogue) -> dict[str, list[str]]:
    """Full sequences from ``*.test.inter``: ``user_id<TAB>history ids<TAB>target id``."""
    sequences: dict[str, list[str]] = {}
    for lineno, cols in _read_tsv(path):
        if lineno == 1 and cols[0].startswith("user_id"):
            continue
        if len(cols) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(cols)}")
        items = [*cols[1].split(), cols[2].strip()]
        unknown = [i for i in items if i not in catalogue.titles]
        if unknown:
            raise DataError(f"{path}:{lineno}: unknown item ids {unknown[:5]} (not in the item file)")
        sequences[cols[0]] = items
    return sequences


def read_jsonl_items(path: Path) -> Catalogue:
    catalogue = Catalogue()
    for lineno, row in _read_jsonl(path):
        for key in ("item_id", "title"):
            if key not in row or not str(row[key]).strip():
                raise DataError(f"{path}:{lineno}: field {key!r} missing or empty")
        item_id = str(row["item_id"])
        catalogue.titles[item_id] = str(row["title"]).strip()
        attributes = {name: value.strip() for name, value in row.items()
                      if name not in ("item_id", "title") and ATTRIBUTE_NAME.fullmatch(name) and isinstance(value, str)
                      and 0 < len(value.strip()) <= MAX_ATTRIBUTE_CHARS}  # fmt: skip
        if attributes:
            catalogue.attributes[item_id] = attributes
    return catalogue


def read_jsonl_interactions(path: Path, catalogue: Catalogue) -> dict[str, list[str]]:
    events: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for lineno, row in _read_jsonl(path):
        for key in ("user_id", "item_id", "timestamp"):
            if key not in row:
                raise DataError(f"{path}:{lineno}: field {key!r} missing")
        item_id = str(row["item_id"])
        if item_id not in catalogue.titles:
            raise DataError(f"{path}:{lineno}: field 'item_id': unknown item {item_id!r}")
        try:
            ts = parse_timestamp(row["timestamp"])
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}:{lineno}: field 'timestamp' is neither Unix seconds nor ISO 8601") from exc
        events[str(row["user_id"])].append((ts, lineno, item_id))
    return {user: [item for item, _ in oldest_first(evts)] for user, evts in events.items()}


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    for lineno, row, problem in jsonl_rows(path):
        if row is None:
            raise DataError(f"{path}:{lineno}: {problem}")
        yield lineno, row


def load_dataset(source: Path) -> tuple[Catalogue, dict[str, list[str]]]:
    """Detect the format of ``source`` (a directory) and read catalogue + full sequences."""
    source = Path(source)
    recbole_items = sorted(source.glob("*.item"))
    if recbole_items:
        stem = recbole_items[0].name[: -len(".item")]
        catalogue = read_recbole_items(recbole_items[0])
        return catalogue, read_recbole_sequences(source / f"{stem}.test.inter", catalogue)
    if (source / "items.jsonl").is_file():
        catalogue = read_jsonl_items(source / "items.jsonl")
        return catalogue, read_jsonl_interactions(source / "interactions.jsonl", catalogue)
    raise DataError(f"{source}: neither a RecBole dataset (*.item, *.test.inter) nor items.jsonl + interactions.jsonl")


def leave_one_out(sequences: dict[str, list[str]], min_train: int = 1) -> list[UserSplit]:
    """Split each user; users with fewer than ``min_train + 2`` items are skipped (counted by caller)."""
    splits = []
    for user_id, items in sequences.items():
        if len(items) < min_train + 2:
            continue
        splits.append(UserSplit(user_id, items[:-2], items[-2], items[-1]))
    return splits


def load_splits(source: Path) -> tuple[Catalogue, list[UserSplit]]:
    """Read a dataset and split every user leave-one-out. Refuses data where most users are too short to
    split (rather than silently training on the few that are not); a minority of short users is skipped with
    a warning."""
    catalogue, sequences = load_dataset(source)
    splits = leave_one_out(sequences)
    skipped = len(sequences) - len(splits)
    if not splits or skipped > len(sequences) / 2:
        raise DataError(f"{source}: {skipped} of {len(sequences)} users have fewer than 3 interactions "
                        "(leave-one-out needs train + validation + test items)")  # fmt: skip
    if skipped:
        logger.warning("%s: skipped %d of %d users with fewer than 3 interactions", source, skipped, len(sequences))
    return catalogue, splits


def selection_users(splits: Iterable[UserSplit], count: int = 1000) -> list[UserSplit]:
    """Users held apart to choose between runs and checkpoints at their VALIDATION position: RL never trains on
    them, and the final report (test positions) is not used to choose. Fixed by the data alone (a seeded sample
    of the sorted user ids), so every stage and command agrees on them. At most a fifth of the users, so a small
    catalogue still leaves RL users to train on."""
    ordered = sorted(splits, key=lambda s: s.user_id)
    return random.Random("selection").sample(ordered, min(count, len(ordered) // 5))


def training_titles(splits: Iterable[UserSplit], catalogue: Catalogue) -> list[str]:
    """Titles of items seen in training prefixes only: the tokenizer corpus (no target leaks)."""
    seen: dict[str, None] = {}
    for split in splits:
        for item in split.train:
            seen.setdefault(item, None)
    return [catalogue.title(item) for item in seen]


def sample_negatives(rng: random.Random, item_ids: list[str], exclude: set[str], count: int) -> list[str]:
    """``count`` distinct random items not in ``exclude`` (the user's history and target). Rejection sampling,
    the fast path on a large catalogue, is bounded; after that the draw is from the items that remain, and a
    catalogue with too few of them is an error, not an endless loop."""
    negatives: list[str] = []
    chosen: set[str] = set()
    for _ in range(8 * count + 64):
        if len(negatives) == count:
            return negatives
        item = item_ids[rng.randrange(len(item_ids))]
        if item in exclude or item in chosen:
            continue
        chosen.add(item)
        negatives.append(item)
    remaining = [item for item in item_ids if item not in exclude and item not in chosen]
    if len(remaining) < count - len(negatives):
        raise DataError(f"{count} negatives asked for, but only {len(negatives) + len(remaining)} catalogue items "
                        f"are outside the user's items: ask for fewer negatives")  # fmt: skip
    return negatives + rng.sample(remaining, count - len(negatives))


def negative_sampler(
    kind: str, splits: Iterable[UserSplit], catalogue: Catalogue, retriever: dict[str, list[str]] | None
):
    """A function (rng, user, exclude, count) -> negatives: ``random`` (uniform over the catalogue),
    ``popularity`` (proportional to training-prefix counts) or ``retriever`` (the user's list, in order)."""
    items = item_order(catalogue.titles)
    if kind == "random":
        return lambda rng, user, exclude, count: sample_negatives(rng, items, exclude, count)
    if kind == "popularity":
        counts: dict[str, int] = defaultdict(int)
        for split in splits:
            for item in split.train:
                counts[item] += 1
        pool = item_order(counts)
        weights = [counts[i] for i in pool]

        def popular(rng: random.Random, user: str, exclude: set[str], count: int) -> list[str]:
            chosen: list[str] = []
            for _ in range(8 * count + 64):  # bounded: a small pool falls back to uniform draws from the rest
                if len(chosen) == count:
                    return chosen
                item = rng.choices(pool, weights)[0]
                if item not in exclude and item not in chosen:
                    chosen.append(item)
            return chosen + sample_negatives(rng, items, exclude | set(chosen), count - len(chosen))

        return popular
    if kind == "retriever":
        if retriever is None:
            raise DataError("negatives 'retriever' needs a retriever file")
        return lambda rng, user, exclude, count: [i for i in retriever.get(user, []) if i not in exclude][:count]
    raise DataError(f"negatives must be random, popularity or retriever, got {kind!r}")


def candidate_sets(splits: Iterable[UserSplit], split_name: str, sampler, negatives: int, seed: int) -> Iterable[dict]:
    """1 positive + N negatives per user for ``train`` (history = train[:-1], target = train[-1]),
    ``valid`` or ``test``; negatives never come from the history or any of the user's targets."""
    rng = random.Random(f"{seed}-{split_name}")
    for split in splits:
        if split_name == "train":
            if len(split.train) < 2:
                continue
            history, target = split.train[:-1], split.train[-1]
        elif split_name == "valid":
            history, target = split.valid_history, split.valid_target
        else:
            history, target = split.test_history, split.test_target
        exclude = {*split.train, split.valid_target, split.test_target}
        negs = sampler(rng, split.user_id, exclude, negatives)
        if len(negs) < negatives:
            continue  # a retriever list too short for this user
        yield {"user_id": split.user_id, "history": history, "target": target, "candidates": [target, *negs]}
