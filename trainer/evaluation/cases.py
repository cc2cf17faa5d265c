"""The protocol: per user, the positive at a held-out position + N negatives, never an item of the user's own.

Two splits:
- ``selection``: the VALIDATION positions of the selection users (``data.selection_users``, never trained on
  by RL): where runs and checkpoints are compared and chosen;
- ``test``: the test positions of sampled users: the report on the model chosen, made once.
Negatives are random (seeded), the first N of a retriever's list (such as ``Games-6k.sasrec``), or the top N of a
sequence model after the history (``SequenceModelLists``: SASRec-hard negatives on any catalogue).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contract.sequence import SequenceRanker
from trainer.data import Catalogue, UserSplit, sample_negatives, selection_users
from trainer.seqrec import training_sequences

Split = Literal["test", "selection"]


def sequences_before(splits: Sequence[UserSplit], split: Split) -> list[list[str]]:
    """Each user's items before the split's scored targets (selection: validation positions; test: test ones)."""
    return training_sequences(splits, "valid" if split == "selection" else "test")


@dataclass(frozen=True)
class EvalCase:
    user_id: str
    history: list[str]
    candidates: list[str]  # the target first; shuffled only in what the model sees
    target: str


def read_retriever_lists(path: Path) -> dict[str, list[str]]:
    """``user_id<TAB>id id id ...`` (the data's .random/.bm25/.pop/.bpr/.sasrec files)."""
    lists = {}
    with path.open() as handle:
        for lineno, line in enumerate(handle, start=1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 2:
                raise ValueError(f"{path}:{lineno}: expected user_id<TAB>item ids")
            lists[cols[0]] = cols[1].split()
    return lists


class SequenceModelLists(Mapping[str, list[str]]):
    """A retriever's lists made by a sequence model: for each user, the ``count`` items ``ranker`` scores highest
    after the history of the split's position, none of the user's own. So any catalogue gets hard negatives
    (the items a SASRec would show instead of the real next one) without a retriever file; computed per user
    only when a case asks for it."""

    def __init__(self, ranker: SequenceRanker, splits: Sequence[UserSplit], split: Split, count: int) -> None:
        self.ranker, self.split, self.count = ranker, split, count
        self.users = {s.user_id: s for s in splits}

    def __getitem__(self, user_id: str) -> list[str]:
        user = self.users[user_id]
        history = user.valid_history if self.split == "selection" else user.test_history
        return self.ranker.top_items(history, self.count, {*user.train, user.valid_target, user.test_target})

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.users

    def __iter__(self) -> Iterator[str]:
        return iter(self.users)

    def __len__(self) -> int:
        return len(self.users)


def build_cases(
    splits: Sequence[UserSplit],
    catalogue: Catalogue,
    users: int,
    negatives: int,
    seed: int,
    retriever: Mapping[str, list[str]] | None = None,
    split: Split = "test",
    users_from: Sequence[UserSplit] | None = None,
) -> list[EvalCase]:
    """``users`` cases of 1 positive + ``negatives`` negatives: test positions of sampled users, or the
    validation positions of the selection users (``split="selection"``); ``users_from`` samples other users
    (a probe's wider pool of validation positions)."""
    rng = random.Random(seed)
    if users_from is None:
        users_from = selection_users(splits) if split == "selection" else splits
    pool = [s for s in users_from if retriever is None or s.user_id in retriever]
    items = sorted(catalogue.titles)
    cases = []
    for user in rng.sample(pool, min(users, len(pool))):
        history, target = (user.valid_history, user.valid_target) if split == "selection" else (
            user.test_history, user.test_target)  # fmt: skip
        exclude = {*user.train, user.valid_target, user.test_target}
        if retriever is not None:
            negs = [i for i in retriever[user.user_id] if i not in exclude][:negatives]
            if len(negs) < negatives:
                continue
        else:
            negs = sample_negatives(rng, items, exclude, negatives)
        cases.append(EvalCase(user.user_id, history, [target, *negs], target))
    return cases
