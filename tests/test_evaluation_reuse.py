"""`eval --reuse`: an earlier report's model rows pair with a new one only on exactly the same cases."""

from __future__ import annotations

import json

import pytest

from trainer.evaluation.baselines import CO_OCCURRENCE, POPULARITY, SEQUENCE_MODEL
from trainer.evaluation.cases import EvalCase
from trainer.evaluation.run import EvalError, reused_rows

CASES = [EvalCase(f"u{i}", ["a"], ["t", "n"], "t") for i in range(3)]
BASELINES = {POPULARITY: [1, 2, 1], CO_OCCURRENCE: [2, 2, 1], SEQUENCE_MODEL: [1, 1, 1]}


def _stored(tmp_path, **changed):
    ranks = {**BASELINES, **changed, "m-1 (full)": [1, 1, 2]}
    path = tmp_path / "ranks.json"
    path.write_text(json.dumps({"users": [c.user_id for c in CASES], "models": ["m-1 (full)"], "ranks": ranks}))
    return path


def test_another_sequence_model_row_may_be_added_beside_the_reused_models(tmp_path):
    """The point of a reuse: score a new baseline (here another SASRec) against the same model rows."""
    rows, _ = reused_rows(_stored(tmp_path, **{SEQUENCE_MODEL: [2, 2, 2]}), CASES, BASELINES)
    assert rows == {"m-1 (full)": [1, 1, 2]}


def test_a_baseline_that_ranks_differently_means_other_cases_and_is_refused(tmp_path):
    with pytest.raises(EvalError, match="popularity"):
        reused_rows(_stored(tmp_path, **{POPULARITY: [2, 2, 2]}), CASES, BASELINES)


def test_models_are_told_retrieved_candidates_only_where_they_learned_them_and_the_negatives_are_a_retrievers(
    tmp_path,
):
    """``eval --candidate-source auto`` tells a model its candidates are retrieved exactly where the negatives are
    a retriever's and the model was trained on such candidates; asking a model for a source it never learned is
    refused, naming the option."""
    from types import SimpleNamespace

    from trainer.evaluation.run import EvalError, EvalPlan, candidate_source_for

    def model(*sources):
        return SimpleNamespace(path=tmp_path, manifest=SimpleNamespace(candidate_sources=list(sources)))

    def plan(source="auto", retriever=None):
        return EvalPlan(models=[], modes=["full"], users=1, negatives=1, split="test", seed=0, out=tmp_path,
                        command="", retriever=retriever, candidate_source=source)  # fmt: skip

    both, catalogue_only, lists = model("catalogue", "retrieval"), model("catalogue"), {"u": ["i"]}
    assert candidate_source_for(both, plan(retriever=lists)) == "retrieval"
    assert candidate_source_for(both, plan()) == "catalogue"  # random negatives are not a retriever's picks
    assert candidate_source_for(catalogue_only, plan(retriever=lists)) == "catalogue"
    assert candidate_source_for(both, plan("catalogue", lists)) == "catalogue"
    with pytest.raises(EvalError, match="--candidate-source retrieval"):
        candidate_source_for(catalogue_only, plan("retrieval", lists))
