"""Training statistics and the built-in teacher: computed from training prefixes only, evidence-based."""

from __future__ import annotations

from trainer.data import Catalogue, UserSplit, leave_one_out
from trainer.teacher import BuiltinTeacher, TrainingStats, clause_kinds, title_words

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


def test_teacher_rationale_states_the_evidence():
    splits = leave_one_out({"u1": ["1", "2", "3", "7", "5"], "u2": ["1", "2", "4", "6"], "u3": ["3", "4", "5", "6"]})
    teacher = BuiltinTeacher(CATALOGUE, TrainingStats.from_splits(splits))
    franchise = teacher.rationale(["3"], "4")
    assert franchise.startswith("Shares 'halo' with Halo 3 - Xbox 360") and franchise.endswith(".")
    cooc = teacher.rationale(["1"], "2")
    assert "often bought after Super Mario Odyssey" in cooc
    unrelated = teacher.rationale(["5"], "6")
    assert "no link to recent items" in unrelated.lower()
    assert "\n" not in unrelated  # a rationale is one line (the contract's stop is a newline)
    assert title_words("Halo 3 - Xbox 360") == {"halo"}


def test_clause_kinds_read_back_what_the_teacher_states():
    """``diagnose`` compares a model's rationale with the teacher's by these kinds; they must read the teacher's
    own sentences correctly, and say "unstated" for free text."""
    splits = leave_one_out({"u1": ["1", "2", "3", "7", "5"], "u2": ["1", "2", "4", "6"], "u3": ["3", "4", "5", "6"]})
    teacher = BuiltinTeacher(CATALOGUE, TrainingStats.from_splits(splits))
    assert clause_kinds(teacher.rationale(["1"], "2")) == {
        "shared title word": "yes",
        "co-occurrence": "linked",
        "popularity": teacher._popularity_phrase("2"),
    }
    assert clause_kinds(teacher.rationale(["5"], "6"))["co-occurrence"] == "no link"
    assert clause_kinds("A great game.") == {
        "shared title word": "no",
        "co-occurrence": "unstated",
        "popularity": "unstated",
    }


def test_misrecalled_rationales_flip_only_the_link_clause():
    """SFT's simulated recall errors: a true link dropped, a false one added (with the most recent item), the
    other clauses as the teacher wrote them; rate 0 never flips, rate 1 always does."""
    import random

    splits = leave_one_out({"u1": ["1", "2", "3", "7", "5"], "u2": ["1", "2", "4", "6"], "u3": ["3", "4", "5", "6"]})
    teacher = BuiltinTeacher(CATALOGUE, TrainingStats.from_splits(splits))
    rng = random.Random(0)
    dropped = teacher.misrecalled(["1"], "2", drop_link=1.0, add_link=0.0, rng=rng)
    assert clause_kinds(dropped) == {**clause_kinds(teacher.rationale(["1"], "2")), "co-occurrence": "no link"}
    added = teacher.misrecalled(["4", "5"], "6", drop_link=0.0, add_link=1.0, rng=rng)
    assert "often bought after fifa 18" in added.lower()  # the most recent history item
    assert clause_kinds(added)["popularity"] == clause_kinds(teacher.rationale(["4", "5"], "6"))["popularity"]
    assert teacher.misrecalled(["1"], "2", drop_link=0.0, add_link=1.0, rng=rng) is None  # linked: only drop applies
    assert teacher.misrecalled(["5"], "6", drop_link=1.0, add_link=0.0, rng=rng) is None  # unlinked: only add
    assert teacher.misrecalled([], "6", drop_link=1.0, add_link=1.0, rng=rng) is None  # no history, no link clause
