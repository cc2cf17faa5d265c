"""How much a candidate's title shares with the history's titles: words the prompt shows, read off its text.

The evidence line states a shared title word only where it is rare (in at most 1% of titles), so a platform
("xbox 360", "nintendo ds"), a series' common word or an edition is never on it, though the titles in the prompt
show them. ``TitleOverlap`` measures that overlap, each word weighed by its inverse document frequency over the
catalogue's titles (static metadata: no interaction is counted, so nothing of any example's future). The
built-in teacher can weigh it in its verdict (``TeacherConfig.title_overlap``): an LLM that learns the verdict
must then read the titles themselves, which a logistic of the evidence line cannot.

``TitleWordPrior`` reads an item's era off its title words (a platform, a year): the data carry no timestamps, and
a word common among the sequences' last items marks a late item, which all-time popularity does not.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from contract.evidence import title_words

TITLE_OVERLAP_FEATURES = ("title overlap #1", "title overlap max", "title overlap recency-weighted")
TITLE_WORD_FEATURES = ("title word prior mean", "title word prior max", "title word era mean")


class TitleOverlap:
    """IDF-weighted cosine of the candidate's title words with each history title's: with the latest item (#1),
    at most over the history, and recency-weighted (1/k for item #k) over it. Titles are histories' order,
    oldest first, as the prompt lists them."""

    names = TITLE_OVERLAP_FEATURES

    def __init__(self, titles: Iterable[str]) -> None:
        documents = [title_words(title) for title in titles]
        frequency = Counter(word for words in documents for word in words)
        self.idf = {word: math.log(len(documents) / n) for word, n in frequency.items()}
        self._unseen_idf = math.log(max(len(documents), 1))  # a word no catalogue title has: as rare as can be

    def _vector(self, title: str) -> tuple[set[str], float]:
        words = title_words(title)
        return words, math.sqrt(sum(self._weight(w) ** 2 for w in words)) or 1.0

    def _weight(self, word: str) -> float:
        return self.idf.get(word, self._unseen_idf)

    def features(self, history: Sequence[str], candidate: str) -> list[float]:
        if not history:
            return [0.0] * len(TITLE_OVERLAP_FEATURES)
        words, norm = self._vector(candidate)
        similar = []
        for title in reversed(history):  # #1 first
            theirs, their_norm = self._vector(title)
            similar.append(sum(self._weight(w) ** 2 for w in words & theirs) / (norm * their_norm))
        weights = [1 / k for k in range(1, len(similar) + 1)]
        weighted = sum(w * v for w, v in zip(weights, similar, strict=True)) / sum(weights)
        return [similar[0], max(similar), weighted]


class TitleWordPrior:
    """Each title word's log-ratio of its share among the words of the sequences' ``last`` items to its share among
    catalogue titles' words (which popular series and platforms top), and to its share among every item the
    sequences hold (which only an era's words top), add-one smoothed: the candidate's mean and most positive word
    of the first, the mean of the second. Each case leaves its own user's sequence out."""

    names = TITLE_WORD_FEATURES

    def __init__(self, sequences: Sequence[Sequence[str]], titles: Mapping[str, str], last: int = 3) -> None:
        self.last = last
        self.words = {item: title_words(title) for item, title in titles.items()}
        self.listed = Counter(w for words in self.words.values() for w in words)
        self.recent = Counter(w for s in sequences for item in s[-last:] for w in self.words.get(item, ()))
        self.held = Counter(w for s in sequences for item in s for w in self.words.get(item, ()))
        self.vocabulary = len(self.listed) + 1
        self.listed_total = self.listed.total()
        self.recent_total = self.recent.total()
        self.held_total = self.held.total()

    def __call__(self, counted: Sequence[str], history: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        own_recent = Counter(w for item in counted[-self.last :] for w in self.words.get(item, ()))
        own_held = Counter(w for item in counted for w in self.words.get(item, ()))
        return [self._features(self.words.get(c, set()), own_recent, own_held) for c in candidates]

    def title_features(self, title: str) -> list[float]:
        """The features of a title, counting every sequence: where they all end before the pair's target."""
        return self._features(title_words(title), Counter(), Counter())

    def _features(self, words: set[str], own_recent: Counter[str], own_held: Counter[str]) -> list[float]:
        if not words:
            return [0.0] * len(TITLE_WORD_FEATURES)
        recent_total = self.recent_total - own_recent.total() + self.vocabulary
        held_total = self.held_total - own_held.total() + self.vocabulary
        listed_total = self.listed_total + self.vocabulary
        prior, era = [], []
        for word in words:
            share = (self.recent[word] - own_recent[word] + 1) / recent_total
            prior.append(math.log(share / ((self.listed[word] + 1) / listed_total)))
            era.append(math.log(share / ((self.held[word] - own_held[word] + 1) / held_total)))
        return [sum(prior) / len(prior), max(prior), sum(era) / len(era)]
