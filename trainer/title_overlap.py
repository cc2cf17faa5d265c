"""How much a candidate's title shares with the history's titles: words the prompt shows, read off its text.

The evidence line states a shared title word only where it is rare (in at most 1% of titles), so a platform
("xbox 360", "nintendo ds"), a series' common word or an edition is never on it, though the titles in the prompt
show them. ``TitleOverlap`` measures that overlap, each word weighed by its inverse document frequency over the
catalogue's titles (static metadata: no interaction is counted, so nothing of any example's future). The
built-in teacher can weigh it in its verdict (``TeacherConfig.title_overlap``): an LLM that learns the verdict
must then read the titles themselves, which a logistic of the evidence line cannot.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from contract.evidence import title_words

TITLE_OVERLAP_FEATURES = ("title overlap #1", "title overlap max", "title overlap recency-weighted")


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
