"""Signals beyond the evidence line, for the fusion probe (``trainer.evaluation.fusion --signals``).

The evidence line is the ceiling of what the LLM and its teacher's logistic rank with (a nonlinear fusion of it
ranks no better). Before a signal becomes an evidence field (a prompt format, a retrained recipe), the probe
measures whether a logistic that also weighs it ranks better on the selection users. Each signal here gives a few
numbers per (history, candidate), computed once per history for all its candidates:

- ``SequenceConfidence``: the sequence model's log-probability of the candidate (softmax over the catalogue
  outside the history) and its gap to the top item's: how sure the SASRec is, which its rank alone does not say.
- ``CoPurchase``: whole-history co-occurrence (item-kNN): how many users had both a history item and the
  candidate anywhere in their sequences, summed and cosine-normalised; the evidence's links count only moves
  within a few steps.
- ``EASE``: Steck's linear item-item autoencoder over whole sequences, a strong item-based collaborative model:
  its score of the candidate from the history's items, summed and at most.
- ``TitleOverlap``: the words the candidate's title shares with the history's titles, common words included
  (a platform such as "playstation 2"; the evidence states only a rare shared word), IDF-weighted: what an LLM
  could read off the titles in its prompt that the evidence's features do not hold.
- ``ItemRecency``: how often the item is among the last few items of a training sequence, and that share of its
  occurrences: a proxy for the item's era, which the data's lack of timestamps hides and all-time popularity
  does not say (a new game is rare over all time and common at the sequences' ends).
- ``TitleWordPrior`` (``trainer.title_overlap``, which the teacher can weigh too): the same era read off the
  candidate's title words (a platform, a year, an edition): each word's log-ratio of its share among the
  sequences' last items to its share among catalogue titles and among every item the sequences hold. Unlike the
  item's own counts it reaches items the sequences seldom hold, and a reader of the title can learn it.
- ``TitleLikelihood``: the pre-trained LM's log-probability of the candidate's title as the history's next line:
  what the LLM itself learned of which titles follow which, the one signal the logistic cannot read.

``counted`` is the user's sequence as the statistics counted it; where it holds items beyond the history (a
calibration row's positive, counted in the training prefix), they are left out, as ``LeaveOut`` does for links.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from contract.checkpoint import open_checkpoint
from contract.evidence import Item
from contract.sequence import SequenceRanker
from trainer.data import Catalogue
from trainer.title_overlap import TITLE_OVERLAP_FEATURES
from trainer.title_overlap import TitleOverlap as TitleOverlapOfTitles


class Signal(Protocol):
    """A few numbers per candidate of one history (``names`` says which)."""

    names: tuple[str, ...]

    def __call__(
        self, counted: Sequence[str], history: Sequence[str], candidates: Sequence[str]
    ) -> list[list[float]]: ...


def _distinct_item_rows(sequences: Sequence[Sequence[str]]) -> tuple[dict[str, int], list[np.ndarray]]:
    """An index of the items in ``sequences`` and each sequence's distinct items as sorted indices (a user's row)."""
    index: dict[str, int] = {}
    rows = [np.array(sorted({index.setdefault(item, len(index)) for item in s}), dtype=np.int64) for s in sequences]
    return index, rows


class SequenceConfidence:
    """log P(candidate) under the sequence model, and log P(candidate) − log P(its top item); 0 where unknown (the
    evidence's rank-known feature marks those)."""

    names = ("sasrec log-probability", "sasrec gap to top")

    def __init__(self, ranker: SequenceRanker) -> None:
        self.ranker = ranker

    def __call__(self, counted: Sequence[str], history: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        logits = self.ranker.logits(history)
        if logits is None:
            return [[0.0, 0.0] for _ in candidates]
        masked = self.ranker._outside(logits, history)  # noqa: SLF001 - the same items a rank counts
        top = float(masked.max())
        log_norm = top + math.log(float(np.exp(masked[np.isfinite(masked)] - top).sum()))
        out = []
        for candidate in candidates:
            column = self.ranker.index.get(candidate)
            value = float(logits[column]) if column is not None else None
            out.append([value - log_norm, value - top] if value is not None else [0.0, 0.0])
        return out


class CoPurchase:
    """Item-kNN over whole sequences: pair counts of distinct items per user, from ``sequences`` (the statistics'
    horizon), kept as sorted pair keys and counts. ``keep``: only these of its numbers (by name), to measure
    which one carries the signal before one is stated in a prompt."""

    FEATURES = ("co-purchase log count", "co-purchase cosine sum", "co-purchase cosine max")

    def __init__(self, sequences: Sequence[Sequence[str]], keep: Sequence[str] | None = None) -> None:
        self.names = tuple(keep or self.FEATURES)
        self._columns = [self.FEATURES.index(name) for name in self.names]
        self.index, rows = _distinct_item_rows(sequences)
        keys = []
        for ids in rows:  # each pair of a user's distinct items, once
            first, second = np.triu_indices(len(ids), k=1)
            keys.append(ids[first] * (1 << 32) + ids[second])
        self.keys, self.counts = np.unique(
            np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64), return_counts=True
        )
        self.users = np.bincount(
            np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64), minlength=len(self.index)
        ).astype(np.float64)

    def _pair_counts(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        keys = np.minimum(a, b) * (1 << 32) + np.maximum(a, b)
        at = np.searchsorted(self.keys, keys).clip(max=max(len(self.keys) - 1, 0))
        found = (self.keys[at] == keys) if len(self.keys) else np.zeros(len(keys), dtype=bool)
        return np.where(found, self.counts[at] if len(self.keys) else 0, 0).astype(np.float64)

    def __call__(self, counted: Sequence[str], history: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        seen = np.array(sorted({self.index[i] for i in history if i in self.index}), dtype=np.int64)
        extra = set(counted) - set(history)  # counted for this user, yet after the history: leave it out
        out = []
        for candidate in candidates:
            column = self.index.get(candidate)
            if column is None or len(seen) == 0:
                out.append([0.0] * len(self._columns))
                continue
            pairs = self._pair_counts(seen, np.full(len(seen), column, dtype=np.int64))
            users = self.users[column]
            if candidate in extra:
                pairs, users = pairs - 1.0, users - 1.0
            cosine = pairs / np.sqrt(np.maximum(users, 1.0) * np.maximum(self.users[seen], 1.0))
            values = [math.log1p(float(pairs.sum())), float(cosine.sum()), float(cosine.max())]
            out.append([values[c] for c in self._columns])
        return out


class EASE:
    """EASE (Steck 2019): item-item weights ``B = I - P / diag(P)``, ``P = (X'X + l2 I)^-1``, ``X`` the users x items
    matrix of ``sequences`` (distinct items per user). Each case is scored without its own user's row: taken out of
    ``P`` by Sherman-Morrison, so a calibration row's positive (counted in its training prefix) is never seen, and
    every case, calibration or validation, is scored alike."""

    names = ("ease score", "ease score max")  # sign(s) log(1 + |s|) of l2 * B, summed and at most over the history
    DEFAULT_L2 = 200.0

    def __init__(self, sequences: Sequence[Sequence[str]], l2: float = DEFAULT_L2) -> None:
        self.l2 = l2
        self.index, rows = _distinct_item_rows(sequences)
        n = len(self.index)
        pairs = np.concatenate([(ids[:, None] * n + ids[None, :]).ravel() for ids in rows])  # X'X's entries
        gram = np.bincount(pairs, minlength=n * n).astype(np.float32).reshape(n, n)
        gram[np.diag_indices(n)] += l2
        self.precision = np.linalg.inv(gram)
        self.diagonal = np.diag(self.precision).copy()

    def __call__(self, counted: Sequence[str], history: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        seen = np.array(sorted({self.index[i] for i in history if i in self.index}), dtype=np.int64)
        known = [c for c in candidates if c in self.index]
        if len(seen) == 0 or not known:
            return [[0.0, 0.0] for _ in candidates]
        columns = np.array([self.index[c] for c in known], dtype=np.int64)
        own = np.array(sorted({self.index[i] for i in counted if i in self.index}), dtype=np.int64)
        block = self.precision[np.ix_(seen, columns)].astype(np.float64)
        diagonal = self.diagonal[columns].astype(np.float64)
        if len(own):  # (A - x x')^-1 = P + P x x' P / (1 - x' P x): the user's own row out
            px = self.precision[:, own].sum(axis=1, dtype=np.float64)
            denominator = 1.0 - px[own].sum()
            block += np.outer(px[seen], px[columns]) / denominator
            diagonal += px[columns] ** 2 / denominator
        weights = -block / diagonal[None, :]
        weights[seen[:, None] == columns[None, :]] = 0.0  # B's diagonal is zero
        weights *= self.l2  # B ~ co-counts / l2 where they are small: back to count units, then log-compressed
        scores = {c: (_signed_log1p(w.sum()), _signed_log1p(w.max())) for c, w in zip(known, weights.T, strict=True)}
        return [list(scores.get(c, (0.0, 0.0))) for c in candidates]


class TitleOverlap:
    """``trainer.title_overlap.TitleOverlap`` of the candidate's title with the history's titles."""

    names = TITLE_OVERLAP_FEATURES

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.overlap = TitleOverlapOfTitles(catalogue.titles.values())

    def __call__(self, counted: Sequence[str], history: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        titles = [self.catalogue.title(i) for i in history]
        return [self.overlap.features(titles, self.catalogue.title(c)) for c in candidates]


class ItemRecency:
    """Per item: how many training sequences hold it among their ``last`` items, and that count's smoothed log-share
    of all its occurrences. Each case leaves its own user's sequence (``counted``) out, so a calibration row's
    positive, the last item of its training prefix, does not count for itself."""

    names = ("recent log count", "recent log share")

    def __init__(self, sequences: Sequence[Sequence[str]], last: int = 3) -> None:
        self.last = last
        self.recent = Counter(item for s in sequences for item in s[-last:])
        self.total = Counter(item for s in sequences for item in s)

    def __call__(self, counted: Sequence[str], history: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        own_recent, own_total = Counter(counted[-self.last :]), Counter(counted)
        out = []
        for candidate in candidates:
            recent = self.recent[candidate] - own_recent[candidate]
            total = self.total[candidate] - own_total[candidate]
            out.append([math.log1p(recent), math.log((recent + 0.5) / (total + 2.0))])
        return out


def _signed_log1p(value: float) -> float:
    return math.copysign(math.log1p(abs(float(value))), value)


class TitleLikelihood:
    """The LM's log-probability of ``#1 <candidate title>`` ending the history block, summed and per token."""

    names = ("title log-likelihood", "title log-likelihood per token")

    def __init__(self, model_dir: Path, catalogue: Catalogue) -> None:
        from trainer.attention import load_causal_lm

        self.checkpoint = open_checkpoint(model_dir)
        self.model = load_causal_lm(model_dir).eval()
        self.catalogue = catalogue
        self.pad_id = self.checkpoint.encoder.pad_token_id

    def _line(self, history: Sequence[str], candidate: str) -> tuple[list[int], int]:
        """The history block with the candidate as its latest line, and where that line's title starts."""
        items = [Item(i, self.catalogue.title(i)) for i in (*history, candidate)]
        text = self.checkpoint.prompts.history_prefix(items).text
        head = text[: text.rindex("\n#1") + len("\n#1")]
        ids, head_ids = self.checkpoint.encoder.encode(text), self.checkpoint.encoder.encode(head)
        if ids[: len(head_ids)] != head_ids:  # a merge across the cut: score from the line's start instead
            head_ids = self.checkpoint.encoder.encode(text[: text.rindex("\n#1") + 1])
        return ids, len(head_ids)

    @torch.no_grad()
    def __call__(self, counted: Sequence[str], history: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        lines = [self._line(history, c) for c in candidates]
        width = max(len(ids) for ids, _ in lines)
        batch = torch.full((len(lines), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(lines), width), dtype=torch.long)
        for row, (ids, _) in enumerate(lines):
            batch[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        log_probs = torch.log_softmax(self.model(input_ids=batch, attention_mask=mask).logits.float(), dim=-1)
        out = []
        for row, (ids, start) in enumerate(lines):
            targets = torch.tensor(ids[start:])
            picked = log_probs[row, start - 1 : len(ids) - 1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            out.append([float(picked.sum()), float(picked.mean())])
        return out
