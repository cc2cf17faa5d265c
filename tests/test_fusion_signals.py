"""The fusion probe's signals beyond the evidence (``trainer.evaluation.signals``): what they compute, and that
a calibration row's own target is left out of the counts as the evidence's links leave it out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from contract.sequence import SequenceRanker
from trainer.data import Catalogue
from trainer.evaluation.signals import EASE, CoPurchase, ItemRecency, SequenceConfidence
from trainer.title_overlap import TitleWordPrior

SHIPPED_SEQUENCE = Path(__file__).resolve().parents[1] / "models" / "default" / "sequence"


def test_co_purchase_counts_users_with_both_items_and_leaves_a_counted_target_out():
    signal = CoPurchase([["a", "b", "c"], ["a", "b"], ["b", "d"]])
    log_count, cosine_sum, cosine_max = signal(["a", "b"], ["a", "b"], ["c"])[0]
    assert log_count == math.log1p(2)  # one user had a and c, one had b and c
    assert math.isclose(cosine_sum, 1 / math.sqrt(2 * 1) + 1 / math.sqrt(3 * 1))
    assert math.isclose(cosine_max, 1 / math.sqrt(2))
    # the user whose counted sequence is a, b, c, at the position before c: c's pairs with them are theirs
    assert signal(["a", "b", "c"], ["a", "b"], ["c"]) == [[0.0, 0.0, 0.0]]
    assert signal(["a", "b", "c"], ["a", "b"], ["d"]) == signal(["a", "b"], ["a", "b"], ["d"])
    assert signal(["a"], ["a"], ["unknown"]) == [[0.0, 0.0, 0.0]]
    only_max = CoPurchase([["a", "b", "c"], ["a", "b"], ["b", "d"]], ["co-purchase cosine max"])
    assert only_max.names == ("co-purchase cosine max",) and only_max(["a", "b"], ["a", "b"], ["c"]) == [[cosine_max]]
    assert only_max(["a"], ["a"], ["unknown"]) == [[0.0]]


def test_item_recency_counts_the_sequences_last_items_and_leaves_the_cases_own_user_out():
    sequences = [["a", "b", "c", "d"], ["b", "c"], ["a", "e", "b", "c"]]
    signal = ItemRecency(sequences, last=2)
    # "c" ends all three sequences, in 3 of its 3 occurrences; "a" is in two, never among the last two
    assert signal(["x"], ["x"], ["c", "a"]) == [
        [math.log1p(3), math.log(3.5 / 5.0)],
        [math.log1p(0), math.log(0.5 / 4.0)],
    ]
    # the third user's own sequence, with "c" its counted target: "c" is scored from the other two users alone
    assert signal(sequences[2], sequences[2][:-1], ["c"]) == [[math.log1p(2), math.log(2.5 / 4.0)]]
    assert signal(["x"], ["x"], ["unknown"]) == [[0.0, math.log(0.5 / 2.0)]]


def test_title_word_prior_weighs_a_word_by_its_share_of_the_last_items_and_leaves_the_cases_own_user_out():
    catalogue = Catalogue({"old": "Racer ps2", "new": "Racer ps4", "new2": "Shooter ps4", "x": "Other"})
    sequences = [["old", "new"], ["old", "new2"], ["old", "x", "new"]]
    signal = TitleWordPrior(sequences, catalogue.titles, last=1)
    (new_mean, new_max, new_era), (old_mean, _, old_era) = signal(["x"], ["x"], ["new", "old"])
    assert new_max > 0 > old_mean and new_mean > old_mean and new_era > old_era  # ps4 ends sequences, ps2 never
    # a user whose only last item is "new2" is scored as if only the other two users were counted
    without = TitleWordPrior([sequences[0], sequences[2]], catalogue.titles, last=1)
    own = ["old", "new2"]
    nobody = ["not-in-catalogue"]  # a counted sequence with no titled item: nothing of it is left out
    assert np.allclose(signal(own, own[:-1], ["new2", "new"]), without(nobody, nobody, ["new2", "new"]))
    assert signal(own, own[:-1], ["new2"])[0][0] < signal(["x"], ["x"], ["new2"])[0][0]
    assert signal(["x"], ["x"], ["not-in-catalogue"]) == [[0.0, 0.0, 0.0]]


def test_sequence_confidence_is_a_distribution_over_the_items_a_rank_counts():
    ranker = SequenceRanker.load(SHIPPED_SEQUENCE)
    history = ranker.item_ids[:3]
    outside = [item for item in ranker.item_ids if item not in history]
    values = SequenceConfidence(ranker)(history, history, outside)
    log_probs = np.array([v[0] for v in values])
    assert math.isclose(float(np.exp(log_probs).sum()), 1.0, rel_tol=1e-4)
    gaps = np.array([v[1] for v in values])
    assert gaps.max() == 0.0 and (gaps <= 0).all()
    ranks = ranker.ranks(history, outside)
    assert ranks[int(gaps.argmax())] == 1  # the top item's gap is 0
    assert SequenceConfidence(ranker)(history, history, ["not-an-item"]) == [[0.0, 0.0]]


def test_ease_scores_each_case_as_if_its_own_user_were_never_counted():
    """The Sherman-Morrison leave-out equals EASE fitted without the user's row; B's weights are -P_ij / P_jj."""
    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in range(30)]
    sequences = [list(rng.choice(items, size=rng.integers(2, 9), replace=False)) for _ in range(60)]
    user, history, candidates = sequences[7], sequences[7][:3], items[:10]
    without_user = EASE(sequences[:7] + sequences[8:], l2=5.0)
    left_out = EASE(sequences, l2=5.0)(user, history, candidates)
    assert np.allclose(left_out, without_user([], history, candidates), atol=1e-4)
    assert not np.allclose(left_out, EASE(sequences, l2=5.0)([], history, candidates), atol=1e-4)
    p = without_user.precision
    seen, column = [without_user.index[i] for i in history], without_user.index["i9"]
    weights = [-5.0 * p[i, column] / p[column, column] for i in seen if i != column]  # l2 * B: count units
    expected = [math.copysign(math.log1p(abs(v)), v) for v in (sum(weights), max(weights))]
    assert np.allclose(without_user([], history, ["i9"])[0], expected, atol=1e-5)
    assert without_user([], history, ["unknown"]) == [[0.0, 0.0]]
