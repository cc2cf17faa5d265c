"""The trainer's stages on a tiny slice: generic JSONL data, init-model, SFT (loss goes down, resume gives
the same state), and a servable checkpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract.checkpoint import open_checkpoint
from contract.evidence import UNSTATED_KINDS
from contract.sequence import SequenceRanker
from loadtest.procs import REPO_ROOT
from service.model_manager import evidence_refresh_of
from tests.files import not_world_readable
from tests.trainer_cli import train, train_fails
from trainer.progress import read_steps

# the statistics count co-purchases (format v5), so the stages are tested on the newest format end to end; the
# shipped checkpoint's tests cover the recipe's v3
TINY = ["--vocab-size", "1024", "--hidden-size", "64", "--intermediate-size", "128", "--layers", "2",
        "--heads", "2", "--kv-heads", "1", "--pretrain-epochs", "0", "--co-bought"]  # fmt: skip
# SFT and RL as these tests were written for (the CLI's defaults are now the shipped recipe, slower to run)
SMALL_SFT = ["--targets-per-user", "1", "--none-fraction", "0", "--teacher-calibration-users", "100"]
SMALL_RL = ["--served-users-per-step", "0", "--served-objective", "pl", "--rationale-credit", "rollout"]


@pytest.fixture(scope="module")
def tiny_model(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "init"
    train("init-model", "--out", str(out), "--data", str(tiny_data), *TINY)
    return out


def test_init_model_is_deterministic(tiny_data, tiny_model, tmp_path):
    again = tmp_path / "again"
    train("init-model", "--out", str(again), "--data", str(tiny_data), *TINY)
    assert open_checkpoint(again).model_version == open_checkpoint(tiny_model).model_version


def test_sft_loss_goes_down_and_output_is_servable(tiny_data, tiny_model, tmp_path):
    result = train("sft", "--base", str(tiny_model), "--out", str(tmp_path / "sft"), "--data", str(tiny_data),
                   "--users", "100", "--steps", "40", "--batch-size", "8", "--lr", "3e-3", *SMALL_SFT)  # fmt: skip
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["loss_last_10"] < 0.8 * summary["loss_first_10"], summary
    assert summary["skipped_updates"] == 0
    checkpoint = open_checkpoint(tmp_path / "sft" / "model")  # manifest written, format and answer ids checked
    assert checkpoint.model_version.startswith("sft-")
    assert checkpoint.manifest.provenance["stage"] == "sft"


def test_sft_resume_gives_the_same_state(tiny_data, tiny_model, tmp_path):
    common = ["--base", str(tiny_model), "--data", str(tiny_data), "--users", "40", "--batch-size", "4", *SMALL_SFT]
    train("sft", *common, "--out", str(tmp_path / "straight"), "--steps", "20")
    train("sft", *common, "--out", str(tmp_path / "resumed"), "--steps", "20", "--stop-after", "10")  # interrupted
    train("sft", *common, "--out", str(tmp_path / "resumed"), "--steps", "20")  # resumes from state.pt
    straight = json.loads((tmp_path / "straight" / "sft_log.json").read_text())["losses"]
    resumed = json.loads((tmp_path / "resumed" / "sft_log.json").read_text())["losses"]
    assert len(resumed) == len(straight) == 20
    assert resumed == pytest.approx(straight, rel=1e-5)
    # the step log a plot is drawn from: one line per step, the resumed run's without repeats or gaps
    steps = read_steps(tmp_path / "resumed" / "sft_steps.jsonl")
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert [r["loss"] for r in steps] == pytest.approx(straight, rel=1e-5)


def test_eval_baselines_and_metrics(tiny_data, tmp_path):
    """Baselines only (fast): the report has every metric with a CI and random sits near its expectation."""
    train("eval", "--data", str(tiny_data), "--users", "150", "--out", str(tmp_path / "eval"))
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    report = written["results"]
    assert set(report) == {"random", "popularity", "popularity (all pre-test)", "co-occurrence + pop",
                           "co-occurrence, all history + pop", "co-occurrence, all pre-test + pop",
                           "evidence model (the teacher's logistic)"}  # fmt: skip
    assert written["paired_differences"] == {}  # paired differences are for models, never baseline vs baseline
    for metrics in report.values():
        for name in ("ndcg@10", "hr@5", "hr@10", "mrr"):
            assert metrics[name]["ci_low"] <= metrics[name]["mean"] <= metrics[name]["ci_high"]
    assert 0.1 < report["random"]["ndcg@10"]["mean"] < 0.35
    assert (tmp_path / "eval" / "eval.png").stat().st_size > 0
    ranks = json.loads((tmp_path / "eval" / "ranks.json").read_text())
    assert len(ranks["users"]) == len(set(ranks["users"])) == 150 and set(ranks["ranks"]) == set(report)
    assert all(0 <= r < 20 for per_user in ranks["ranks"].values() for r in per_user)
    assert "NDCG@10" in (tmp_path / "eval" / "eval.md").read_text()


def test_metrics_on_fixed_lists():
    from trainer.evaluation.metrics import metrics_with_ci, positive_rank

    assert positive_rank([0.9, 0.1, 0.5], ["t", "a", "b"], "t") == 0
    assert positive_rank([0.5, 0.5, 0.1], ["t", "a", "b"], "t") == 1  # a tie counts against the target
    m = metrics_with_ci([0, 0, 1, 10])
    assert m["hr@10"]["mean"] == pytest.approx(0.75) and m["mrr"]["mean"] == pytest.approx((1 + 1 + 0.5 + 1 / 11) / 4)


def test_pretest_baselines_count_validation_items_never_test_targets_and_only_on_the_test_split():
    from trainer.data import Catalogue, UserSplit
    from trainer.evaluation.baselines import (
        CO_OCCURRENCE_ALL,
        POPULARITY,
        PRETEST_CO_OCCURRENCE,
        PRETEST_POPULARITY,
        baseline_scorers,
    )
    from trainer.evaluation.cases import EvalCase

    splits = [
        UserSplit("u1", ["a", "b"], "v", "t1"),
        UserSplit("u2", ["a"], "v", "b"),
        UserSplit("u3", ["b"], "a", "v"),
    ]
    catalogue = Catalogue({i: i for i in ("a", "b", "v", "t1")})
    case = EvalCase("u1", ["a", "b", "v"], ["t1", "a", "b", "v"], "t1")
    test_rows = baseline_scorers(splits, catalogue, None, None, 0)  # type: ignore[arg-type]
    assert test_rows[POPULARITY]([case]) == [[0.0, 2.0, 2.0, 0.0]]
    assert test_rows[PRETEST_POPULARITY]([case]) == [[0.0, 3.0, 2.0, 2.0]]  # "b" as u2's test target not counted
    # "a" followed "b" (u3's validation item) and "v" followed "a" and "b" (u1, u2): counted only pre-test
    assert test_rows[CO_OCCURRENCE_ALL]([case])[0][1:] == pytest.approx([2 / 3, 1 + 2 / 3, 0.0])
    assert test_rows[PRETEST_CO_OCCURRENCE]([case])[0][1:] == pytest.approx([1 + 3 / 4, 1 + 2 / 4, 3 + 2 / 4])
    selection_rows = baseline_scorers(splits, catalogue, None, None, 0, split="selection")  # type: ignore[arg-type]
    assert PRETEST_POPULARITY not in selection_rows and PRETEST_CO_OCCURRENCE not in selection_rows


def test_data_stage_candidate_sets(tiny_data, tmp_path):
    """Seeded, 1 + N candidates, negatives never from the user's items, no test target in training rows."""
    train("data", "--out", str(tmp_path / "a"), "--data", str(tiny_data), "--negatives", "9")
    train("data", "--out", str(tmp_path / "b"), "--data", str(tiny_data), "--negatives", "9")
    train("data", "--out", str(tmp_path / "pop"), "--data", str(tiny_data), "--negatives", "9",
          "--negatives-from", "popularity")  # fmt: skip
    assert (tmp_path / "a" / "test.jsonl").read_text() == (tmp_path / "b" / "test.jsonl").read_text()
    rows = {
        s: [json.loads(line) for line in (tmp_path / "a" / f"{s}.jsonl").open()] for s in ("train", "valid", "test")
    }
    test_targets = {r["user_id"]: r["target"] for r in rows["test"]}
    for split, split_rows in rows.items():
        assert split_rows, split
        for row in split_rows:
            assert len(row["candidates"]) == 10 and row["candidates"][0] == row["target"]
            assert len(set(row["candidates"])) == 10
            assert not set(row["candidates"][1:]) & set(row["history"])
            if split == "train":
                assert test_targets[row["user_id"]] not in row["candidates"] + row["history"]
    pop_rows = [json.loads(line) for line in (tmp_path / "pop" / "train.jsonl").open()]
    assert pop_rows and all(len(r["candidates"]) == 10 for r in pop_rows)


TINY_SEQREC = ["--hidden-size", "16", "--layers", "1", "--batch-tokens", "256"]


@pytest.fixture(scope="module")
def ranker_seqrec(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """The ranker's sequence models as `make seqrec-ranker` trains them: (shipped: valid, examples: sft)."""
    root = tmp_path_factory.mktemp("ranker-seqrec")
    train("seqrec", "--data", str(tiny_data), "--out", str(root / "sft"), "--horizon", "sft", "--epochs", "2",
          *TINY_SEQREC)  # fmt: skip
    train("seqrec", "--data", str(tiny_data), "--out", str(root / "valid"), "--horizon", "valid", "--epochs", "1",
          "--init", str(root / "sft"), "--curve-users", "20", *TINY_SEQREC)  # fmt: skip
    return root / "valid", root / "sft"


@pytest.fixture(scope="module")
def tiny_sft(tiny_data, tiny_model, ranker_seqrec, tmp_path_factory) -> Path:
    """SFT as `make train` runs it: the evidence states the next-item rank, the checkpoint ships the model; a share
    of its examples are retrieved candidates (150 users hold few hits to fit their verdict model on: one is enough
    here)."""
    out = tmp_path_factory.mktemp("sft")
    shipped, examples = ranker_seqrec
    train("sft", "--base", str(tiny_model), "--out", str(out), "--data", str(tiny_data), "--users", "60",
          "--steps", "20", "--batch-size", "4", "--lr", "3e-3", *SMALL_SFT, "--none-fraction", "0.3",
          "--retrieval-share", "0.3", "--teacher-retrieval-hits", "1",
          "--sequence-model", str(shipped), "--example-sequence-model", str(examples))  # fmt: skip
    return out / "model"


def test_sft_ships_the_sequence_model_and_refuses_one_that_saw_its_targets(tiny_data, tiny_model, tiny_sft,
                                                                           ranker_seqrec, tmp_path):  # fmt: skip
    from contract import prompt

    checkpoint = open_checkpoint(tiny_sft)
    shipped, examples = ranker_seqrec
    assert checkpoint.manifest.prompt_format == prompt.PROMPT_FORMAT and checkpoint.sequence is not None
    assert checkpoint.manifest.sequence_version == SequenceRanker.load(shipped).version
    provenance = checkpoint.manifest.provenance
    assert len(provenance["teacher_verdict_model"]["weights"]) == 13  # the rank's two, the co-purchases' one
    assert checkpoint.manifest.candidate_sources == ["catalogue", "retrieval"]
    assert provenance["teacher_config"]["shared_word"] == "quote"  # how its teacher's line cited shared words
    retrieval = provenance["teacher_verdict_model_retrieval"]  # fitted on a retriever's negatives: other weights
    assert len(retrieval["weights"]) == 13 and retrieval != provenance["teacher_verdict_model"]
    common = ["--base", str(tiny_model), "--data", str(tiny_data), "--users", "20", "--steps", "1", *SMALL_SFT]
    # examples stated by the shipped (valid-horizon) model: it trained on SFT's targets
    refused = train_fails("sft", *common, "--out", str(tmp_path / "a"), "--sequence-model", str(shipped),
                          "--example-sequence-model", str(shipped))  # fmt: skip
    assert "--horizon sft" in refused
    refused = train_fails("sft", *common, "--out", str(tmp_path / "b"), "--sequence-model", str(examples),
                          "--example-sequence-model", str(examples))  # fmt: skip
    assert "--horizon valid" in refused
    # hard negatives are the examples' sequence model's top items: without one there are none to draw
    refused = train_fails("sft", *common, "--out", str(tmp_path / "d"), "--hard-negatives", "1")
    assert "--hard-negatives" in refused
    refused = train_fails("sft", *common, "--out", str(tmp_path / "e"), "--retrieval-share", "0.3")
    assert "--retrieval-share" in refused
    # a catalogue whose retriever (here its top item) rarely holds the next item: trained on catalogue candidates
    degrading = train("sft", *common, "--out", str(tmp_path / "f"), "--sequence-model", str(shipped),
                      "--example-sequence-model", str(examples), "--retrieval-share", "1.0", "--negatives", "1",
                      "--hard-pool", "1")  # fmt: skip
    assert "catalogue candidates only" in degrading.stderr, degrading.stderr[-2000:]
    degraded = open_checkpoint(tmp_path / "f" / "model").manifest
    assert degraded.candidate_sources == ["catalogue"], degraded.candidate_sources
    assert "teacher_verdict_model_retrieval" not in degraded.provenance
    assert degraded.provenance["config"]["retrieval_share"] == 0.0
    # a warm start may only add positions
    refused = train_fails("seqrec", "--data", str(tiny_data), "--out", str(tmp_path / "c"), "--horizon", "sft",
                          "--init", str(shipped), *TINY_SEQREC)  # fmt: skip
    assert "later than" in refused


@pytest.fixture(scope="module")
def tiny_seqrec(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seqrec")
    train("seqrec", "--data", str(tiny_data), "--out", str(out), "--epochs", "2", "--hidden-size", "16",
          "--layers", "1", "--batch-tokens", "256")  # fmt: skip
    return out


def test_seqrec_row_in_every_report_and_never_on_positions_it_trained_on(tiny_data, tiny_seqrec, tmp_path):
    train("eval", "--data", str(tiny_data), "--users", "100", "--seqrec", str(tiny_seqrec), "--out", str(tmp_path))
    report = json.loads((tmp_path / "eval.json").read_text())
    seqrec = report["results"]["sequence model (SASRec)"]["ndcg@10"]
    assert 0.0 <= seqrec["ci_low"] <= seqrec["mean"] <= seqrec["ci_high"] <= 1.0
    assert report["sequence_model"]["config"]["horizon"] == "test" and len(report["sequence_model"]["curve"]) == 2
    # trained through the validation targets: the selection split (validation positions) is refused
    refused = train_fails("eval", "--data", str(tiny_data), "--split", "selection", "--seqrec", str(tiny_seqrec),
                          "--out", str(tmp_path / "selection"))  # fmt: skip
    assert "--horizon valid" in refused
    # one that stops before them is scored there, and measured after every epoch (the learning curve)
    valid = tmp_path / "valid"
    train("seqrec", "--data", str(tiny_data), "--out", str(valid), "--horizon", "valid", "--epochs", "1",
          "--hidden-size", "16", "--layers", "1", "--batch-tokens", "256", "--curve-users", "20")  # fmt: skip
    assert 0.0 <= read_steps(valid / "seqrec_steps.jsonl")[0]["selection_ndcg@10"] <= 1.0
    train("eval", "--data", str(tiny_data), "--split", "selection", "--seqrec", str(valid),
          "--out", str(tmp_path / "s"))  # fmt: skip


def test_eval_takes_a_sequence_models_top_items_as_negatives_on_any_catalogue(tiny_data, tiny_seqrec, tmp_path):
    """`eval --retriever-model`: SASRec-hard cases without a retriever file, refused where the model has seen the
    split's targets, and never beside a retriever file."""
    train("eval", "--data", str(tiny_data), "--users", "50", "--retriever-model", str(tiny_seqrec),
          "--out", str(tmp_path / "top"))  # fmt: skip
    report = json.loads((tmp_path / "top" / "eval.json").read_text())
    assert "19 sequence-model top negatives" in report["title"]
    random_order = report["results"]["random"]["ndcg@10"]["mean"]
    assert 0.0 <= random_order <= 1.0
    refused = train_fails("eval", "--data", str(tiny_data), "--split", "selection", "--retriever-model",
                          str(tiny_seqrec), "--out", str(tmp_path / "selection"))  # fmt: skip
    assert "--retriever-model" in refused and "--horizon valid" in refused
    refused = train_fails("eval", "--data", str(tiny_data), "--retriever", "sasrec", "--retriever-model",
                          str(tiny_seqrec), "--out", str(tmp_path / "both"))  # fmt: skip
    assert "one source of negatives" in refused


def test_eval_tells_a_model_trained_on_retrieved_candidates_that_a_retrievers_are(tiny_data, tiny_sft, tiny_seqrec,
                                                                                 tmp_path):  # fmt: skip
    """Through the service's code: the request says candidate_source=retrieval, the report says so, and the
    model's teacher's verdict model for retrieved candidates gets a row beside the plain one."""
    train("eval", "--data", str(tiny_data), "--users", "20", "--retriever-model", str(tiny_seqrec), "--model",
          str(tiny_sft), "--reasoning", "none", "--out", str(tmp_path / "told"))  # fmt: skip
    report = json.loads((tmp_path / "told" / "eval.json").read_text())
    assert "candidate_source=retrieval" in report["title"]
    version = open_checkpoint(tiny_sft).model_version
    assert report["model_evidence"][version]["candidate_source"] == "retrieval"
    from trainer.evaluation.baselines import EVIDENCE_MODEL, RETRIEVAL_EVIDENCE_MODEL

    assert {EVIDENCE_MODEL, RETRIEVAL_EVIDENCE_MODEL} <= set(report["results"])
    assert f"{version} (none) − {RETRIEVAL_EVIDENCE_MODEL}" in report["paired_differences"]


def test_refresh_swaps_in_fresher_evidence_and_is_refused_where_it_would_leak(tiny_data, tiny_model, tiny_sft,
                                                                            tiny_seqrec, tmp_path):  # fmt: skip
    """The same LLM reads a sequence model trained through the validation targets and statistics counted on the
    same positions; a new model_version keys the cache; the selection split and RL refuse what saw their targets."""
    from contract.evidence import EvidenceStats
    from trainer.data import load_splits

    base = tiny_sft
    out = tmp_path / "refreshed"
    previous = os.umask(0o077)  # the command inherits it: a service running as another user must still read out
    try:
        train("refresh", "--model", str(base), "--sequence-model", str(tiny_seqrec), "--data", str(tiny_data),
              "--out", str(out))  # fmt: skip
    finally:
        os.umask(previous)
    assert not_world_readable(out) == []
    before, after = open_checkpoint(base), open_checkpoint(out)
    assert after.model_version != before.model_version and after.model_version.startswith("sft-")
    assert (out / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()
    assert after.sequence.version == SequenceRanker.load(tiny_seqrec).version != before.sequence.version
    catalogue, splits = load_splits(tiny_data)
    expected = EvidenceStats.from_sequences([s.test_history for s in splits], catalogue.titles, co_bought=True)
    assert after.stats.version == expected.version != before.stats.version
    assert after.manifest.prompt_format == before.manifest.prompt_format  # co-purchases recounted, not dropped
    assert after.manifest.candidate_sources == before.manifest.candidate_sources == ["catalogue", "retrieval"]
    target = splits[0].valid_target  # counted now: the refreshed statistics have seen the validation targets
    assert after.stats.popularity(target) > before.stats.popularity(target)
    assert after.manifest.provenance["refresh"]["horizon"] == "test"
    assert after.manifest.provenance["refresh"]["from_model_version"] == before.model_version
    refused = train_fails("eval", "--data", str(tiny_data), "--split", "selection", "--model", str(out),
                          "--users", "20", "--out", str(tmp_path / "selection"))  # fmt: skip
    assert "refreshed to horizon 'test'" in refused and "selection split" in refused
    refused = train_fails("rl", "--data", str(tiny_data), "--base", str(out), "--out", str(tmp_path / "rl"))
    assert "refreshed to horizon 'test'" in refused and "--base" in refused
    refused = train_fails("refresh", "--model", str(tiny_model), "--sequence-model", str(tiny_seqrec),
                          "--data", str(tiny_data), "--out", str(tmp_path / "v2"))  # fmt: skip
    assert "states no next-item rank" in refused
    # every interaction (what a product serves; warm-started from the checkpoint's own, as docs/deploy.md does):
    # no report can score it, nor the sequence model alone
    everything = tmp_path / "seqrec-all"
    train("seqrec", "--data", str(tiny_data), "--out", str(everything), "--horizon", "all", "--epochs", "1",
          "--hidden-size", "16", "--layers", "1", "--batch-tokens", "256",
          "--init", str(out / "sequence"))  # fmt: skip
    result = train("refresh", "--model", str(out), "--sequence-model", str(everything), "--data", str(tiny_data),
                   "--out", str(tmp_path / "served"))  # fmt: skip
    assert f"in place of a checkpoint with the weights {before.model_version}" in result.stdout
    served = open_checkpoint(tmp_path / "served")
    assert served.manifest.weights_version == after.manifest.weights_version == before.model_version
    assert evidence_refresh_of(after, served) and not evidence_refresh_of(before, after)  # the gate's no-report rule
    assert served.stats.popularity(splits[0].test_target) > after.stats.popularity(splits[0].test_target)
    refused = train_fails("eval", "--data", str(tiny_data), "--model", str(tmp_path / "served"), "--users", "20",
                          "--out", str(tmp_path / "test"))  # fmt: skip
    assert "refreshed to horizon 'all'" in refused and "test targets" in refused
    refused = train_fails("eval", "--data", str(tiny_data), "--seqrec", str(everything), "--users", "20",
                          "--out", str(tmp_path / "test"))  # fmt: skip
    assert "horizon 'all'" in refused


def test_rl_resume_gives_the_same_state_and_a_servable_checkpoint(tiny_data, tiny_sft, tmp_path):
    common = ["--base", str(tiny_sft), "--data", str(tiny_data), "--users", "40", "--negatives", "5",
              "--rollouts", "2", "--users-per-step", "1", "--steps", "4", "--lr", "1e-3", *SMALL_RL]  # fmt: skip
    straight = train("rl", *common, "--out", str(tmp_path / "straight"))
    train("rl", *common, "--out", str(tmp_path / "resumed"), "--stop-after", "2")  # interrupted after step 2
    train("rl", *common, "--out", str(tmp_path / "resumed"))
    logs = [json.loads((tmp_path / run / "rl_log.json").read_text())["log"] for run in ("straight", "resumed")]
    assert len(logs[0]) == len(logs[1]) == 4
    steps = read_steps(tmp_path / "resumed" / "rl_steps.jsonl")
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and steps[-1]["reward"] == pytest.approx(logs[1][-1]["reward"])
    for a, b in zip(*logs, strict=True):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6) and a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for row in logs[0]:
        assert 0 <= row["reward"] <= 1 and row["kl"] >= 0 and row["rationale_tokens"] >= 0
        assert row["update_applied"] and row["grad_norm"] > 0
    summary = json.loads(straight.stdout.strip().splitlines()[-1])
    assert summary["skipped_updates"] == 0
    checkpoint = open_checkpoint(tmp_path / "straight" / "model")
    assert summary["model_version"] == checkpoint.model_version and checkpoint.model_version.startswith("rl-")
    assert checkpoint.manifest.provenance["stage"] == "rl"


@pytest.mark.engine
def test_eval_scores_a_model_through_vllm_and_export_records_its_metrics(
    tiny_data, tiny_sft, tiny_seqrec, tmp_path, demo, log_dir
):
    train("eval", "--model", str(tiny_sft), "--data", str(tiny_data), "--users", "30", "--out", str(tmp_path / "e"))
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    version = open_checkpoint(tiny_sft).model_version
    assert {f"{version} (full)", f"{version} (none)"} <= set(report["results"])
    assert f"{version} (full) − popularity" in report["paired_differences"]
    assert report["model_evidence"][version]["horizon"] == "valid"  # trained, not refreshed: training prefixes
    assert f"{version} (full) − co-occurrence + pop" in report["paired_differences"]
    faithful = report["faithfulness"][f"{version} (full)"]  # every full-mode rationale checked against its evidence
    assert faithful["rationales"] == 30 * 20 and 0.0 <= faithful["model_faithful_share"] <= 1.0
    assert faithful["served_faithful_share"] == 1.0  # an unfaithful rationale is never served
    by_claim = faithful["withheld_by_claim"]  # the service's own count: each withheld rationale under 1+ kinds
    assert set(by_claim) <= set(UNSTATED_KINDS)
    assert faithful["withheld"] <= sum(by_claim.values()) <= faithful["withheld"] * len(UNSTATED_KINDS)
    assert ("What the withheld rationales cited" in (tmp_path / "e" / "eval.md").read_text()) == bool(by_claim)
    # a later report on the same users pairs with these model rows without scoring the model again
    train("eval", "--data", str(tiny_data), "--users", "30", "--seqrec", str(tiny_seqrec), "--reuse",
          str(tmp_path / "e" / "ranks.json"), "--out", str(tmp_path / "again"))  # fmt: skip
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    earlier, later = (json.loads((tmp_path / d / "ranks.json").read_text()) for d in ("e", "again"))
    assert later["ranks"][f"{version} (full)"] == earlier["ranks"][f"{version} (full)"]
    assert f"{version} (full) − sequence model (SASRec)" in again["paired_differences"]
    assert again["faithfulness"] == report["faithfulness"]
    other_users = train_fails("eval", "--data", str(tiny_data), "--users", "20", "--reuse",
                              str(tmp_path / "e" / "ranks.json"), "--out", str(tmp_path / "other"))  # fmt: skip
    assert "other users" in other_users
    train("export", "--model", str(tiny_sft), "--out", str(tmp_path / "served"), "--report", str(tmp_path / "e" /
          "eval.json"))  # fmt: skip
    exported = open_checkpoint(tmp_path / "served")
    assert exported.model_version == version  # same bytes, same version (the score cache stays valid)
    assert exported.manifest.metrics["ndcg@10"] == report["results"][f"{version} (full)"]["ndcg@10"]["mean"]
    assert (
        exported.sequence is not None
        and exported.manifest.sequence_version == open_checkpoint(tiny_sft).manifest.sequence_version
    )
    _serve_own_catalogue(tmp_path / "served", tiny_data, demo, log_dir)


def _serve_own_catalogue(model: Path, data: Path, demo, log_dir: Path) -> None:
    """A team's path after training: serve the exported model, `r2rank-serve load` the catalogue it was trained on,
    rank a user by id: the reply comes from that model, with its evidence (the next-item rank included)."""
    import uuid

    import httpx

    from loadtest.procs import delete_prefix, start_service
    from tests.conftest import REDIS_URL

    prefix = f"r2rtest-own-{uuid.uuid4().hex[:8]}"
    env = {"R2RANK_REDIS_URL": REDIS_URL, "R2RANK_REDIS_PREFIX": prefix}
    loaded = subprocess.run([sys.executable, "-m", "service.cli", "load", str(data), "--quiet"], cwd=REPO_ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert loaded.returncode == 0 and "150 user histories" in loaded.stdout, loaded.stderr[-2000:]
    server = start_service(log_dir, env={**env, "R2RANK_MODEL_PATH": str(model)})
    try:
        server.wait_ready("/readyz")
        user = demo.users[3]
        body = {"user_id": user.user_id, "candidates": [{"item_id": i} for i in user.candidates],
                "include_evidence": True, "reasoning": "none"}  # fmt: skip
        reply = httpx.post(f"{server.url}/rank", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        result = reply.json()
        assert result["model_version"] == open_checkpoint(model).model_version
        ranks = [item["evidence"]["next_item"]["rank"] for item in result["items"]]
        assert all(rank is None or rank >= 1 for rank in ranks) and any(rank is not None for rank in ranks)
        assert all(item["evidence"]["text"].startswith("next-item rank ") for item in result["items"])
        assert all(isinstance(item["evidence"]["co_bought"], int) for item in result["items"])  # format v5
    finally:
        server.stop()
        delete_prefix(prefix)


def test_diagnose_compares_served_teacher_and_none_scores(tiny_data, tiny_sft, tmp_path):
    result = train("diagnose", "--model", str(tiny_sft), "--data", str(tiny_data), "--users", "12", "--out",
                   str(tmp_path / "d.json"))  # fmt: skip
    report = json.loads((tmp_path / "d.json").read_text())
    assert set(report["ndcg@10"]) == {"served", "teacher", "none", "clauses"} and report["users"] == 12
    assert all(0.0 <= m["mean"] <= 1.0 for m in report["ndcg@10"].values())
    assert set(report["clause_agreement"]) == {"link", "co-bought", "shared word", "popularity", "titles", "verdict"}
    assert "teacher's rationale forced" in result.stdout


def test_init_model_with_lm_pretraining_learns_and_resumes(tiny_data, tmp_path):
    """LM pre-training on training sequences: loss goes down; an interrupted run resumes to the same weights."""
    args = ["--data", str(tiny_data), *TINY, "--pretrain-epochs", "4", "--pretrain-batch-size", "8"]
    train("init-model", "--out", str(tmp_path / "straight"), *args)
    train("init-model", "--out", str(tmp_path / "resumed"), *args, "--stop-after", "30")
    train("init-model", "--out", str(tmp_path / "resumed"), *args)
    straight, resumed = open_checkpoint(tmp_path / "straight"), open_checkpoint(tmp_path / "resumed")
    provenance = straight.manifest.provenance
    assert provenance["pretrain_loss_last_10"] < 0.8 * provenance["pretrain_loss_first_10"], provenance
    assert straight.model_version == resumed.model_version  # same bytes after the resume
    # a finished run is not pre-trained again: `make train` reruns every stage and only the unfinished ones work
    logged = (tmp_path / "straight" / "pretrain_steps.jsonl").read_text()
    rerun = train("init-model", "--out", str(tmp_path / "straight"), *args)
    assert "is finished" in rerun.stdout and straight.model_version in rerun.stdout
    assert (tmp_path / "straight" / "pretrain_steps.jsonl").read_text() == logged
    assert open_checkpoint(tmp_path / "straight").model_version == straight.model_version


def test_bad_input_gets_clear_errors_naming_file_line_and_field(tiny_data, tiny_model, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(tiny_data / "items.jsonl", bad / "items.jsonl")
    lines = (tiny_data / "interactions.jsonl").read_text().splitlines()

    (bad / "interactions.jsonl").write_text("\n".join([*lines[:3], "{not json", *lines[3:]]) + "\n")
    message = train_fails("data", "--out", str(tmp_path / "o"), "--data", str(bad))
    assert "interactions.jsonl:4: invalid JSON" in message

    unknown = json.dumps({"user_id": "u", "item_id": "no-such-item", "timestamp": 1})
    (bad / "interactions.jsonl").write_text("\n".join([*lines[:5], unknown]) + "\n")
    message = train_fails("data", "--out", str(tmp_path / "o"), "--data", str(bad))
    assert "interactions.jsonl:6: field 'item_id': unknown item 'no-such-item'" in message

    short = [json.dumps({"user_id": f"u{i}", "item_id": json.loads(lines[i])["item_id"], "timestamp": 0})
             for i in range(40)]  # fmt: skip
    (bad / "interactions.jsonl").write_text("\n".join(short) + "\n")  # 40 users with one item each
    assert "40 of 40 users have fewer than 3 interactions" in train_fails("data", "--out", str(tmp_path / "o"),
                                                                         "--data", str(bad))  # fmt: skip

    other = tmp_path / "other-format"
    shutil.copytree(tiny_model, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "prompt_format": "someone-elses-v9"}))
    message = train_fails("sft", "--base", str(other), "--out", str(tmp_path / "s"), "--data", str(tiny_data))
    assert "manifest.json" in message and "someone-elses-v9" in message


def test_init_model_from_a_local_base_model(tiny_model, tmp_path):
    """--base-model: a plain HF checkpoint (no r2rank manifest) becomes a servable starting point for sft."""
    raw = tmp_path / "raw-hf"
    shutil.copytree(tiny_model, raw, ignore=shutil.ignore_patterns("manifest.json", "*.jsonl"))
    train("init-model", "--out", str(tmp_path / "base"), "--base-model", str(raw), "--name", "qwen-like")
    checkpoint = open_checkpoint(tmp_path / "base")
    assert checkpoint.model_version.startswith("qwen-like-")
    assert checkpoint.manifest.provenance["base_model"] == str(raw)
    assert not (raw / "manifest.json").exists()  # the source directory is left untouched


def test_every_cli_option_has_help_and_the_recipe_as_default():
    """The CLI's defaults are the config dataclasses' (the shipped recipe), and every option says what it does."""
    import dataclasses

    import typer.main

    from trainer.cli import app
    from trainer.config import PretrainConfig, RLConfig, SFTConfig, TinyModelConfig

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"r2rank-train {name} --{param.name} has no help text"
    defaults = {name: {p.name: p.default for p in command.params} for name, command in group.commands.items()}
    renamed = {"num_hidden_layers": "layers", "num_attention_heads": "heads", "num_key_value_heads": "kv_heads"}
    for command, config, prefix in (("sft", SFTConfig, ""), ("rl", RLConfig, ""), ("init-model", TinyModelConfig, ""),
                                    ("init-model", PretrainConfig, "pretrain_")):  # fmt: skip
        for field in dataclasses.fields(config):
            option = renamed.get(field.name, prefix + field.name)
            if option in defaults[command]:
                assert defaults[command][option] == field.default, (command, option)


def test_a_run_resumes_only_what_the_same_data_and_settings_started(tiny_data, tmp_path):
    """Every stage records what made its run; another dataset (or settings) in the same directory is refused,
    naming what differs, and --restart starts over."""
    other = tmp_path / "other-data"
    shutil.copytree(tiny_data, other)
    with (other / "interactions.jsonl").open("a") as handle:
        handle.write(json.dumps({"user_id": "new", "item_id": json.loads(
            (tiny_data / "items.jsonl").read_text().splitlines()[0])["item_id"], "timestamp": 1}) + "\n")  # fmt: skip
    out = tmp_path / "seqrec"
    args = ["seqrec", "--out", str(out), "--epochs", "1", *TINY_SEQREC]
    train(*args, "--data", str(tiny_data))
    unboxed = lambda text: re.sub(r"[\s│╭╮╰╯─]+", " ", text)  # noqa: E731 - the error box wraps at any width
    refused = unboxed(train_fails(*args, "--data", str(other)))
    assert "another dataset" in refused and "--restart" in refused
    more_epochs = ["seqrec", "--out", str(out), "--epochs", "2", *TINY_SEQREC, "--data", str(tiny_data)]
    assert "settings (epochs: 1 → 2)" in unboxed(train_fails(*more_epochs))
    train(*args, "--data", str(other), "--restart")
    manifest_like = json.loads((out / "seqrec.json").read_text())["provenance"]
    from trainer.runs import data_fingerprint

    assert manifest_like["data_fingerprint"] == data_fingerprint(other) != data_fingerprint(tiny_data)
