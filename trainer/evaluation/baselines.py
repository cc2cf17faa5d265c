"""The rankers every report shows beside the model(s), each scoring a batch of cases.

Counts come from training prefixes only (never a validation or test target), except the two ``all pre-test``
rows of the test split, which also count validation items: what a production system would have counted by the
time of the test item, as the report's SASRec and a refreshed checkpoint (``trainer.refresh``) have. The
sequence model (SASRec, ``trainer.seqrec``) is the
strongest of them: the ID-based recommender a product team already runs.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from contract.evidence import Evidence, EvidenceStats, Item, compute_evidence_batch
from contract.sequence import SequenceRanker
from trainer.data import Catalogue, UserSplit
from trainer.evaluation.cases import EvalCase
from trainer.seqrec import SequenceModel
from trainer.teacher import EvidenceModel, TeacherInput, TitleReadingModel

Scorer = Callable[[Sequence[EvalCase]], list[list[float]]]
"""Scores for every candidate of every case, in the cases' candidate order."""

RECENT = 3  # the classic co-occurrence baseline counts the last 3 items
ALL_HISTORY = 10_000
POPULARITY = "popularity"
PRETEST_POPULARITY = "popularity (all pre-test)"
CO_OCCURRENCE = "co-occurrence + pop"
CO_OCCURRENCE_ALL = "co-occurrence, all history + pop"
PRETEST_CO_OCCURRENCE = "co-occurrence, all pre-test + pop"
EVIDENCE_MODEL = "evidence model (the teacher's logistic)"
TITLE_EVIDENCE_MODEL = "evidence model + title overlap (the teacher's, where it read the titles)"
RETRIEVAL_EVIDENCE_MODEL = "evidence model, retrieved candidates (the teacher's logistic for them)"
SEQUENCE_MODEL = "sequence model (SASRec)"
COMPARED = (POPULARITY, PRETEST_POPULARITY, CO_OCCURRENCE, CO_OCCURRENCE_ALL, PRETEST_CO_OCCURRENCE, EVIDENCE_MODEL,
            TITLE_EVIDENCE_MODEL, RETRIEVAL_EVIDENCE_MODEL, SEQUENCE_MODEL)  # fmt: skip
"""The baselines every model is compared with, paired, where the report has them."""


@dataclass
class TrainingStats:
    """Unpruned counts from training prefixes only (never a validation or test target): the baselines' data."""

    popularity: Counter = field(default_factory=Counter)
    follows: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    @classmethod
    def from_splits(cls, splits: Iterable[UserSplit], window: int = 3) -> TrainingStats:
        return cls.from_sequences((split.train for split in splits), window)

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[str]], window: int = 3) -> TrainingStats:
        stats = cls()
        for sequence in sequences:
            stats.popularity.update(sequence)
            for i, item in enumerate(sequence):
                for previous in sequence[max(0, i - window) : i]:
                    stats.follows[previous][item] += 1
        return stats


def per_case(score: Callable[[EvalCase], list[float]]) -> Scorer:
    """A scorer from a function of one case."""
    return lambda cases: [score(case) for case in cases]


def random_scorer(seed: int) -> Scorer:
    rng = random.Random(seed)
    return per_case(lambda case: [rng.random() for _ in case.candidates])


def count_scorer(counts: Mapping[str, int]) -> Scorer:
    """Each candidate scored by its interaction count (0 if never seen): the popularity baselines' rule."""
    return per_case(lambda case: [float(counts.get(i, 0)) for i in case.candidates])


def popularity_scorer(stats: TrainingStats) -> Scorer:
    return count_scorer(stats.popularity)


def pretest_stats(splits: Sequence[UserSplit]) -> TrainingStats:
    """Counts over every interaction before each user's test item (training + validation items, never a test
    target): the stronger baselines a production system would have at test time."""
    return TrainingStats.from_sequences(split.test_history for split in splits)


def cooccurrence_scorer(stats: TrainingStats, recent_items: int = RECENT) -> Scorer:
    """Times each candidate followed one of the user's last ``recent_items`` items, popularity as the tie-breaker."""
    top = max(stats.popularity.values(), default=1)

    def score(case: EvalCase) -> list[float]:
        recent = case.history[-recent_items:]
        return [
            sum(stats.follows.get(h, {}).get(i, 0) for h in recent) + stats.popularity.get(i, 0) / (top + 1)
            for i in case.candidates
        ]

    return per_case(score)


def case_evidence(
    case: EvalCase, catalogue: Catalogue, stats: EvidenceStats, sequence: SequenceRanker | None = None
) -> list[Evidence]:
    """The evidence a ranker's prompt states for each of the case's candidates, in their order."""
    history = [Item(i, catalogue.title(i)) for i in case.history]
    candidates = [Item(c, catalogue.title(c)) for c in case.candidates]
    return compute_evidence_batch(history, candidates, stats, sequence=sequence)


def evidence_scorer(
    stats: EvidenceStats, model: EvidenceModel, catalogue: Catalogue, sequence: SequenceRanker | None = None
) -> Scorer:
    """The teacher's verdict model alone on the same evidence the ranker reads (a logistic regression on its
    features, the next-item rank included where the ranker's checkpoint ships a sequence model): what a model
    adds beyond weighing the evidence linearly."""
    return per_case(lambda case: [model.logit(e) for e in case_evidence(case, catalogue, stats, sequence)])


def title_evidence_scorer(
    stats: EvidenceStats, model: TitleReadingModel, catalogue: Catalogue, sequence: SequenceRanker | None = None
) -> Scorer:
    """The teacher's verdict model that also weighs the titles' overlap (``TeacherConfig.title_overlap``): what
    a model trained toward it could learn by reading the titles its prompt shows."""

    def score(case: EvalCase) -> list[float]:
        history = [Item(i, catalogue.title(i)) for i in case.history]
        evidence = case_evidence(case, catalogue, stats, sequence)
        pairs = [TeacherInput(history, Item(c, catalogue.title(c)), e) for c, e in zip(case.candidates, evidence,
                                                                                        strict=True)]  # fmt: skip
        return [model.logit(pair) for pair in pairs]

    return per_case(score)


def sequence_model_scorer(model: SequenceModel) -> Scorer:
    """SASRec's logit of each candidate after the history: one forward per case, cases batched."""
    return lambda cases: model.score_batch([c.history for c in cases], [c.candidates for c in cases])


def baseline_scorers(
    splits: Sequence[UserSplit],
    catalogue: Catalogue,
    evidence_stats: EvidenceStats,
    verdicts: EvidenceModel,
    seed: int,
    sequence_model: SequenceModel | None = None,
    evidence_sequence: SequenceRanker | None = None,
    split: str = "test",
    retrieval_verdicts: EvidenceModel | None = None,
    title_verdicts: TitleReadingModel | None = None,
) -> dict[str, Scorer]:
    """Every baseline row of a report, in the order it is shown. The ``all pre-test`` rows only on the test split:
    on the selection split's validation positions they would count the targets. ``retrieval_verdicts``: the
    teacher's logistic for retrieved candidates, a row of its own beside the plain one where a model is told its
    candidates are retrieved."""
    stats = TrainingStats.from_splits(splits)
    scorers = {"random": random_scorer(seed), POPULARITY: popularity_scorer(stats)}
    pretest = pretest_stats(splits) if split == "test" else None
    if pretest is not None:
        scorers[PRETEST_POPULARITY] = popularity_scorer(pretest)
    scorers[CO_OCCURRENCE] = cooccurrence_scorer(stats)
    scorers[CO_OCCURRENCE_ALL] = cooccurrence_scorer(stats, recent_items=ALL_HISTORY)
    if pretest is not None:
        scorers[PRETEST_CO_OCCURRENCE] = cooccurrence_scorer(pretest, recent_items=ALL_HISTORY)
    scorers[EVIDENCE_MODEL] = evidence_scorer(evidence_stats, verdicts, catalogue, evidence_sequence)
    if title_verdicts is not None:
        scorers[TITLE_EVIDENCE_MODEL] = title_evidence_scorer(evidence_stats, title_verdicts, catalogue,
                                                              evidence_sequence)  # fmt: skip
    if retrieval_verdicts is not None:
        scorers[RETRIEVAL_EVIDENCE_MODEL] = evidence_scorer(evidence_stats, retrieval_verdicts, catalogue,
                                                            evidence_sequence)  # fmt: skip
    if sequence_model is not None:
        scorers[SEQUENCE_MODEL] = sequence_model_scorer(sequence_model)
    return scorers
