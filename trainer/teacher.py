"""The built-in teacher: short, evidence-based rationales from training-split statistics only.

For a (history, candidate) pair it states what relates them: shared title words (a franchise or series),
how often the candidate followed the user's recent items in other users' training sequences
(co-occurrence), and how popular it is. The SFT stage appends the answer (yes for the held-out positive,
no for a sampled negative); the rationale itself never looks at the label, so what the model learns to
write is evidence it could compute from the prompt and what it memorised in training.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from trainer.data import Catalogue, UserSplit

STOPWORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "of",
        "and",
        "or",
        "for",
        "to",
        "in",
        "on",
        "with",
        "edition",
        "game",
        "games",
        "version",
        "pack",
        "bundle",
        "set",
        "new",
        "xbox",
        "playstation",
        "ps2",
        "ps3",
        "ps4",
        "ps5",
        "nintendo",
        "switch",
        "wii",
        "ds",
        "3ds",
        "pc",
        "mac",
        "one",
        "360",
        "gamecube",
        "gameboy",
        "advance",
        "vita",
        "psp",
        "kit",
        "case",
        "controller",
        "digital",
        "code",
        "download",
        "standard",
        "collectors",
        "collector's",
        "deluxe",
    ]
)
_WORD = re.compile(r"[a-z0-9']+")
RECENT = 3  # co-occurrence is counted with the user's last few items
POPULARITY_PHRASES = ("a best seller", "popular", "niche", "rarely bought")  # top 1%, top 10%, the rest, unseen


def title_words(title: str) -> set[str]:
    return {w for w in _WORD.findall(title.lower()) if len(w) > 2 and w not in STOPWORDS and not w.isdigit()}


@dataclass
class TrainingStats:
    """Counts from training prefixes only (never a validation or test target)."""

    popularity: Counter = field(default_factory=Counter)
    follows: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    @classmethod
    def from_splits(cls, splits: Iterable[UserSplit], window: int = RECENT) -> TrainingStats:
        stats = cls()
        for split in splits:
            sequence = split.train
            stats.popularity.update(sequence)
            for i, item in enumerate(sequence):
                for previous in sequence[max(0, i - window) : i]:
                    stats.follows[previous][item] += 1
        return stats

    def popularity_rank(self) -> dict[str, int]:
        return {item: rank for rank, (item, _) in enumerate(self.popularity.most_common())}

    def cooccurrence(self, history: Sequence[str], candidate: str) -> tuple[int, str | None]:
        """Times ``candidate`` followed one of the last items of ``history``; and the strongest such item."""
        best, total = None, 0
        for item in history[-RECENT:]:
            count = self.follows.get(item, Counter()).get(candidate, 0)
            total += count
            if count and (best is None or count > self.follows[best][candidate]):
                best = item
        return total, best


class Teacher(Protocol):
    """What SFT needs from a teacher: one label-blind rationale per (history item ids, candidate id) pair."""

    def rationales(self, pairs: Sequence[tuple[Sequence[str], str]]) -> list[str]: ...


class BuiltinTeacher:
    def __init__(self, catalogue: Catalogue, stats: TrainingStats) -> None:
        self.catalogue = catalogue
        self.stats = stats
        self._rank = stats.popularity_rank()
        self._n = max(1, len(self._rank))

    def _popularity_phrase(self, item: str) -> str:
        rank = self._rank.get(item)
        if rank is None:
            return POPULARITY_PHRASES[3]
        share = rank / self._n
        if share < 0.01:
            return POPULARITY_PHRASES[0]
        if share < 0.1:
            return POPULARITY_PHRASES[1]
        return POPULARITY_PHRASES[2]

    def rationale(self, history: Sequence[str], candidate: str, flip_link: bool = False) -> str:
        """One line, at most a few clauses, each a piece of evidence. ``flip_link`` writes the co-occurrence
        clause wrong (a link dropped, or one claimed with the most recent item): see ``misrecalled``."""
        title = self.catalogue.title(candidate)
        words = title_words(title)
        clauses = []
        for item in reversed(history):
            shared = sorted(words & title_words(self.catalogue.title(item)))
            if shared:
                clauses.append(f"shares '{shared[0]}' with {self.catalogue.title(item)}")
                break
        count, source = self.stats.cooccurrence(history, candidate)
        linked = bool(count and source is not None)
        if flip_link and history:
            linked, source = not linked, history[-1]
        if linked and source is not None:
            clauses.append(f"often bought after {self.catalogue.title(source)}")
        elif history:
            clauses.append("no link to recent items")
        clauses.append(self._popularity_phrase(candidate))
        text = "; ".join(clauses)
        return text[0].upper() + text[1:] + "."

    def rationales(self, pairs: Sequence[tuple[Sequence[str], str]]) -> list[str]:
        return [self.rationale(history, candidate) for history, candidate in pairs]

    def misrecalled(
        self, history: Sequence[str], candidate: str, drop_link: float, add_link: float, rng: random.Random
    ) -> str | None:
        """The rationale with its co-occurrence clause recalled wrong, or None (kept right this time).

        A small model cannot recall every co-occurrence the teacher counted: its served rationales miss
        links on positives and, more rarely, claim links that are not there (``r2rank-train diagnose``).
        SFT shows the answer such rationales (probability ``drop_link`` for a true link, ``add_link`` for
        none), label-blind, so the answer learns how far its own rationale can be trusted. One draw per
        pair whatever the rates, so the rest of the run's sampling does not depend on them."""
        if not history:
            return None
        draw = rng.random()
        linked = self.stats.cooccurrence(history, candidate)[0] > 0
        if draw < (drop_link if linked else add_link):
            return self.rationale(history, candidate, flip_link=True)
        return None


def clause_kinds(rationale: str) -> dict[str, str]:
    """What a rationale in the built-in teacher's style asserts, per kind of evidence, so a model's rationale
    can be compared with the teacher's clause by clause (``trainer.diagnose``)."""
    clauses = [c.strip().lower() for c in rationale.rstrip(".").split(";")]
    shared = next((c for c in clauses if c.startswith("shares ")), None)
    if any(c.startswith("often bought after") for c in clauses):
        link = "linked"
    elif "no link to recent items" in clauses:
        link = "no link"
    else:
        link = "unstated"
    popularity = next((p for p in POPULARITY_PHRASES if p in clauses), "unstated")
    return {"shared title word": "yes" if shared else "no", "co-occurrence": link, "popularity": popularity}
