"""The hot-reload eval gate (``service.model_manager.gate_refusal``): scores compared on one dataset only."""

from __future__ import annotations

from dataclasses import replace

from contract.checkpoint import open_checkpoint
from loadtest.procs import DEFAULT_MODEL
from service.model_manager import gate_refusal

SHIPPED = open_checkpoint(DEFAULT_MODEL)


def _variant(version: str, ndcg: float | None, data: str | None):
    provenance = {**SHIPPED.manifest.provenance, "data_fingerprint": data}
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
