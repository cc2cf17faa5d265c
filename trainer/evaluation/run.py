"""One evaluation, as ``r2rank-train eval`` runs it: the cases, every baseline, the model(s) through the
service's code, paired differences, the report, and the per-user ranks (``ranks.json``) that let a later
report pair with this one on the same users without scoring its models again (``reuse``)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contract.evidence import EvidenceStats
from contract.prompt import CandidateSource
from contract.sequence import SequenceRanker
from trainer.data import Catalogue, UserSplit
from trainer.evaluation.baselines import COMPARED, EVIDENCE_MODEL, SEQUENCE_MODEL, baseline_scorers
from trainer.evaluation.cases import EvalCase, Split, build_cases, sequences_before
from trainer.evaluation.metrics import metrics_with_ci, paired_difference, positive_rank
from trainer.evaluation.report import write_report
from trainer.refresh import RefreshError, refuse_seen_targets
from trainer.seqrec import SequenceModel
from trainer.teacher import (
    TITLE_VERDICT_PROVENANCE,
    VERDICT_PROVENANCE,
    BuiltinTeacher,
    EvidenceModel,
    TitleReadingModel,
    recorded_verdicts,
)

RANKS = "ranks.json"


class EvalError(ValueError):
    """An evaluation that would not be honest or cannot run; the message names the option."""


@dataclass(frozen=True)
class EvalPlan:
    models: Sequence[Path]  # checkpoints, in the order their later − earlier differences are taken
    modes: Sequence[str]  # reasoning modes each model is scored in
    users: int
    negatives: int
    split: Split
    seed: int
    out: Path
    command: str
    retriever_name: str | None = None
    retriever: Mapping[str, list[str]] | None = None
    sequence_model: Path | None = None  # a `seqrec` output: its row beside the other baselines
    reuse: Path | None = None  # an earlier report's ranks.json on the same users: its model rows, not re-scored
    candidate_source: Literal["auto", "catalogue", "retrieval"] = "auto"  # what the models are told (auto: below)


def candidate_source_for(checkpoint, plan: EvalPlan) -> CandidateSource:
    """What a model is told its candidates are (``contract.prompt.CandidateSource``). ``auto``: retrieved where the
    negatives are a retriever's and the model was trained on retrieved candidates (as a product that ranks a
    retriever's output would tell it), else catalogue."""
    trained = checkpoint.manifest.candidate_sources
    if plan.candidate_source == "auto":
        return "retrieval" if plan.retriever is not None and "retrieval" in trained else "catalogue"
    if plan.candidate_source not in trained:
        raise EvalError(f"--candidate-source {plan.candidate_source}: {checkpoint.path} was trained on {trained} "
                        "candidates only")  # fmt: skip
    return plan.candidate_source


def load_sequence_model(path: Path, split: Split, option: str = "--seqrec") -> SequenceModel:
    """The sequence model given as ``option``, refused where it has seen the positions it would be scored on."""
    if not SequenceModel.exists(path):
        raise EvalError(f"{option} {path}: no sequence model there (run `r2rank-train seqrec --out {path}`)")
    model = SequenceModel.load(path)
    if model.config.horizon == "all":
        raise EvalError(f"{option} {path}: trained with horizon 'all', on every target a report could score")
    if split == "selection" and model.config.horizon != "valid":
        raise EvalError(f"{option} {path}: trained with horizon {model.config.horizon!r}, which includes the "
                        "selection users' validation targets; the selection split needs one trained with --horizon "
                        "valid")  # fmt: skip
    return model


def reused_rows(
    path: Path, cases: Sequence[EvalCase], baseline_ranks: dict[str, list[int]], own_evidence: bool = True
) -> tuple[dict[str, list[int]], dict[str, dict]]:
    """Model rows (ranks and faithfulness) of an earlier report, only if it was made on exactly these cases: the
    same users, and every baseline both reports have ranked the positive exactly where it does now.
    ``own_evidence=False`` (no --model given): the evidence-model row here is the recipe's, not the reused
    models' teacher's, so it proves nothing about the cases and the caller takes the stored one. The sequence-model
    row is not compared either: adding another sequence model's row (``--seqrec``) is what a reuse is for."""
    stored = json.loads(path.read_text())
    if stored.get("users") != [c.user_id for c in cases]:
        raise EvalError(f"--reuse {path}: made on other users than this evaluation's (same --data, --users, "
                        "--negatives, --retriever, --split and --seed are needed)")  # fmt: skip
    skipped = {SEQUENCE_MODEL} if own_evidence else {SEQUENCE_MODEL, EVIDENCE_MODEL}
    compared = {n: r for n, r in baseline_ranks.items() if n not in skipped}
    differing = [name for name, ranks in compared.items() if stored["ranks"].get(name, ranks) != ranks]
    if differing:
        raise EvalError(f"--reuse {path}: its {', '.join(differing)} rows differ from this evaluation's: not the "
                        "same candidates or statistics, so its models cannot be paired with these rows")  # fmt: skip
    baselines = {"random", *COMPARED}
    names = stored.get("models") or [n for n in stored["ranks"] if n not in baselines]
    report = path.parent / "eval.json"
    faithfulness = json.loads(report.read_text()).get("faithfulness", {}) if report.is_file() else {}
    return {n: stored["ranks"][n] for n in names}, {n: f for n, f in faithfulness.items() if n in names}


def paired_differences(ranks: dict[str, list[int]], models: Sequence[str], modes: Sequence[str]) -> dict[str, dict]:
    """Each model − each baseline it is compared with; full − none of one model; later − earlier models per mode."""
    differences = {}
    for name in models:
        for baseline in (b for b in COMPARED if b in ranks):
            differences[f"{name} − {baseline}"] = paired_difference(ranks[name], ranks[baseline])
        if name.endswith("(full)") and name.replace("(full)", "(none)") in ranks:
            differences[f"{name} − (none)"] = paired_difference(ranks[name], ranks[name.replace("(full)", "(none)")])
    for mode in modes:
        in_mode = [n for n in models if n.endswith(f"({mode})")]
        for earlier, later in itertools.combinations(in_mode, 2):
            differences[f"{later} − {earlier}"] = paired_difference(ranks[later], ranks[earlier])
    return differences


@dataclass(frozen=True)
class EvidenceSource:
    """What the evidence-model row reads: the reference checkpoint's statistics, its sequence model (the
    next-item rank), and the teacher's verdict model that checkpoint learned from (None: fit one here, which
    is only possible without a sequence model: fitting the rank needs one that never saw the fitted positions)."""

    stats: EvidenceStats
    sequence: SequenceRanker | None = None
    verdicts: EvidenceModel | None = None
    title_verdicts: Mapping[str, Any] | None = None  # the teacher's that read the titles too, as recorded

    @classmethod
    def of(cls, checkpoint) -> EvidenceSource:
        """A checkpoint's: with a sequence model, the teacher's verdict weights from its provenance."""
        if checkpoint.sequence is None:
            return cls(checkpoint.stats)
        verdicts = recorded_verdicts(checkpoint.manifest.provenance)
        if verdicts is None:
            raise EvalError(f"{checkpoint.path}: its evidence states a next-item rank but its provenance has no "
                            f"{VERDICT_PROVENANCE} (trained with an LLM teacher?): the evidence-model row cannot "
                            "be fitted here without a leak")  # fmt: skip
        return cls(checkpoint.stats, checkpoint.sequence, verdicts,
                   checkpoint.manifest.provenance.get(TITLE_VERDICT_PROVENANCE))  # fmt: skip


def evaluate(catalogue: Catalogue, splits: Sequence[UserSplit], evidence: EvidenceSource, plan: EvalPlan) -> dict:
    """Run ``plan`` and write its report to ``plan.out``; returns the report."""
    from contract.checkpoint import open_checkpoint
    from trainer.evaluation.serving import Faithfulness, model_ranks

    checkpoints = [open_checkpoint(path) for path in plan.models]
    targets = "validation" if plan.split == "selection" else "test"
    for checkpoint in checkpoints:
        try:
            refuse_seen_targets(checkpoint, targets, f"the {plan.split} split ({targets} positions)")
        except RefreshError as exc:
            raise EvalError(f"--model {exc}") from exc
    sources = [candidate_source_for(checkpoint, plan) for checkpoint in checkpoints]
    told = [checkpoint for checkpoint, source in zip(checkpoints, sources, strict=True) if source == "retrieval"]
    # a row of its own: the teacher's logistic for retrieved candidates of the first model told its are
    retrieval_verdicts = recorded_verdicts(told[0].manifest.provenance, "retrieval") if told else None
    sequence_model = load_sequence_model(plan.sequence_model, plan.split) if plan.sequence_model else None
    cases = build_cases(splits, catalogue, plan.users, plan.negatives, plan.seed, plan.retriever, plan.split)
    verdicts = evidence.verdicts or BuiltinTeacher.calibrated(splits, catalogue, evidence.stats).model
    ranks: dict[str, list[int]] = {}
    title_verdicts = (TitleReadingModel.from_record(evidence.title_verdicts, catalogue,
                                                    sequences_before(splits, plan.split))
                      if evidence.title_verdicts is not None else None)  # fmt: skip
    baselines = baseline_scorers(splits, catalogue, evidence.stats, verdicts, plan.seed, sequence_model,
                                 evidence.sequence, plan.split, retrieval_verdicts, title_verdicts)  # fmt: skip
    for name, scorer in baselines.items():
        ranks[name] = [positive_rank(s, c.candidates, c.target) for s, c in zip(scorer(cases), cases, strict=True)]
    models: list[str] = []  # "<model_version> (<mode>)", in order; baseline names may end in ")" too
    faithfulness: dict[str, dict] = {}
    if plan.reuse is not None:
        reused, faithfulness = reused_rows(plan.reuse, cases, ranks, own_evidence=bool(plan.models))
        if not plan.models and EVIDENCE_MODEL in (stored := json.loads(plan.reuse.read_text())["ranks"]):
            ranks[EVIDENCE_MODEL] = stored[EVIDENCE_MODEL]  # the reused models' teacher's row, not the recipe's
        ranks.update(reused)
        models += list(reused)
    evidence_of: dict[str, dict] = {}  # what each model's evidence was counted on (a refresh moves it later)
    for checkpoint, source in zip(checkpoints, sources, strict=True):
        label = checkpoint.model_version
        evidence_of[label] = {"horizon": checkpoint.evidence_horizon,
                              "stats_version": checkpoint.manifest.stats_version,
                              "sequence_version": checkpoint.manifest.sequence_version,
                              "candidate_source": source}  # fmt: skip
        for mode in plan.modes:
            name = f"{label} ({mode})"
            models.append(name)
            checked = Faithfulness() if mode == "full" else None
            ranks[name] = asyncio.run(model_ranks(checkpoint, catalogue, cases, mode, faithfulness=checked,
                                                  source=source))  # fmt: skip
            if checked is not None:
                faithfulness[name] = checked.summary()
    where = "test users" if plan.split == "test" else "selection users (validation positions)"
    title = f"{len(cases)} {where}, 1 positive + {plan.negatives} {plan.retriever_name or 'random'} negatives"
    if "retrieval" in sources:
        title += " (told to the models trained on retrieved candidates: candidate_source=retrieval)"
    results = {name: metrics_with_ci(r) for name, r in ranks.items()}
    differences = paired_differences(ranks, models, plan.modes)
    details = {}
    if sequence_model is not None:
        details["sequence_model"] = {"path": str(plan.sequence_model), **sequence_model.provenance}
    if evidence_of:
        details["model_evidence"] = evidence_of
    report = write_report(results, plan.out, title, plan.command, differences, faithfulness, details)
    (plan.out / RANKS).write_text(json.dumps({"users": [c.user_id for c in cases], "models": models, "ranks": ranks}))
    return report
