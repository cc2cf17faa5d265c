"""The hot-reload eval gate (``service.model_manager.gate_refusal``): scores compared on one dataset only."""

from __future__ import annotations

from dataclasses import replace

from contract.assembly import PromptAssembler
from contract.checkpoint import Checkpoint, open_checkpoint
from contract.sequence import SequenceRanker
from loadtest.procs import DEFAULT_MODEL
from service.model_manager import evidence_refresh_of, gate_refusal
from trainer.refresh import last_measured

SHIPPED = open_checkpoint(DEFAULT_MODEL)


def _variant(version: str, ndcg: float | None, data: str | None):
    trained = {k: v for k, v in SHIPPED.manifest.provenance.items() if k != "refresh"}  # its own weights
    provenance = {**trained, "data_fingerprint": data}
    metrics = {} if ndcg is None else {"ndcg@10": ndcg}
    manifest = SHIPPED.manifest.model_copy(update={"model_version": version, "metrics": metrics,
                                                   "provenance": provenance})  # fmt: skip
    return replace(SHIPPED, manifest=manifest)


def test_better_passes_worse_is_refused_on_the_same_dataset():
    serving = _variant("old", 0.66, "abc")
    assert gate_refusal(serving, _variant("new", 0.70, "abc")) is None
    assert "worse than the serving old" in gate_refusal(serving, _variant("new", 0.60, "abc"))


def test_another_datasets_score_is_never_compared():
    serving = _variant("old", 0.66, "abc")
    refusal = gate_refusal(serving, _variant("new", 0.90, "xyz"))
    assert refusal is not None and "another dataset" in refusal and "xyz" in refusal


def test_a_checkpoint_without_eval_metrics_cannot_pass_a_set_gate():
    assert "--report" in gate_refusal(_variant("old", 0.66, "abc"), _variant("new", None, "abc"))
    assert gate_refusal(_variant("old", None, "abc"), _variant("new", None, "abc")) is None  # no gate set yet
    assert gate_refusal(_variant("old", 0.66, None), _variant("new", 0.67, "abc")) is None  # older manifests


def _refreshed(base: Checkpoint, version: str, horizon: str) -> Checkpoint:
    """``base``'s weights with a sequence model trained to ``horizon``, as ``r2rank-train refresh`` writes them:
    a new model_version, no metrics, the weights' own version recorded."""
    refresh = {"from_model_version": base.model_version, "llm_model_version": base.manifest.weights_version,
               **last_measured(base.manifest)}  # fmt: skip
    provenance = {**base.manifest.provenance, "refresh": refresh}
    manifest = base.manifest.model_copy(update={"model_version": version, "metrics": {}, "provenance": provenance})
    old = base.sequence
    sequence = SequenceRanker(old.item_ids, old.weights, {**old.config, "horizon": horizon}, f"{old.version}-{horizon}")
    prompts = PromptAssembler(base.encoder, manifest.limits, base.answer_ids, base.stats, sequence)
    return Checkpoint(base.path, manifest, base.encoder, prompts)


def test_the_serving_llm_refreshed_on_every_interaction_passes_without_metrics():
    """No report can score evidence that has seen every target; the weights are the ones the gate measured."""
    serving = _variant("old", 0.66, "abc")
    daily = _refreshed(serving, "fresh-1", "all")
    assert evidence_refresh_of(serving, daily) and gate_refusal(serving, daily) is None
    next_day = _refreshed(daily, "fresh-2", "all")  # a refresh of a refresh: still the same weights
    assert next_day.manifest.weights_version == serving.manifest.weights_version
    assert gate_refusal(serving, next_day) is None and gate_refusal(daily, next_day) is None


def test_a_refresh_of_other_weights_or_one_a_report_could_score_still_needs_metrics():
    serving = _variant("old", 0.66, "abc")
    other_weights = _refreshed(_variant("other", 0.70, "abc"), "fresh", "all")
    assert "--report" in gate_refusal(serving, other_weights)
    scorable = _refreshed(serving, "fresh", "test")  # the test report scores this one: export it with --report
    assert "--report" in gate_refusal(serving, scorable)
    assert "another dataset" in gate_refusal(_variant("old", 0.66, "xyz"), _refreshed(serving, "fresh", "all"))


def test_while_an_unscored_refresh_serves_the_next_publish_is_held_to_its_weights_last_report():
    """Publishing daily refreshes must not switch the gate off: their weights' last score still binds."""
    serving = _variant("old", 0.66, "abc")
    next_day = _refreshed(_refreshed(serving, "fresh-1", "all"), "fresh-2", "all")
    assert next_day.manifest.provenance["refresh"]["measured_model_version"] == "old"
    refusal = gate_refusal(next_day, _variant("new", 0.60, "abc"))
    assert "worse than the serving fresh-2, as measured on old (0.66)" in refusal
    assert "--report" in gate_refusal(next_day, _variant("new", None, "abc"))
    assert gate_refusal(next_day, _variant("new", 0.70, "abc")) is None
