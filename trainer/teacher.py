"""The built-in teacher: a short line that weighs the evidence in the prompt, citing only what the prompt states.

For each (history, candidate, evidence) it names the sequence model's next-item rank where the evidence states
one, the strongest co-occurrence link (which history item, how many times, how recent: ``#1`` is the latest),
a shared title word or attribute, how popular the candidate is, and a verdict (likely / possible / unlikely).
The verdict is the teacher's judgment of the evidence: a logistic model of the evidence's features, fitted
once on calibration users' training positions (other users than the ones SFT trains on), so it weighs recency,
link strength and popularity by what they were worth on other users. The rationale never looks at its own
pair's label, and every reference and number it cites is on the pair's ``Evidence:`` line, so it is faithful
by construction (``contract.evidence.unfaithful_citations``).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from contract.evidence import RECENT_REFS, Evidence, EvidenceStats, Item, LeaveOut, compute_evidence
from contract.prompt import CandidateSource
from contract.sequence import SequenceRanker
from trainer.config import SharedWordClause, TeacherConfig, VerdictScale
from trainer.data import Catalogue, DataError, UserSplit, sample_negatives
from trainer.title_overlap import TITLE_OVERLAP_FEATURES, TITLE_WORD_FEATURES, TitleOverlap, TitleWordPrior

VERDICT_SCALES: dict[str, tuple[tuple[str, float], ...]] = {
    "three": (("likely", 0.45), ("possible", 0.15), ("unlikely", 0.0)),
    "six": (("near certain", 0.9), ("very likely", 0.6), ("likely", 0.3), ("possible", 0.1), ("unlikely", 0.05),
            ("very unlikely", 0.0)),
}  # fmt: skip
"""Each scale's verdicts, best first, with the verdict model's P(next | evidence) at or above which each is given
(fitted on 1 positive + 4 negatives per user). The six-word scale is cut where, on Video Games calibration users
with 19 random negatives, positives and negatives part: "near certain" holds 31% of positives and 0.4% of negatives,
"very unlikely" 5.5% and 49%."""
VERDICTS = tuple(sorted({word for scale in VERDICT_SCALES.values() for word, _ in scale}, key=lambda w: (-len(w), w)))
"""Every verdict word, longest first, so that a line ending in "very unlikely" is not read as "unlikely"."""


@dataclass(frozen=True)
class TeacherInput:
    """One pair as the prompt shows it: the history (oldest first, the last is #1), the candidate, its evidence."""

    history: Sequence[Item]
    candidate: Item
    evidence: Evidence
    source: CandidateSource = "catalogue"  # where the pair's candidates came from: which verdict model weighs it


class Teacher(Protocol):
    """What SFT needs from a teacher: one label-blind rationale per pair."""

    def rationales(self, pairs: Sequence[TeacherInput]) -> list[str]: ...


def evidence_features(evidence: Evidence) -> list[float]:
    """The numbers a verdict weighs: log link counts for #1..#5 and older items, log popularity, a shared word
    (and how recent), shared attributes; the next-item rank (its log, and whether it is known), 0 where the
    evidence states none; the co-purchases' log, 0 where the evidence states none."""
    by_ref = {link.ref: link.count for link in evidence.links}
    features = [math.log1p(by_ref.get(ref, 0)) for ref in range(1, RECENT_REFS + 1)]
    features += [math.log1p(evidence.older_links), math.log1p(evidence.popularity)]
    shared = evidence.shared_word
    features += [1.0 if shared else 0.0, 1.0 / shared.ref if shared else 0.0, float(len(evidence.attributes))]
    rank = evidence.next_item.rank if evidence.next_item is not None else None
    features += [1.0 if rank is not None else 0.0, math.log(rank) if rank is not None else 0.0]
    features.append(math.log1p(evidence.co_bought or 0))
    return features


class EvidenceModel:
    """P(candidate is next | evidence): logistic regression on ``evidence_features`` (a handful of weights)."""

    def __init__(self, weights: Sequence[float] | None = None, bias: float = 0.0) -> None:
        """``weights`` of a shorter feature list (recorded before the next-item rank's or the co-purchases'
        features were added) weigh those features 0, as a model fitted on evidence without them does."""
        size = len(evidence_features(Evidence()))
        self.weights = [*(weights or []), *[0.0] * (size - len(weights or []))]
        if len(self.weights) != size:
            raise ValueError(f"{len(self.weights)} weights for {size} evidence features")
        self.bias = bias

    def record(self) -> dict[str, Any]:
        """What a checkpoint's provenance keeps under ``VERDICT_PROVENANCE``."""
        return {"weights": self.weights, "bias": self.bias}

    def logit(self, evidence: Evidence) -> float:
        return self.bias + sum(w * x for w, x in zip(self.weights, evidence_features(evidence), strict=True))

    def probability(self, evidence: Evidence) -> float:
        return 1.0 / (1.0 + math.exp(-self.logit(evidence)))

    @classmethod
    def fit(cls, evidence: Sequence[Evidence], labels: Sequence[bool], l2: float = 1e-4) -> EvidenceModel:
        return cls(*fit_logistic([evidence_features(e) for e in evidence], labels, l2))


def fit_logistic(
    rows: Sequence[Sequence[float]], labels: Sequence[bool], l2: float = 1e-4
) -> tuple[list[float], float]:
    """Weights and bias of an L2-regularised logistic regression (L-BFGS, float64): the verdict model's fit, and
    the fusion probe's on other feature sets (``trainer.evaluation.fusion``)."""
    x = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor([float(v) for v in labels], dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().tolist(), float(b.detach())


VERDICT_PROVENANCE = "teacher_verdict_model"
"""Where a checkpoint's provenance records the verdict model its SFT teacher used (RL carries it forward)."""

RETRIEVAL_VERDICT_PROVENANCE = "teacher_verdict_model_retrieval"
"""The same for retrieved candidates (``contract.prompt.CandidateSource``), where SFT trained on them."""

TITLES_ALIKE = 0.2
"""The overlap with the closest history title (``TitleOverlap``) from which the line says the titles are alike: on
2,000 Video Games users' validation positions, 25% of next items and 2.5% of random negatives reach it."""
TITLES_ALIKE_CLAUSE = "titles alike"

TITLE_VERDICT_PROVENANCE = "teacher_verdict_model_titles"
"""The verdict model that also weighs the titles' overlap (``TeacherConfig.title_overlap``), where SFT used one."""
log = logging.getLogger(__name__)


class TitleReadingModel:
    """P(candidate is next | evidence, titles): a logistic of ``evidence_features`` and the ``TitleOverlap`` of the
    candidate's title with the history's titles, which the prompt shows and the evidence line does not weigh; with
    ``words``, also the era its title words mark (``TitleWordPrior``, counted on sequences that end before every
    pair's target, so no pair's own next item counts for it)."""

    def __init__(self, weights: Sequence[float], bias: float, overlap: TitleOverlap,
                 words: TitleWordPrior | None = None) -> None:  # fmt: skip
        self.weights, self.bias, self.overlap, self.words = list(weights), bias, overlap, words

    @property
    def feature_names(self) -> tuple[str, ...]:
        return TITLE_OVERLAP_FEATURES + (TITLE_WORD_FEATURES if self.words is not None else ())

    def features(self, pair: TeacherInput) -> list[float]:
        features = evidence_features(pair.evidence) + self.overlap.features(
            [item.title for item in pair.history], pair.candidate.title
        )
        return features + self.words.title_features(pair.candidate.title) if self.words is not None else features

    def closest_title_overlap(self, pair: TeacherInput) -> float:
        """The overlap with the history title closest to the candidate's (``TitleOverlap``'s maximum)."""
        features = self.overlap.features([item.title for item in pair.history], pair.candidate.title)
        return features[TITLE_OVERLAP_FEATURES.index("title overlap max")]

    def logit(self, pair: TeacherInput) -> float:
        return self.bias + sum(w * x for w, x in zip(self.weights, self.features(pair), strict=True))

    def probability(self, pair: TeacherInput) -> float:
        return 1.0 / (1.0 + math.exp(-self.logit(pair)))

    def record(self) -> dict[str, Any]:
        """What a checkpoint's provenance keeps under ``TITLE_VERDICT_PROVENANCE``."""
        record = {"weights": self.weights, "bias": self.bias, "features": self.feature_names}
        return record | ({"word_prior_last": self.words.last} if self.words is not None else {})

    @classmethod
    def from_record(cls, record: Mapping[str, Any], catalogue: Catalogue,
                    sequences: Sequence[Sequence[str]] | None = None) -> TitleReadingModel:  # fmt: skip
        """The recorded model; one that weighs title words counts them on ``sequences`` (the scored targets'
        horizon: every sequence ending before them)."""
        words = None
        if "word_prior_last" in record:
            if sequences is None:
                raise ValueError("this title-reading verdict model weighs title words: give the sequences to count")
            words = TitleWordPrior(sequences, catalogue.titles, record["word_prior_last"])
        return cls(record["weights"], record["bias"], TitleOverlap(catalogue.titles.values()), words)

    @classmethod
    def fit(cls, pairs: Sequence[TeacherInput], labels: Sequence[bool], overlap: TitleOverlap,
            words: TitleWordPrior | None = None) -> TitleReadingModel:  # fmt: skip
        unfitted = cls([], 0.0, overlap, words)
        return cls(*fit_logistic([unfitted.features(pair) for pair in pairs], labels), overlap, words)


def recorded_verdicts(provenance: Mapping[str, Any], source: CandidateSource = "catalogue") -> EvidenceModel | None:
    """The verdict model a checkpoint learned from for ``source``'s candidates, as SFT recorded it
    (``EvidenceModel.record``); None if not."""
    recorded = provenance.get(VERDICT_PROVENANCE if source == "catalogue" else RETRIEVAL_VERDICT_PROVENANCE)
    return EvidenceModel(recorded["weights"], recorded["bias"]) if recorded is not None else None


def calibration_pool(splits: Sequence[UserSplit], exclude: set[str] | frozenset[str]) -> list[UserSplit]:
    """The users the verdict model may be fitted on: 2+ training items (one to predict, one before it), and
    not in ``exclude`` (SFT's users)."""
    return [s for s in splits if len(s.train) >= 2 and s.user_id not in exclude]


@dataclass(frozen=True)
class CalibrationPair:
    """One calibration row: a user's training prefix before its last item, a candidate, and whether it is that item."""

    split: UserSplit
    history: list[str]
    candidate: str
    label: bool


@dataclass(frozen=True)
class Retrieval:
    """Retrieved candidates: negatives drawn uniformly from the ``pool`` items ``sequence`` scores highest after
    the history (never an item of the user's), as a SASRec retriever's top picks would be."""

    sequence: SequenceRanker
    pool: int = 50

    def negatives(self, rng: random.Random, history: Sequence[str], exclude: set[str], count: int) -> list[str]:
        """Up to ``count`` of them; fewer where the model knows too little of the history to fill its pool."""
        top = self.sequence.top_items(list(history), self.pool, exclude)
        return rng.sample(top, min(count, len(top)))

    def hit_negatives(
        self, rng: random.Random, history: Sequence[str], positive: str, exclude: set[str], count: int
    ) -> list[str] | None:
        """``count`` negatives from the top items where ``positive`` is one of them (a retriever's list that found
        the item, so the positive and its negatives share the rank's range); None where it is not."""
        top = self.sequence.top_items(list(history), self.pool, exclude - {positive})
        if positive not in top:
            return None
        others = [i for i in top if i != positive]
        return rng.sample(others, min(count, len(others)))


def calibration_pairs(
    splits: Sequence[UserSplit], catalogue: Catalogue, users: int, negatives: int = 4, seed: int = 1,
    exclude: set[str] | frozenset[str] = frozenset(), retrieval: Retrieval | None = None,
) -> list[CalibrationPair]:  # fmt: skip
    """The last training position of ``users`` users (not in ``exclude``), with 1 positive + ``negatives``
    random negatives each (seeded); with ``retrieval``, of the first ``users`` users whose positive is among the
    retriever's top items, with negatives from those items (``Retrieval.hit_negatives``), as SFT's retrieved
    examples are drawn."""
    rng = random.Random(seed)
    items = sorted(catalogue.titles)
    pool = calibration_pool(splits, exclude)
    if not pool:
        raise DataError("no users with 2+ training items are left to fit the teacher's verdict model on "
                        "(--teacher-calibration-users)")  # fmt: skip
    pairs: list[CalibrationPair] = []
    chosen = rng.sample(pool, len(pool) if retrieval is not None else min(users, len(pool)))
    taken = 0
    for split in chosen:
        if taken == users:
            break
        positive = split.train[-1]
        excluded = {*split.train, split.valid_target, split.test_target}
        if retrieval is None:
            negatives_drawn = sample_negatives(rng, items, excluded, negatives)
        else:
            hit = retrieval.hit_negatives(rng, split.train[:-1], positive, excluded, negatives)
            if hit is None:
                continue
            negatives_drawn = hit
        taken += 1
        for item in [positive, *negatives_drawn]:
            pairs.append(CalibrationPair(split, split.train[:-1], item, item == positive))
    return pairs


def calibration_examples(
    splits: Sequence[UserSplit], catalogue: Catalogue, stats: EvidenceStats, users: int, negatives: int = 4,
    seed: int = 1,
    exclude: set[str] | frozenset[str] = frozenset(),
    sequence: SequenceRanker | None = None,
    retrieval: Retrieval | None = None,
) -> tuple[list[Evidence], list[bool]]:  # fmt: skip
    """The evidence of ``calibration_pairs`` (``pair_evidence``) and their labels."""
    pairs = calibration_pairs(splits, catalogue, users, negatives, seed, exclude, retrieval)
    return pair_evidence(pairs, catalogue, stats, sequence), [pair.label for pair in pairs]


def pair_evidence(
    pairs: Sequence[CalibrationPair], catalogue: Catalogue, stats: EvidenceStats, sequence: SequenceRanker | None
) -> list[Evidence]:
    """Each pair's evidence, leaving its user's own sequence out of the counts as SFT does (once per user: a
    user's pairs are consecutive); the next-item rank from ``sequence`` (which must not have seen that position:
    horizon ``sft``)."""
    evidence = []
    for split, group in itertools.groupby(pairs, key=lambda pair: pair.split):
        group = list(group)
        history = [Item(i, catalogue.title(i)) for i in group[0].history]
        leave_out = LeaveOut.of_sequence(split.train, stats.window)
        for pair in group:
            candidate = Item(pair.candidate, catalogue.title(pair.candidate))
            evidence.append(compute_evidence(history, candidate, stats, leave_out, sequence))
    return evidence


def link_strength(count: int) -> str:
    return "strong" if count >= 10 else "some" if count >= 3 else "weak"


def popularity_phrase(evidence: Evidence) -> str:
    top = evidence.popularity_top_percent
    if top is None:
        return "a new item"
    return f"top {top}% popular" if top <= 10 else f"niche, top {top}%"


def next_item_phrase(rank: int | None) -> str:
    return f"rank {rank if rank is not None else 'unknown'}"


class BuiltinTeacher:
    def __init__(
        self,
        model: EvidenceModel,
        retrieval_model: EvidenceModel | None = None,
        shared_word: SharedWordClause = TeacherConfig.shared_word,
        verdicts: VerdictScale = TeacherConfig.verdicts,
        title_model: TitleReadingModel | None = None,
        title_clause: bool = False,
    ) -> None:
        """``model`` weighs pairs whose candidates are any catalogue items, ``retrieval_model`` (where SFT trains on
        retrieved candidates) pairs whose candidates are a retriever's top picks, where the same evidence means
        something else: every candidate has a good next-item rank, so a good rank says less. ``shared_word``: how
        the line cites a shared title word (``TeacherConfig.shared_word``); ``verdicts``: the scale its closing
        verdict grades the verdict model's probability on (``VERDICT_SCALES``). ``title_model``, where given,
        weighs catalogue pairs instead of ``model``, which stays the evidence line's logistic (the report's
        evidence-model row). ``title_clause``: the line also says "titles alike" where the candidate's title
        overlaps a history title by ``TITLES_ALIKE`` or more, a judgement the LLM must make from the titles."""
        if title_clause and title_model is None:
            raise ValueError("the titles clause needs the title-reading verdict model")
        self.model = model
        self.title_model = title_model
        self.title_clause = title_clause
        self.retrieval_model = retrieval_model
        self.shared_word = shared_word
        self.verdict_scale = VERDICT_SCALES[verdicts]

    @classmethod
    def calibrated(
        cls, splits: Sequence[UserSplit], catalogue: Catalogue, stats: EvidenceStats,
        users: int = TeacherConfig.calibration_users,
        exclude: set[str] | frozenset[str] = frozenset(), sequence: SequenceRanker | None = None,
        retrieval: Retrieval | None = None, min_hits: int = TeacherConfig.retrieval_hits,
        shared_word: SharedWordClause = TeacherConfig.shared_word,
        verdicts: VerdictScale = TeacherConfig.verdicts,
        titles: TitleOverlap | None = None,
        title_clause: bool = False,
        title_words: TitleWordPrior | None = None,
    ) -> BuiltinTeacher:  # fmt: skip
        """A teacher whose verdict model is fitted on ``users`` calibration users (none of ``exclude``), and with
        ``retrieval`` a second one on as many calibration users whose next item the retriever's list holds, with
        negatives from that list. Where fewer than ``min_hits`` such users exist (a catalogue whose sequence model
        rarely finds the next item) a logistic fitted on them would be noise, so there is no second model
        (``retrieval_model`` is None) and the caller trains on catalogue candidates only. ``titles`` fits the
        title-reading verdict model (``TitleReadingModel``), which with ``title_words`` also weighs their era."""
        if title_words is not None and titles is None:
            raise ValueError("the title words' era is weighed by the title-reading verdict model: give titles")
        pairs = calibration_pairs(splits, catalogue, users, exclude=exclude)
        examples = pair_evidence(pairs, catalogue, stats, sequence), [pair.label for pair in pairs]
        title_model = None
        if titles is not None:
            shown = [TeacherInput([Item(i, catalogue.title(i)) for i in pair.history],
                                  Item(pair.candidate, catalogue.title(pair.candidate)), evidence)
                     for pair, evidence in zip(pairs, examples[0], strict=True)]  # fmt: skip
            title_model = TitleReadingModel.fit(shown, examples[1], titles, title_words)
        retrieval_model = None
        if retrieval is not None:
            retrieved = calibration_examples(splits, catalogue, stats, users, exclude=exclude, sequence=sequence,
                                             retrieval=retrieval)  # fmt: skip
            hits = sum(retrieved[1])
            if hits >= min_hits:
                retrieval_model = EvidenceModel.fit(*retrieved)
            else:
                log.warning(
                    "%d calibration users' next item is among the sequence model's top %d items, fewer than "
                    "%d: no verdict model for retrieved candidates",
                    hits,
                    retrieval.pool,
                    min_hits,
                )
        return cls(EvidenceModel.fit(*examples), retrieval_model, shared_word, verdicts, title_model, title_clause)

    def verdicts_for(self, source: CandidateSource) -> EvidenceModel:
        """The verdict model that weighs ``source``'s candidates."""
        if source == "catalogue":
            return self.model
        if self.retrieval_model is None:
            raise ValueError("this teacher was not calibrated on retrieved candidates (give it a Retrieval)")
        return self.retrieval_model

    def probability(self, pair: TeacherInput) -> float:
        """The teacher's P(the pair's candidate is next): what its verdict grades and its soft labels take."""
        if pair.source == "catalogue" and self.title_model is not None:
            return self.title_model.probability(pair)
        return self.verdicts_for(pair.source).probability(pair.evidence)

    def verdict(self, evidence: Evidence, source: CandidateSource = "catalogue", p: float | None = None) -> str:
        p = self.verdicts_for(source).probability(evidence) if p is None else p
        return next(word for word, at_least in self.verdict_scale if p >= at_least)

    def rationale(self, evidence: Evidence, source: CandidateSource = "catalogue", p: float | None = None,
                  titles_alike: bool = False) -> str:  # fmt: skip
        """One line, at most three clauses of evidence: the next-item rank where the evidence states one, else
        popularity (last); the strongest link; then the co-purchases where the evidence states some, else a shared
        word or attribute (else "never co-bought" where it states co-purchases); then the verdict. (The rank
        stands for popularity too: a sequence model learns it, and the line must fit the rationale budget.)"""
        clauses = []
        if evidence.next_item is not None:
            clauses.append(next_item_phrase(evidence.next_item.rank))
        if evidence.links:
            strongest = max(evidence.links, key=lambda link: (link.count / link.ref, -link.ref))
            clauses.append(f"{link_strength(strongest.count)} link: follows #{strongest.ref} {strongest.count}x")
        elif evidence.older_links:
            clauses.append(f"only older links ({evidence.older_links}x)")
        else:
            clauses.append("no links")
        if evidence.co_bought:
            clauses.append(f"co-bought {evidence.co_bought}x")
        elif evidence.shared_word is not None:
            shared = evidence.shared_word
            clauses.append(f'shares "{shared.word}" with #{shared.ref}' if self.shared_word == "quote"
                           else f"shares a word with #{shared.ref}")  # fmt: skip
        elif evidence.attributes:
            attribute = evidence.attributes[0]
            clauses.append(f"same {attribute.name} as #{attribute.ref}")
        elif evidence.co_bought is not None:
            clauses.append("never co-bought")
        if evidence.next_item is None:
            clauses.append(popularity_phrase(evidence))
        if titles_alike:
            clauses.append(TITLES_ALIKE_CLAUSE)
        text = "; ".join(clauses) + f": {self.verdict(evidence, source, p)}."
        return text[0].upper() + text[1:]

    def rationales(self, pairs: Sequence[TeacherInput]) -> list[str]:
        return [self.rationale(pair.evidence, pair.source, self.probability(pair), self.titles_alike(pair))
                for pair in pairs]  # fmt: skip

    def titles_alike(self, pair: TeacherInput) -> bool:
        """Whether the line says ``TITLES_ALIKE_CLAUSE``: only with ``title_clause``, for catalogue candidates."""
        if not self.title_clause or self.title_model is None or pair.source != "catalogue":
            return False
        return self.title_model.closest_title_overlap(pair) >= TITLES_ALIKE


def clause_kinds(rationale: str) -> dict[str, str]:
    """What a rationale in the built-in teacher's style asserts, per kind, so a model's rationale can be compared
    with the teacher's clause by clause (``trainer.diagnose``)."""
    text = rationale.lower().rstrip(".")
    link = next((k for k in ("strong link", "some link", "weak link", "only older links", "no links") if k in text),
                "unstated")  # fmt: skip
    verdict = next((v for v in VERDICTS if text.endswith(v)), "unstated")
    popularity = next((kind for phrase, kind in (("new item", "new"), ("% popular", "popular"), ("niche", "niche"))
                       if phrase in text), "unstated")  # fmt: skip
    co_bought = "never" if "never co-bought" in text else "yes" if "co-bought" in text else "unstated"
    return {"link": link, "co-bought": co_bought, "shared word": "yes" if "shares" in text else "no",
            "popularity": popularity, "titles": "alike" if TITLES_ALIKE_CLAUSE in text else "unstated",
            "verdict": verdict}  # fmt: skip
