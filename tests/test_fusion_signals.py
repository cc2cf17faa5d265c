"""The fusion probe's signals beyond the evidence (``trainer.evaluation.signals``): what they compute, and that
a calibration row's own target is left out of the counts as the evidence's links leave it out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from contract.sequence import SequenceRanker
from trainer.evaluation.signals import EASE, CoPurchase, SequenceConfidence

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
