"""Training statistics and the built-in teacher: counted on training prefixes only; rationales that weigh the
evidence, cite only it, and carry a verdict the teacher's evidence model gives."""

from __future__ import annotations

import pytest

from contract.evidence import (
    Evidence,
    EvidenceStats,
    Item,
    Link,
    NextItemRank,
    SharedWord,
    compute_evidence,
    unfaithful_citations,
)
from trainer.data import Catalogue, UserSplit, leave_one_out
from trainer.evaluation.baselines import TrainingStats
from trainer.teacher import (
    VERDICT_SCALES,
    BuiltinTeacher,
    EvidenceModel,
    TeacherInput,
    TitleReadingModel,
    calibration_examples,
    clause_kinds,
    evidence_features,
)

CATALOGUE = Catalogue(
    {
        "1": "Super Mario Odyssey",
        "2": "Mario Kart 8 Deluxe",
        "3": "Halo 3 - Xbox 360",
        "4": "Halo: Reach",
        "5": "FIFA 18",
        "6": "Tetris Effect",
        "7": "Secret Test Target",
    }
)


def test_stats_never_see_targets():
    sequences = {"u1": ["1", "2", "3", "7", "5"], "u2": ["1", "2", "4", "6"]}
    splits = leave_one_out(sequences)
    assert splits[0] == UserSplit("u1", ["1", "2", "3"], "7", "5")
    stats = TrainingStats.from_splits(splits)
    assert stats.popularity["7"] == 0 and stats.popularity["5"] == 0  # valid/test targets are not counted
    assert stats.popularity["1"] == 2
    assert stats.follows["1"]["2"] == 2 and stats.follows["2"]["3"] == 1
    evidence_stats = EvidenceStats.from_sequences((s.train for s in splits), CATALOGUE.titles)
    assert evidence_stats.popularity("7") == 0 and evidence_stats.follow_count("1", "2") == 2  # the same counts


TEACHER = BuiltinTeacher(EvidenceModel([1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.3, 0.5, 0.5, 0.0], -2.0))


def test_rationale_weighs_the_evidence_and_cites_it():
    strong = Evidence((Link(1, "a", 14), Link(3, "b", 2)), 0, 812, 3, None, ())
    assert TEACHER.rationale(strong) == "Strong link: follows #1 14x; top 3% popular: likely."
    weak = Evidence((Link(4, "b", 1),), 0, 5, 60, SharedWord("zelda", 2, "c"), ())
    assert TEACHER.rationale(weak) == 'Weak link: follows #4 1x; shares "zelda" with #2; niche, top 60%: possible.'
    assert TEACHER.rationale(Evidence((), 5, 0, None, None, ())) == "Only older links (5x); a new item: unlikely."
    assert "\n" not in TEACHER.rationale(weak)  # one line: the contract's stop is a newline


def test_rationale_cites_the_next_item_rank_in_place_of_popularity():
    """Where the evidence states the sequence model's rank, the teacher cites it first (the verdict weighs its
    log: a higher rank, a likelier verdict) and drops popularity, which the rank stands for, to stay in budget."""
    teacher = BuiltinTeacher(EvidenceModel([0.0] * 10 + [0.0, -1.0], 3.0))
    top = Evidence((Link(1, "a", 14),), 0, 812, 3, None, (), NextItemRank(2))
    assert teacher.rationale(top) == "Rank 2; strong link: follows #1 14x: likely."
    low = Evidence((), 0, 812, 3, None, (), NextItemRank(4000))
    assert teacher.rationale(low) == "Rank 4000; no links: unlikely."
    unknown = Evidence((), 0, 0, None, None, (), NextItemRank(None))
    assert teacher.rationale(unknown).startswith("Rank unknown; no links")
    for evidence in (top, low, unknown):
        assert unfaithful_citations(teacher.rationale(evidence), evidence.text()) == []


def test_rationale_cites_the_co_purchases_after_the_link():
    """Where the evidence states co-purchases (format v5), the teacher cites them after the link in place of a
    shared word (the line must fit the rationale budget), and the verdict weighs their log: more co-buyers, a
    likelier verdict."""
    teacher = BuiltinTeacher(EvidenceModel([0.0] * 12 + [1.0], -3.0))
    many = Evidence((Link(1, "a", 14),), 0, 812, 3, SharedWord("zelda", 2, "c"), (), NextItemRank(2), 45)
    assert teacher.rationale(many) == "Rank 2; strong link: follows #1 14x; co-bought 45x: likely."
    none = Evidence((), 0, 812, 3, None, (), NextItemRank(4000), 0)
    assert teacher.rationale(none) == "Rank 4000; no links; never co-bought: unlikely."
    shared = Evidence((), 0, 812, 3, SharedWord("zelda", 2, "c"), (), NextItemRank(4000), 0)
    assert teacher.rationale(shared) == 'Rank 4000; no links; shares "zelda" with #2: unlikely.'
    by_ref = BuiltinTeacher(teacher.model, shared_word="ref")  # the word stays on the evidence line
    assert by_ref.rationale(shared) == "Rank 4000; no links; shares a word with #2: unlikely."
    assert clause_kinds(by_ref.rationale(shared))["shared word"] == "yes"
    assert unfaithful_citations(by_ref.rationale(shared), shared.text()) == []
    assert clause_kinds(teacher.rationale(many))["co-bought"] == "yes"
    assert clause_kinds(teacher.rationale(none))["co-bought"] == "never"
    for evidence in (many, none, shared):
        assert unfaithful_citations(teacher.rationale(evidence), evidence.text()) == []


def test_the_strongest_link_weighs_count_by_recency():
    """#1 with 6 beats #4 with 10 (6/1 > 10/4): recent co-occurrence says more about what is next."""
    evidence = Evidence((Link(1, "a", 6), Link(4, "b", 10)), 0, 100, 5, None, ())
    assert "follows #1 6x" in TEACHER.rationale(evidence)


def test_verdict_model_learns_that_links_matter():
    """Fitted on calibration users' training positions (their own sequence left out of the counts), the weight
    of a link with the latest item is positive: the verdict follows the evidence."""
    orders = (["1", "2", "3", "4", "5", "6"], ["3", "4", "1", "2", "5", "6"])
    sequences = {f"u{i}": orders[i % 2] for i in range(60)}
    splits = leave_one_out(sequences)
    stats = EvidenceStats.from_sequences((s.train for s in splits), CATALOGUE.titles)
    evidence, labels = calibration_examples(splits, CATALOGUE, stats, users=60, negatives=1)
    assert len(evidence) == 60 * 2 and sum(labels) == 60
    model = EvidenceModel.fit(evidence, labels)
    assert model.weights[0] > 0  # log count of links with #1
    linked = compute_evidence([Item("1", CATALOGUE.title("1"))], Item("2", CATALOGUE.title("2")), stats)
    unlinked = compute_evidence([Item("1", CATALOGUE.title("1"))], Item("7", CATALOGUE.title("7")), stats)
    assert model.probability(linked) > model.probability(unlinked)
    assert len(evidence_features(linked)) == len(model.weights)


def test_clause_kinds_read_back_what_the_teacher_states():
    """``diagnose`` compares a model's rationale with the teacher's by these kinds; they must read the teacher's
    own sentences correctly, and say "unstated" for free text."""
    weak = Evidence((Link(4, "b", 1),), 0, 5, 60, SharedWord("zelda", 2, "c"), ())
    assert clause_kinds(TEACHER.rationale(weak)) == {
        "link": "weak link",
        "co-bought": "unstated",
        "shared word": "yes",
        "popularity": "niche",
        "titles": "unstated",
        "verdict": "possible",
    }
    assert clause_kinds("A great game.") == {
        "link": "unstated",
        "co-bought": "unstated",
        "shared word": "no",
        "popularity": "unstated",
        "titles": "unstated",
        "verdict": "unstated",
    }


def test_six_verdicts_grade_the_probability_more_finely_and_read_back():
    """``--teacher-verdicts six`` grades the same probability on six words: the verdict still rises with the
    evidence model's probability, the three-word teacher keeps its words, and ``clause_kinds`` reads "very
    unlikely" as itself, not as the "unlikely" it ends with."""
    fine = BuiltinTeacher(TEACHER.model, verdicts="six")
    links = [Evidence((Link(1, "a", count),), 0, 5, 60, None, ()) for count in (0, 1, 3, 10, 30, 100, 1000)]
    probabilities = [TEACHER.model.probability(evidence) for evidence in links]
    assert probabilities == sorted(probabilities)
    words = [word for word, _ in VERDICT_SCALES["six"]]
    grades = [words.index(clause_kinds(fine.rationale(evidence))["verdict"]) for evidence in links]
    assert grades == sorted(grades, reverse=True) and len(set(grades)) >= 4
    coarse = {clause_kinds(TEACHER.rationale(evidence))["verdict"] for evidence in links}
    assert coarse <= {word for word, _ in VERDICT_SCALES["three"]}
    assert clause_kinds("No links: very unlikely.")["verdict"] == "very unlikely"
    assert clause_kinds("No links: unlikely.")["verdict"] == "unlikely"


def _users(count: int) -> list[UserSplit]:
    return [UserSplit(f"u{i}", ["1", "2", "3"], "4", "5") for i in range(count)]


def test_sft_and_the_teachers_calibration_share_a_small_catalogue_with_the_default_sizes():
    """The recipe's defaults (10,000 SFT + 5,000 calibration users) on catalogues with fewer users: both pools
    non-empty and disjoint, in the recipe's proportion; a big catalogue gets the recipe's sizes."""
    import pytest

    from trainer.config import SFTConfig, TeacherConfig
    from trainer.data import DataError
    from trainer.sft import sft_users

    reserve = TeacherConfig().calibration_users
    for users in (300, 2000, 8317):
        splits = _users(users)
        chosen = sft_users(splits, SFTConfig(), reserve=reserve)
        assert len(chosen) == users * 10_000 // 15_000
        taken = {u.user_id for u in chosen}
        evidence, labels = calibration_examples(splits, CATALOGUE, EvidenceStats.from_sequences([], CATALOGUE.titles),
                                                reserve, negatives=1, exclude=taken)  # fmt: skip
        assert len(labels) == 2 * (users - len(chosen)) > 0
    assert len(sft_users(_users(20_000), SFTConfig(), reserve=reserve)) == 10_000
    assert len(sft_users(_users(300), SFTConfig())) == 300  # an LLM teacher needs no calibration users
    with pytest.raises(DataError, match="too few"):
        sft_users(_users(1), SFTConfig(), reserve=reserve)
    with pytest.raises(DataError, match="--teacher-calibration-users"):
        calibration_examples(_users(3), CATALOGUE, EvidenceStats.from_sequences([], CATALOGUE.titles), 10,
                             exclude={"u0", "u1", "u2"})  # fmt: skip


def test_fusion_probe_fits_what_a_logistic_cannot():
    """The evidence-ceiling probe's MLP learns an interaction of two features (next only with a link at #1 XOR a
    shared word) that no logistic of the same features ranks: so when it ties the logistic on real evidence, the
    features, not their weighting, are the limit."""
    import random

    from trainer.evaluation.fusion import fit_mlp

    rng = random.Random(0)
    evidence, labels = [], []
    for _ in range(2000):
        link, shared = rng.random() < 0.5, rng.random() < 0.5
        evidence.append(Evidence((Link(1, "a", 5),) if link else (), 0, 10, 50,
                                 SharedWord("zelda", 1, "a") if shared else None, ()))  # fmt: skip
        labels.append(link != shared)
    mlp, logistic = fit_mlp(evidence, labels, epochs=30), EvidenceModel.fit(evidence, labels)

    def accuracy(scores: list[float], threshold: float) -> float:
        return sum((s > threshold) == y for s, y in zip(scores, labels, strict=True)) / len(labels)

    assert accuracy(mlp(evidence), 0.0) == 1.0
    assert accuracy([logistic.logit(e) for e in evidence], 0.0) < 0.8


def test_retrieved_candidates_are_weighed_by_their_own_verdict_model():
    """Among a retriever's top picks a good next-item rank is what every candidate has: the same evidence gets the
    verdict of the model fitted on such candidates, and a teacher without one refuses rather than guessing."""
    catalogue = EvidenceModel([0.0] * 10 + [0.0, -1.0], 3.0)  # a good (small) rank: likely
    retrieval = EvidenceModel([0.0] * 10 + [0.0, 1.0], -3.0)  # among retrieved candidates: a good rank says little
    top = Evidence((Link(1, "a", 14),), 0, 812, 3, None, (), NextItemRank(2))
    assert BuiltinTeacher(catalogue).rationale(top).endswith(": likely.")
    both = BuiltinTeacher(catalogue, retrieval)
    assert both.rationale(top, "retrieval") == "Rank 2; strong link: follows #1 14x: unlikely."
    assert both.rationales([TeacherInput((), Item("c", "C"), top, "retrieval")]) == [both.rationale(top, "retrieval")]
    with pytest.raises(ValueError, match="retrieved candidates"):
        BuiltinTeacher(catalogue).rationale(top, "retrieval")


def test_title_overlap_weighs_shared_words_by_rarity_and_recency():
    """A candidate on the latest item's platform overlaps it; a rare shared word counts more than a common one;
    an item further back counts less in the recency-weighted sum; nothing to overlap with gives zeros."""
    from trainer.title_overlap import TitleOverlap

    titles = ["Halo 3 - Xbox 360", "Gears of War - Xbox 360", "Forza 4 - Xbox 360", "Halo: Reach", "FIFA 18",
              "Tetris Effect", "Mario Kart 8 Deluxe"]  # fmt: skip
    overlap = TitleOverlap(titles)
    history = ["Tetris Effect", "Halo 3 - Xbox 360"]  # #1 is the Xbox game
    same_platform = overlap.features(history, "Forza 4 - Xbox 360")
    same_series = overlap.features(history, "Halo: Reach")
    unrelated = overlap.features(history, "FIFA 18")
    assert unrelated == [0.0, 0.0, 0.0]
    assert same_platform[0] > 0 and same_series[0] > 0
    assert overlap.idf["halo"] > overlap.idf["xbox"]  # in 2 titles against 3
    assert overlap.features(list(reversed(history)), "Forza 4 - Xbox 360")[2] < same_platform[2]  # now #2
    assert overlap.features([], "Halo: Reach") == [0.0, 0.0, 0.0]


def test_a_teacher_that_reads_the_titles_grades_its_verdict_and_soft_labels_by_them():
    """With ``title_overlap`` the teacher's P (its verdict and SFT's soft labels) rises with the titles' overlap
    that the evidence line does not state, fitted where next items share their predecessors' platform; its
    evidence model, the report's evidence-model row, stays the logistic of the evidence line alone."""
    import random

    from trainer.config import SFTConfig
    from trainer.sft import answer_target
    from trainer.title_overlap import TitleOverlap

    titles = {str(i): f"Game {i} - {'Xbox 360' if i % 2 else 'Nintendo DS'}" for i in range(40)}
    catalogue = Catalogue(titles)
    rng = random.Random(0)
    sequences = {}
    for u in range(200):  # every user stays on one platform
        parity = u % 2
        sequences[f"u{u}"] = [str(2 * rng.randrange(20) + parity) for _ in range(6)]
    splits = leave_one_out(sequences)
    stats = EvidenceStats.from_sequences((s.train for s in splits), catalogue.titles)
    teacher = BuiltinTeacher.calibrated(splits, catalogue, stats, users=200, titles=TitleOverlap(titles.values()))
    assert teacher.title_model is not None and sum(teacher.title_model.weights[-3:]) > 0
    history = tuple(Item(i, titles[i]) for i in ("1", "3"))  # Xbox 360 games
    evidence = Evidence((), 0, 5, 50, None, ())
    same = TeacherInput(history, Item("5", titles["5"]), evidence)
    other = TeacherInput(history, Item("4", titles["4"]), evidence)
    assert teacher.probability(same) > teacher.probability(other)
    assert teacher.model.probability(evidence) == pytest.approx(
        BuiltinTeacher.calibrated(splits, catalogue, stats, users=200).model.probability(evidence))  # fmt: skip
    assert teacher.rationales([same])[0] == teacher.rationale(evidence, p=teacher.probability(same))
    assert "titles alike" not in teacher.rationales([same])[0]  # the clause only where asked for
    saying = BuiltinTeacher(teacher.model, title_model=teacher.title_model, title_clause=True)
    sequel = TeacherInput(history, Item("41", "Game 1 - Xbox 360 Special Edition"), evidence)  # of #2, "Game 1"
    alike, unlike = saying.rationales([sequel, other])
    assert "; titles alike: " in alike and "titles alike" not in unlike
    assert clause_kinds(alike)["titles"] == "alike" and unfaithful_citations(alike, evidence.text()) == []
    with pytest.raises(ValueError, match="title-reading"):
        BuiltinTeacher(teacher.model, title_clause=True)
    config = SFTConfig(answer_distill=0.5)
    assert answer_target(0, True, teacher.probability(same), config).share > answer_target(
        0, True, teacher.probability(other), config).share  # fmt: skip


def test_a_teacher_that_reads_the_title_words_era_weighs_them_and_rebuilds_them_from_its_record():
    """``--teacher-title-words``: the title-reading verdict model also weighs the era a title's words mark (their
    share among the sequences' last items), counted on sequences that end before the pairs' targets; its record
    rebuilds the same model from the sequences of the scored horizon, and refuses to without them."""
    import random

    from trainer.config import TeacherConfig
    from trainer.title_overlap import TITLE_WORD_FEATURES, TitleOverlap, TitleWordPrior

    titles = {str(i): f"Game {i} {'PS4' if i >= 30 else 'PS2'}" for i in range(40)}
    catalogue = Catalogue(titles)
    rng = random.Random(0)
    sequences = {}
    for u in range(300):  # the later in a sequence, the likelier a PS4 game
        sequences[f"u{u}"] = [str(30 + rng.randrange(10) if rng.random() < k / 10 else rng.randrange(30))
                              for k in range(10)]  # fmt: skip
    splits = leave_one_out(sequences)
    stats = EvidenceStats.from_sequences((s.train for s in splits), catalogue.titles)
    words = TitleWordPrior([s.train[:-1] for s in splits], titles)
    with pytest.raises(ValueError, match="give titles"):
        BuiltinTeacher.calibrated(splits, catalogue, stats, users=200, title_words=words)
    teacher = BuiltinTeacher.calibrated(splits, catalogue, stats, users=200, titles=TitleOverlap(titles.values()),
                                        title_words=words)  # fmt: skip
    model = teacher.title_model
    assert model is not None and model.feature_names[-len(TITLE_WORD_FEATURES) :] == TITLE_WORD_FEATURES
    history = tuple(Item(i, titles[i]) for i in ("1", "2"))
    evidence = Evidence((), 0, 5, 50, None, ())
    new, old = (TeacherInput(history, Item(i, titles[i]), evidence) for i in ("35", "15"))
    assert teacher.probability(new) > teacher.probability(old)
    record = model.record()
    assert record["word_prior_last"] == words.last
    with pytest.raises(ValueError, match="sequences"):
        TitleReadingModel.from_record(record, catalogue)
    rebuilt = TitleReadingModel.from_record(record, catalogue, [s.train[:-1] for s in splits])
    assert rebuilt.probability(new) == pytest.approx(model.probability(new))
    with pytest.raises(ValueError, match="--teacher-title-overlap verdict or clause"):
        TeacherConfig(title_words=True)
    assert TeacherConfig(title_words=True, title_overlap="verdict").title_words
    assert "word_prior_last" not in BuiltinTeacher.calibrated(
        splits, catalogue, stats, users=200, titles=TitleOverlap(titles.values())).title_model.record()  # fmt: skip
