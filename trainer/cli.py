"""``r2rank-train``: one sub-command per stage of making a ranker.

Thin over the stage functions: every option's default and help come from the stage's config dataclass
(``trainer.config``), whose defaults are the shipped recipe and whose checks run when it is built; a failed
check is shown as a usage error naming what to change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from contract.catalogue import item_order
from trainer.config import (
    EvidenceConfig,
    PretrainConfig,
    RationaleCredit,
    RLConfig,
    RolloutEngine,
    SeqRecConfig,
    SeqRecHorizon,
    ServedObjective,
    SFTConfig,
    TeacherApi,
    TeacherConfig,
    TinyModelConfig,
    help_of,
)
from trainer.data import DEFAULT_DATA, DataError, load_splits, sample_negatives, training_titles

app = typer.Typer(help="Build, train and export r2rank ranker checkpoints.", no_args_is_help=True)

DataOption = Annotated[Path, typer.Option(help="Dataset directory: RecBole files or items/interactions JSONL.")]
SeedOption = Annotated[int, typer.Option(help="Seed (weights, examples, sampling, order).")]


def _command_line() -> str:
    return "r2rank-train " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _opt(config: type, name: str, flag: str | None = None) -> Any:
    """A typer option whose help is the config field's."""
    return typer.Option(*([flag] if flag else []), help=help_of(config, name))


def _build(config: type, **values: Any) -> Any:
    try:
        return config(**values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _splits(data: Path):
    try:
        return load_splits(data)
    except DataError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc


RestartOption = Annotated[
    bool, typer.Option("--restart", help="Start over: delete what an earlier run left in the output directory.")
]


def _claim(out: Path, data: Path, base: str | None, *configs, restart: bool = False) -> dict:
    """Record what makes this run in ``out``; refuse to resume a run that other inputs made (``trainer.runs``)."""
    from trainer.runs import RunMismatch, claim_run, run_fingerprint

    fingerprint = run_fingerprint(data, base, *configs)
    try:
        claim_run(out, fingerprint, restart)
    except RunMismatch as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from exc
    return fingerprint


def _checkpoint(path: Path, hint: str):
    """Open a checkpoint or fail with the contract's own message (names the file and field)."""
    from contract.checkpoint import CheckpointError, open_checkpoint

    try:
        return open_checkpoint(path)
    except CheckpointError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")


@app.command("check-data")
def check_data_cmd(
    data: Annotated[Path, typer.Argument(help="A directory with items.jsonl and interactions.jsonl (docs/data.md).")],
) -> None:
    """Check a catalogue before training: every problem with file and line (errors make training refuse;
    warnings are skipped or cut), and how many users each stage of the recipe will get. Exit status 1 on
    errors."""
    from trainer.check_data import check_dataset

    report = check_dataset(data)
    typer.echo(report.render())
    if report.errors:
        raise typer.Exit(1)


@app.command("data")
def data_cmd(
    out: Annotated[Path, typer.Option(help="Directory for train/valid/test candidate sets (JSONL).")],
    data: DataOption = DEFAULT_DATA,
    negatives: Annotated[int, typer.Option(help="Negatives per positive (1 + N candidates).")] = 19,
    kind: Annotated[str, typer.Option("--negatives-from", help="random | popularity | <retriever suffix>")] = "random",
    seed: SeedOption = 0,
) -> None:
    """Leave-one-out splits with seeded candidate sets; no test target enters training data or statistics."""
    from trainer.data import candidate_sets, negative_sampler
    from trainer.evaluation.cases import read_retriever_lists

    catalogue, splits = _splits(data)
    retriever = None
    if kind not in ("random", "popularity"):
        files = sorted(data.glob(f"*.{kind}"))
        if not files:
            raise typer.BadParameter(f"no retriever file {data}/*.{kind}", param_hint="--negatives-from")
        retriever, kind = read_retriever_lists(files[0]), "retriever"
    sampler = negative_sampler(kind, splits, catalogue, retriever)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split_name in ("train", "valid", "test"):
        with (out / f"{split_name}.jsonl").open("w") as handle:
            counts[split_name] = 0
            for row in candidate_sets(splits, split_name, sampler, negatives, seed):
                handle.write(json.dumps(row) + "\n")
                counts[split_name] += 1
    summary = {
        "split_users": len(splits),
        "negatives": negatives,
        "negatives_from": kind,
        "seed": seed,
        "written": counts,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(json.dumps(summary))


@app.command("init-model")
def init_model_cmd(
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    data: DataOption = DEFAULT_DATA,
    name: Annotated[str, typer.Option(help="Prefix of model_version.")] = "tiny-qwen2",
    seed: Annotated[int, typer.Option(help="Seed for weights and batch order (the tokenizer follows the data).")] = 0,
    vocab_size: Annotated[int, _opt(TinyModelConfig, "vocab_size")] = TinyModelConfig.vocab_size,
    hidden_size: Annotated[int, _opt(TinyModelConfig, "hidden_size")] = TinyModelConfig.hidden_size,
    intermediate_size: Annotated[int, _opt(TinyModelConfig, "intermediate_size")] = TinyModelConfig.intermediate_size,
    layers: Annotated[int, _opt(TinyModelConfig, "num_hidden_layers")] = TinyModelConfig.num_hidden_layers,
    heads: Annotated[int, _opt(TinyModelConfig, "num_attention_heads")] = TinyModelConfig.num_attention_heads,
    kv_heads: Annotated[int, _opt(TinyModelConfig, "num_key_value_heads")] = TinyModelConfig.num_key_value_heads,
    pretrain_epochs: Annotated[float, _opt(PretrainConfig, "epochs")] = PretrainConfig.epochs,
    pretrain_batch_size: Annotated[int, _opt(PretrainConfig, "batch_size")] = PretrainConfig.batch_size,
    pretrain_lr: Annotated[float, _opt(PretrainConfig, "lr")] = PretrainConfig.lr,
    pretrain_holdout_last: Annotated[int, _opt(PretrainConfig, "holdout_last")] = PretrainConfig.holdout_last,
    stop_after: Annotated[int | None, _opt(PretrainConfig, "stop_after")] = None,
    evidence_window: Annotated[int, _opt(EvidenceConfig, "window")] = EvidenceConfig.window,
    max_followers: Annotated[int, _opt(EvidenceConfig, "max_followers")] = EvidenceConfig.max_followers,
    stopword_share: Annotated[float, _opt(EvidenceConfig, "stopword_share")] = EvidenceConfig.stopword_share,
    co_bought: Annotated[bool, _opt(EvidenceConfig, "co_bought", "--co-bought/--no-co-bought")] = (
        EvidenceConfig.co_bought
    ),
    base_model: Annotated[
        Path | None, typer.Option(help="A local HF checkpoint (e.g. Qwen2.5-3B) to start from instead of scratch.")
    ] = None,
    restart: RestartOption = False,
) -> None:
    """A small Qwen2-architecture model + a BPE tokenizer trained on training-split titles only, LM pre-trained
    on the training histories; or, with --base-model, a copy of a real model with an r2rank manifest (its
    tokenizer must encode " yes"/" no" as one token each), ready for `sft --base`. Either way the evidence
    statistics (training interactions only) are written beside the weights."""
    from contract.checkpoint import open_checkpoint, write_checkpoint_manifest
    from trainer.modeling import copy_base_model, init_model
    from trainer.pretrain import STATE, pretrain_lm
    from trainer.runs import finished, mark_finished
    from trainer.statistics import build_stats

    _log_to_stderr()
    evidence = _build(EvidenceConfig, window=evidence_window, max_followers=max_followers,
                      stopword_share=stopword_share, co_bought=co_bought)  # fmt: skip
    catalogue, splits = _splits(data)
    config = _build(TinyModelConfig, vocab_size=vocab_size, hidden_size=hidden_size,
                    intermediate_size=intermediate_size, num_hidden_layers=layers, num_attention_heads=heads,
                    num_key_value_heads=kv_heads)  # fmt: skip
    pretrain = _build(PretrainConfig, epochs=pretrain_epochs, batch_size=pretrain_batch_size, lr=pretrain_lr,
                      holdout_last=pretrain_holdout_last, seed=seed, stop_after=stop_after)  # fmt: skip
    base_name = str(base_model) if base_model is not None else None
    fingerprint = _claim(out, data, base_name, evidence, config, pretrain, {"name": name}, restart=restart)
    if base_model is not None:
        stats = build_stats(catalogue, splits, evidence)
        try:
            manifest = copy_base_model(base_model, out, name, _command_line(), stats)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--base-model") from exc
        typer.echo(f"wrote {out} model_version={manifest.model_version} (from {base_model})")
        return
    if (done := finished(out)) is not None:  # the same inputs made it already: pre-training is not redone
        typer.echo(f"{out} is finished: model_version={done} (--restart to start over)")
        return
    if (out / STATE).exists():  # an interrupted pre-training: keep its weights, rebuild only the provenance
        provenance = json.loads((out / "init_provenance.json").read_text())
    else:
        provenance = init_model(training_titles(splits, catalogue), out, config, seed, evidence.co_bought)
        stats = build_stats(catalogue, splits, evidence)
        stats.save(out)
        provenance["evidence"] = {**dataclasses.asdict(evidence), "stats_version": stats.version,
                                  "items": len(stats.item_ids), "follower_pairs": len(stats.followers)}  # fmt: skip
        (out / "init_provenance.json").write_text(json.dumps(provenance))
    provenance.update(command=_command_line(), data=data.name, data_fingerprint=fingerprint["data"],
                      users=len(splits))  # fmt: skip
    manifest = write_checkpoint_manifest(out, name, provenance)
    if pretrain.epochs > 0:
        provenance.update(pretrain_lm(out, open_checkpoint(out), catalogue, splits, pretrain))
        manifest = write_checkpoint_manifest(out, name, provenance)
    if not (out / STATE).exists():  # pre-training ran to its end (no --stop-after left it interrupted)
        mark_finished(out, manifest.model_version)
    typer.echo(f"wrote {out} model_version={manifest.model_version} parameters={provenance['parameters']:,}")


@app.command("sft")
def sft_cmd(
    base: Annotated[Path, typer.Option(help="Checkpoint to start from (init-model output or a real model).")],
    out: Annotated[Path, typer.Option(help="Run directory; the servable checkpoint lands in OUT/model.")],
    data: DataOption = DEFAULT_DATA,
    users: Annotated[int, _opt(SFTConfig, "users")] = SFTConfig.users,
    negatives: Annotated[int, _opt(SFTConfig, "negatives")] = SFTConfig.negatives,
    hard_negatives: Annotated[int, _opt(SFTConfig, "hard_negatives")] = SFTConfig.hard_negatives,
    hard_pool: Annotated[int, _opt(SFTConfig, "hard_pool")] = SFTConfig.hard_pool,
    retrieval_share: Annotated[float, _opt(SFTConfig, "retrieval_share")] = SFTConfig.retrieval_share,
    targets_per_user: Annotated[int, _opt(SFTConfig, "targets_per_user")] = SFTConfig.targets_per_user,
    answer_weight: Annotated[float, _opt(SFTConfig, "answer_weight")] = SFTConfig.answer_weight,
    answer_distill: Annotated[float, _opt(SFTConfig, "answer_distill")] = SFTConfig.answer_distill,
    none_fraction: Annotated[float, _opt(SFTConfig, "none_fraction")] = SFTConfig.none_fraction,
    steps: Annotated[int, _opt(SFTConfig, "steps")] = SFTConfig.steps,
    batch_size: Annotated[int, _opt(SFTConfig, "batch_size")] = SFTConfig.batch_size,
    micro_batch: Annotated[int, _opt(SFTConfig, "micro_batch")] = SFTConfig.micro_batch,
    compile_model: Annotated[bool, _opt(SFTConfig, "compile", "--compile/--no-compile")] = SFTConfig.compile,
    lr: Annotated[float, _opt(SFTConfig, "lr")] = SFTConfig.lr,
    seed: Annotated[int, _opt(SFTConfig, "seed")] = SFTConfig.seed,
    name: Annotated[str, typer.Option(help="Prefix of model_version.")] = "sft",
    stop_after: Annotated[int | None, _opt(SFTConfig, "stop_after")] = None,
    teacher_url: Annotated[str | None, _opt(TeacherConfig, "url", "--teacher-url")] = None,
    teacher_model: Annotated[str | None, _opt(TeacherConfig, "model", "--teacher-model")] = None,
    teacher_api: Annotated[TeacherApi, _opt(TeacherConfig, "api", "--teacher-api")] = TeacherConfig.api,
    teacher_concurrency: Annotated[int, _opt(TeacherConfig, "concurrency")] = TeacherConfig.concurrency,
    teacher_calibration_users: Annotated[
        int, _opt(TeacherConfig, "calibration_users")
    ] = TeacherConfig.calibration_users,
    teacher_retrieval_hits: Annotated[int, _opt(TeacherConfig, "retrieval_hits")] = TeacherConfig.retrieval_hits,
    teacher_shared_word: Annotated[str, _opt(TeacherConfig, "shared_word")] = TeacherConfig.shared_word,
    teacher_verdicts: Annotated[str, _opt(TeacherConfig, "verdicts")] = TeacherConfig.verdicts,
    teacher_title_overlap: Annotated[str, _opt(TeacherConfig, "title_overlap")] = TeacherConfig.title_overlap,
    teacher_title_words: Annotated[
        bool, _opt(TeacherConfig, "title_words", "--teacher-title-words/--no-teacher-title-words")
    ] = TeacherConfig.title_words,
    teacher_cache: Annotated[
        Path | None, typer.Option(help="JSONL cache of the teacher's answers (default OUT/teacher_cache.jsonl).")
    ] = None,
    sequence_model: Annotated[
        Path | None,
        typer.Option(
            help="A `seqrec --horizon valid` output to ship in the checkpoint: the evidence then states "
            "its next-item rank (prompt format v3). Needs --example-sequence-model."
        ),
    ] = None,
    example_sequence_model: Annotated[
        Path | None,
        typer.Option(
            help="A `seqrec --horizon sft` output: the next-item rank of SFT examples and the teacher's "
            "calibration (a model that never saw their targets)."
        ),
    ] = None,
    restart: RestartOption = False,
) -> None:
    """Supervised cold start on teacher rationales (built-in, or an LLM behind --teacher-url); resumable."""
    from contract.checkpoint import write_checkpoint_manifest
    from contract.sequence import SequenceRanker
    from trainer.seqrec import ranker_sequence_models, training_sequences
    from trainer.sft import sft_users, train_sft
    from trainer.teacher import (
        RETRIEVAL_VERDICT_PROVENANCE,
        TITLE_VERDICT_PROVENANCE,
        VERDICT_PROVENANCE,
        BuiltinTeacher,
        Retrieval,
    )
    from trainer.title_overlap import TitleOverlap, TitleWordPrior

    _log_to_stderr()
    config = _build(SFTConfig, users=users, negatives=negatives, hard_negatives=hard_negatives, hard_pool=hard_pool,
                    retrieval_share=retrieval_share,
                    targets_per_user=targets_per_user, answer_weight=answer_weight, answer_distill=answer_distill,
                    none_fraction=none_fraction, steps=steps, batch_size=batch_size, micro_batch=micro_batch,
                    compile=compile_model, lr=lr, seed=seed, stop_after=stop_after)  # fmt: skip
    teacher_config = _build(TeacherConfig, url=teacher_url, model=teacher_model, api=teacher_api,
                            concurrency=teacher_concurrency, calibration_users=teacher_calibration_users,
                            retrieval_hits=teacher_retrieval_hits, shared_word=teacher_shared_word,
                            verdicts=teacher_verdicts, title_overlap=teacher_title_overlap,
                            title_words=teacher_title_words)  # fmt: skip
    if teacher_config.url and config.answer_distill:
        message = "--answer-distill takes soft labels from the built-in teacher: an LLM teacher's answers are 0/1"
        logging.getLogger(__name__).warning(message)
        config = dataclasses.replace(config, answer_distill=0.0)
    base_checkpoint = _checkpoint(base, "--base")
    sequences = None
    if (sequence_model is None) != (example_sequence_model is None):
        raise typer.BadParameter("give both or neither", param_hint="--sequence-model/--example-sequence-model")
    if config.hard_negatives and sequence_model is None:
        raise typer.BadParameter("hard negatives come from the examples' sequence model: give it",
                                 param_hint="--hard-negatives/--example-sequence-model")  # fmt: skip
    if config.retrieval_share and sequence_model is None:
        raise typer.BadParameter("retrieved candidates come from the examples' sequence model: give it",
                                 param_hint="--retrieval-share/--example-sequence-model")  # fmt: skip
    if config.retrieval_share and teacher_config.url:
        raise typer.BadParameter("retrieved candidates are weighed by the built-in teacher's second verdict model: "
                                 "give --retrieval-share 0 with --teacher-url",
                                 param_hint="--retrieval-share")  # fmt: skip
    if sequence_model is not None and example_sequence_model is not None:
        try:
            sequences = ranker_sequence_models(sequence_model, example_sequence_model, config.targets_per_user)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--sequence-model") from exc
    catalogue, splits = _splits(data)
    sequence_versions = {"sequence_model": None, "example_sequence_model": None}
    if sequences is not None:
        sequence_versions = {"sequence_model": SequenceRanker.load(sequences.shipped).version,
                             "example_sequence_model": sequences.examples.version}  # fmt: skip
    fingerprint = _claim(out, data, base_checkpoint.model_version, config, teacher_config, sequence_versions,
                         restart=restart)  # fmt: skip
    try:
        chosen = sft_users(splits, config, reserve=0 if teacher_config.url else teacher_config.calibration_users)
    except DataError as exc:
        raise typer.BadParameter(str(exc), param_hint="--users") from exc
    if teacher_config.url:
        from trainer.teacher_llm import LLMTeacher

        teacher = LLMTeacher(catalogue, teacher_config.url, teacher_config.model,
                             teacher_cache or out / "teacher_cache.jsonl", api=teacher_config.api,
                             concurrency=teacher_config.concurrency)  # fmt: skip
    else:  # its verdict models are fitted on other users than SFT's
        retrieval = Retrieval(sequences.examples, config.hard_pool) if config.retrieval_share else None
        # counted on sequences that end before every example's and calibration pair's target
        words = (TitleWordPrior(training_sequences(splits, "sft", config.targets_per_user), catalogue.titles)
                 if teacher_config.title_words else None)  # fmt: skip
        teacher = BuiltinTeacher.calibrated(splits, catalogue, base_checkpoint.stats, teacher_config.calibration_users,
                                            exclude={u.user_id for u in chosen},
                                            sequence=sequences and sequences.examples,
                                            retrieval=retrieval,
                                            min_hits=teacher_config.retrieval_hits,
                                            shared_word=teacher_config.shared_word,
                                            verdicts=teacher_config.verdicts,
                                            titles=TitleOverlap(catalogue.titles.values())
                                            if teacher_config.title_overlap != "off" else None,
                                            title_clause=teacher_config.title_overlap == "clause",
                                            title_words=words)  # fmt: skip
        if config.retrieval_share and teacher.retrieval_model is None:
            logging.getLogger(__name__).warning(
                "too few of this catalogue's next items are among the examples' sequence model's top %d items "
                "(--teacher-retrieval-hits %d) to train on retrieved candidates: the model is trained on catalogue "
                "candidates only, as with --retrieval-share 0, and serves no candidate_source='retrieval'",
                config.hard_pool,
                teacher_config.retrieval_hits,
            )
            config = dataclasses.replace(config, retrieval_share=0.0)
    summary = train_sft(base, out, catalogue, chosen, teacher, config, sequences)
    if sequences is not None:
        summary["sequence_model"] = {"shipped": str(sequences.shipped), "examples": str(example_sequence_model),
                                     "examples_version": sequences.examples.version}  # fmt: skip
    teacher_name = f"{teacher_config.url} {teacher_config.model}" if teacher_config.url else "builtin"
    if isinstance(teacher, BuiltinTeacher):
        summary[VERDICT_PROVENANCE] = teacher.model.record()
        if teacher.retrieval_model is not None:
            summary[RETRIEVAL_VERDICT_PROVENANCE] = teacher.retrieval_model.record()
        if teacher.title_model is not None:
            summary[TITLE_VERDICT_PROVENANCE] = teacher.title_model.record()
    provenance = {**summary, "command": _command_line(), "base": str(base),
                  "base_model_version": base_checkpoint.model_version, "data": data.name,
                  "data_fingerprint": fingerprint["data"],
                  "teacher": teacher_name, "teacher_config": dataclasses.asdict(teacher_config)}  # fmt: skip
    sources = ("catalogue", "retrieval") if config.retrieval_share else ("catalogue",)
    manifest = write_checkpoint_manifest(out / "model", name, provenance, candidate_sources=sources)
    shown = {k: summary[k] for k in ("examples", "loss_first_10", "loss_last_10", "skipped_updates")}
    typer.echo(json.dumps({"model_version": manifest.model_version, **shown}))


@app.command("rl")
def rl_cmd(
    base: Annotated[Path, typer.Option(help="The SFT checkpoint: the starting policy and the KL reference.")],
    out: Annotated[Path, typer.Option(help="Run directory; the servable checkpoint lands in OUT/model.")],
    data: DataOption = DEFAULT_DATA,
    users: Annotated[int, _opt(RLConfig, "users")] = RLConfig.users,
    negatives: Annotated[int, _opt(RLConfig, "negatives")] = RLConfig.negatives,
    steps: Annotated[int, _opt(RLConfig, "steps")] = RLConfig.steps,
    users_per_step: Annotated[int, _opt(RLConfig, "users_per_step")] = RLConfig.users_per_step,
    rollouts: Annotated[int, _opt(RLConfig, "rollouts")] = RLConfig.rollouts,
    temperature: Annotated[float, _opt(RLConfig, "temperature")] = RLConfig.temperature,
    pl_samples: Annotated[int, _opt(RLConfig, "pl_samples")] = RLConfig.pl_samples,
    none_weight: Annotated[float, _opt(RLConfig, "none_weight")] = RLConfig.none_weight,
    served_users_per_step: Annotated[int, _opt(RLConfig, "served_users_per_step")] = RLConfig.served_users_per_step,
    served_weight: Annotated[float, _opt(RLConfig, "served_weight")] = RLConfig.served_weight,
    served_objective: Annotated[ServedObjective, _opt(RLConfig, "served_objective")] = RLConfig.served_objective,
    rationale_credit: Annotated[RationaleCredit, _opt(RLConfig, "rationale_credit")] = RLConfig.rationale_credit,
    lr: Annotated[float, _opt(RLConfig, "lr")] = RLConfig.lr,
    beta: Annotated[float, _opt(RLConfig, "beta")] = RLConfig.beta,
    seed: Annotated[int, _opt(RLConfig, "seed")] = RLConfig.seed,
    name: Annotated[str, typer.Option(help="Prefix of model_version.")] = "rl",
    rollout_engine: Annotated[RolloutEngine, _opt(RLConfig, "rollout_engine")] = RLConfig.rollout_engine,
    stop_after: Annotated[int | None, _opt(RLConfig, "stop_after")] = None,
    restart: RestartOption = False,
) -> None:
    """Listwise RL: G rollouts per user, PL-sampled rankings rewarded by NDCG@10; resumable."""
    from contract.checkpoint import write_checkpoint_manifest
    from trainer.data import selection_users
    from trainer.refresh import RefreshError, refuse_seen_targets
    from trainer.rl import rl_cases, train_rl
    from trainer.teacher import RETRIEVAL_VERDICT_PROVENANCE, VERDICT_PROVENANCE

    _log_to_stderr()
    config = _build(
        RLConfig,
        users=users,
        negatives=negatives,
        steps=steps,
        users_per_step=users_per_step,
        rollouts=rollouts,
        temperature=temperature,
        pl_samples=pl_samples,
        none_weight=none_weight,
        served_users_per_step=served_users_per_step,
        served_weight=served_weight,
        served_objective=served_objective,
        rationale_credit=rationale_credit,
        lr=lr,
        beta=beta,
        seed=seed,
        stop_after=stop_after,
        rollout_engine=rollout_engine,
    )
    base_checkpoint = _checkpoint(base, "--base")
    try:
        refuse_seen_targets(base_checkpoint, "validation", "RL (its rewards are scored at validation positions)")
    except RefreshError as exc:
        raise typer.BadParameter(str(exc), param_hint="--base") from exc
    base_version = base_checkpoint.model_version
    catalogue, splits = _splits(data)
    fingerprint = _claim(out, data, base_version, config, restart=restart)
    held_apart = {u.user_id for u in selection_users(splits)}  # never trained on: they choose between checkpoints
    cases = rl_cases(splits, catalogue, config.users, config.negatives, config.seed, held_apart)
    summary = train_rl(base, out, cases, config)
    provenance = {
        **summary,
        "command": _command_line(),
        "base": str(base),
        "base_model_version": base_version,
        "data": data.name,
        "data_fingerprint": fingerprint["data"],
        "users": len(cases),
        # what the SFT start learned from, kept so eval's evidence-model row is the teacher's own logistic
        **{
            k: base_checkpoint.manifest.provenance[k]
            for k in (VERDICT_PROVENANCE, RETRIEVAL_VERDICT_PROVENANCE, "sequence_model", "teacher")
            if k in base_checkpoint.manifest.provenance
        },
    }
    # RL trains on catalogue candidates only; the sources its SFT start learned stay what it may be given
    manifest = write_checkpoint_manifest(out / "model", name, provenance,
                                         candidate_sources=base_checkpoint.manifest.candidate_sources)  # fmt: skip
    typer.echo(
        json.dumps(
            {
                "model_version": manifest.model_version,
                **{k: summary[k] for k in ("steps_done", "reward_first", "reward_last", "kl_last", "skipped_updates")},
            }
        )
    )


SplitOption = Annotated[
    str,
    typer.Option(
        help="test: the report (test positions); selection: choose runs and checkpoints on the "
        "validation positions of users RL never trains on."
    ),
]


@app.command("seqrec")
def seqrec_cmd(
    out: Annotated[Path, typer.Option(help="Directory for the sequence model (seqrec.safetensors + seqrec.json).")],
    data: DataOption = DEFAULT_DATA,
    horizon: Annotated[SeqRecHorizon, _opt(SeqRecConfig, "horizon")] = SeqRecConfig.horizon,
    epochs: Annotated[int, _opt(SeqRecConfig, "epochs")] = SeqRecConfig.epochs,
    hidden_size: Annotated[int, _opt(SeqRecConfig, "hidden_size")] = SeqRecConfig.hidden_size,
    layers: Annotated[int, _opt(SeqRecConfig, "layers")] = SeqRecConfig.layers,
    heads: Annotated[int, _opt(SeqRecConfig, "heads")] = SeqRecConfig.heads,
    inner_size: Annotated[int, _opt(SeqRecConfig, "inner_size")] = SeqRecConfig.inner_size,
    dropout: Annotated[float, _opt(SeqRecConfig, "dropout")] = SeqRecConfig.dropout,
    max_length: Annotated[int, _opt(SeqRecConfig, "max_length")] = SeqRecConfig.max_length,
    batch_tokens: Annotated[int, _opt(SeqRecConfig, "batch_tokens")] = SeqRecConfig.batch_tokens,
    lr: Annotated[float, _opt(SeqRecConfig, "lr")] = SeqRecConfig.lr,
    seed: Annotated[int, _opt(SeqRecConfig, "seed")] = SeqRecConfig.seed,
    held_out: Annotated[int, _opt(SeqRecConfig, "held_out")] = SeqRecConfig.held_out,
    init: Annotated[
        Path | None, typer.Option(help="Start from this `seqrec` output's weights (a horizon no later than this one).")
    ] = None,
    curve_users: Annotated[
        int, typer.Option(help="Horizon valid: selection users whose NDCG@10 is measured after every epoch (0: none).")
    ] = 1000,
    restart: RestartOption = False,
) -> None:
    """The sequence-model baseline (SASRec over item ids, full-softmax cross-entropy) that `eval --seqrec` shows
    beside the other baselines; resumable (rerun to continue after the last finished epoch)."""
    from trainer.evaluation.cases import build_cases
    from trainer.evaluation.metrics import metrics_with_ci, positive_rank
    from trainer.seqrec import SequenceModel, train_seqrec, training_sequences

    _log_to_stderr()
    config = _build(SeqRecConfig, horizon=horizon, epochs=epochs, hidden_size=hidden_size, layers=layers,
                    heads=heads, inner_size=inner_size, dropout=dropout, max_length=max_length,
                    batch_tokens=batch_tokens, lr=lr, seed=seed, held_out=held_out)  # fmt: skip
    if init is not None and not SequenceModel.exists(init):
        raise typer.BadParameter(f"no sequence model in {init}", param_hint="--init")
    catalogue, splits = _splits(data)
    from contract.sequence import SequenceRanker

    init_version = SequenceRanker.load(init).version if init is not None else None
    fingerprint = _claim(out, data, init_version, config, restart=restart)
    monitor = None
    if horizon == "valid" and curve_users > 0:  # a model that stops before the validation targets can be scored there
        cases = build_cases(splits, catalogue, curve_users, 19, 0, split="selection")

        def monitor(model) -> dict:
            scores = model.score_batch([c.history for c in cases], [c.candidates for c in cases])
            ranks = [positive_rank(s, c.candidates, c.target) for s, c in zip(scores, cases, strict=True)]
            return {"selection_ndcg@10": round(metrics_with_ci(ranks)["ndcg@10"]["mean"], 4)}

    items = item_order(catalogue.titles)
    provenance = {"command": _command_line(), "data": data.name, "data_fingerprint": fingerprint["data"],
                  "users": len(splits),
                  **({"init": str(init)} if init else {})}  # fmt: skip
    try:
        summary = train_seqrec(items, training_sequences(splits, horizon, held_out), out, config, monitor, provenance,
                               SequenceModel.load(init) if init else None)  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--init") from exc
    typer.echo(json.dumps({k: summary[k] for k in ("sequences", "items", "parameters")} | {"curve": summary["curve"]}))


def _reference_evidence(model: list[Path], catalogue, splits):
    """The evidence the evidence-model row reads: the first model's (its statistics and sequence model, what it
    was trained and served with), or the recipe's statistics, built from the training prefixes."""
    from trainer.evaluation.run import EvidenceSource

    if model:
        return EvidenceSource.of(_checkpoint(model[0], "--model"))
    from trainer.statistics import build_stats

    return EvidenceSource(build_stats(catalogue, splits, EvidenceConfig()))


@app.command("eval")
def eval_cmd(
    model: Annotated[list[Path], typer.Option(help="Checkpoint(s) to evaluate; repeat the option.")] = [],  # noqa: B006
    data: DataOption = DEFAULT_DATA,
    users: Annotated[int, typer.Option(help="Held-out users (>= 1000 for a report).")] = 1000,
    negatives: Annotated[int, typer.Option(help="Negatives per user (1 positive + N candidates).")] = 19,
    retriever: Annotated[str | None, typer.Option(help="Negatives from DATA/*.<name> (e.g. sasrec).")] = None,
    retriever_model: Annotated[
        Path | None,
        typer.Option(
            help="Negatives: the top N items of this `seqrec` output after each case's history, none of the "
            "user's (SASRec-hard negatives on any catalogue; horizon valid for --split selection)."
        ),
    ] = None,
    reasoning: Annotated[str, typer.Option(help="Comma-separated modes for the model(s): full,none.")] = "full,none",
    split: SplitOption = "test",
    out: Annotated[
        Path, typer.Option(help="Report directory (eval.json, eval.md, eval.png, ranks.json); e.g. RUN/eval.")
    ] = ...,
    seed: Annotated[int, typer.Option(help="Seed for the users and their negatives.")] = 0,
    seqrec: Annotated[
        Path | None,
        typer.Option(help="A `seqrec` output: the sequence model row (horizon valid for --split selection)."),
    ] = None,
    reuse: Annotated[
        Path | None,
        typer.Option(
            help="ranks.json of an earlier report on the same users: its models' rows are "
            "taken from it instead of scored again (e.g. to add a baseline)."
        ),
    ] = None,
    candidate_source: Annotated[
        str,
        typer.Option(
            help="What the models are told their candidates are (a request's candidate_source): catalogue, "
            "retrieval, or auto: retrieval with --retriever/--retriever-model for a model trained on retrieved "
            "candidates, else catalogue. The first model told retrieval adds its teacher's logistic for retrieved "
            "candidates as a row."
        ),
    ] = "auto",
) -> None:
    """Baselines (random, popularity, co-occurrence, the teacher's evidence model, the sequence model) and the
    model(s) through the service's engine code, with paired differences and, in full mode, rationale faithfulness."""
    from trainer.evaluation.cases import read_retriever_lists
    from trainer.evaluation.run import EvalError, EvalPlan, evaluate

    _log_to_stderr()
    modes = [m.strip() for m in reasoning.split(",") if m.strip()]
    if not modes or set(modes) - {"full", "none"}:
        raise typer.BadParameter(f"modes are full and none, got {reasoning!r}", param_hint="--reasoning")
    if split not in ("test", "selection"):
        raise typer.BadParameter(f"test or selection, got {split!r}", param_hint="--split")
    if candidate_source not in ("auto", "catalogue", "retrieval"):
        raise typer.BadParameter(f"auto, catalogue or retrieval, got {candidate_source!r}",
                                 param_hint="--candidate-source")  # fmt: skip
    catalogue, splits = _splits(data)
    lists = None
    if retriever and retriever_model:
        raise typer.BadParameter("give one source of negatives", param_hint="--retriever/--retriever-model")
    if retriever_model:
        from trainer.evaluation.cases import SequenceModelLists
        from trainer.evaluation.run import load_sequence_model

        try:
            ranker = load_sequence_model(retriever_model, split, "--retriever-model").ranker()  # type: ignore[arg-type]
        except EvalError as exc:
            raise typer.BadParameter(str(exc), param_hint="--retriever-model") from exc
        lists = SequenceModelLists(ranker, splits, split, negatives)  # type: ignore[arg-type]
        retriever = "sequence-model top"
    elif retriever:
        files = sorted(data.glob(f"*.{retriever}"))
        if not files:
            raise typer.BadParameter(f"no file {data}/*.{retriever}", param_hint="--retriever")
        lists = read_retriever_lists(files[0])
    for path in model:
        _checkpoint(path, "--model")
    plan = EvalPlan(models=model, modes=modes, users=users, negatives=negatives, split=split,  # type: ignore[arg-type]
                    seed=seed, out=out, command=_command_line(), retriever_name=retriever, retriever=lists,
                    sequence_model=seqrec, reuse=reuse, candidate_source=candidate_source)  # fmt: skip
    try:
        evaluate(catalogue, splits, _reference_evidence(model, catalogue, splits), plan)
    except EvalError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo((out / "eval.md").read_text())


@app.command("diagnose")
def diagnose_cmd(
    model: Annotated[Path, typer.Option(help="Checkpoint to diagnose.")],
    data: DataOption = DEFAULT_DATA,
    users: Annotated[int, typer.Option(help="Held-out users (the first of eval's sample).")] = 300,
    negatives: Annotated[int, typer.Option(help="Negatives per user (1 positive + N candidates).")] = 19,
    split: SplitOption = "selection",
    out: Annotated[Path | None, typer.Option(help="Also write the diagnosis here as JSON.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the users and their negatives (eval's).")] = 0,
) -> None:
    """Served rationale vs the teacher's rationale vs no rationale, on eval's cases (plain torch): shows
    whether the model loses NDCG in the rationales it writes or in how its answer reads them."""
    from trainer.diagnose import clause_ceiling, diagnose
    from trainer.evaluation.cases import build_cases, sequences_before
    from trainer.evaluation.metrics import metrics_with_ci
    from trainer.teacher import TITLE_VERDICT_PROVENANCE, BuiltinTeacher, TitleReadingModel, recorded_verdicts

    _log_to_stderr()
    checkpoint = _checkpoint(model, "--model")
    catalogue, splits = _splits(data)
    cases = build_cases(splits, catalogue, users, negatives, seed, split=split)  # type: ignore[arg-type]
    recorded = recorded_verdicts(checkpoint.manifest.provenance)
    if checkpoint.sequence is not None and recorded is not None:  # the teacher it learned from (ranks included)
        taught = checkpoint.manifest.provenance.get("teacher_config") or {}
        titles = checkpoint.manifest.provenance.get(TITLE_VERDICT_PROVENANCE)
        title_model = (
            TitleReadingModel.from_record(titles, catalogue, sequences_before(splits, split)) if titles else None
        )
        teacher = BuiltinTeacher(recorded, shared_word=taught.get("shared_word", TeacherConfig.shared_word),
                                 verdicts=taught.get("verdicts", TeacherConfig.verdicts), title_model=title_model,
                                 title_clause=taught.get("title_overlap") == "clause")  # fmt: skip
    else:
        teacher = BuiltinTeacher.calibrated(splits, catalogue, checkpoint.stats)
    result = diagnose(model, catalogue, cases, teacher)
    result.ranks["clauses"] = clause_ceiling(splits, catalogue, checkpoint.stats, teacher, cases,
                                             sequence=checkpoint.sequence)  # fmt: skip
    ndcg = {mode: metrics_with_ci(ranks)["ndcg@10"] for mode, ranks in result.ranks.items()}
    agreement = {
        kind: {"all": t[0] / max(1, t[1]), "positives": t[2] / max(1, t[3])} for kind, t in result.agree.items()
    }
    report = {"model": str(model), "users": len(cases), "split": split, "ndcg@10": ndcg,
              "clause_agreement": agreement, "positives_served_vs_teacher": result.examples,
              "command": _command_line()}  # fmt: skip
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    lines = [f"{len(cases)} {split} users, 1 + {negatives} random negatives, NDCG@10 (95% CI)"]
    labels = {"served": "served rationale (what users get)", "teacher": "teacher's rationale forced",
              "none": 'reasoning="none"', "clauses": "teacher's clauses, no model (ceiling)"}  # fmt: skip
    for mode, m in ndcg.items():
        lines.append(f"  {labels[mode]:38s} {m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
    lines.append("clause agreement with the teacher (all candidates / positives):")
    for kind, a in agreement.items():
        lines.append(f"  {kind:20s} {a['all']:.3f} / {a['positives']:.3f}")
    typer.echo("\n".join(lines))


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Option(help="Trained checkpoint (e.g. RUN/rl/model).")],
    out: Annotated[Path, typer.Option(help="Servable directory to write (e.g. models/default).")],
    report: Annotated[
        Path | None, typer.Option(help="eval.json whose results for this model go in the manifest.")
    ] = None,
    mode: Annotated[str, typer.Option(help="Which reasoning mode's metrics the manifest records.")] = "full",
) -> None:
    """Copy weights + tokenizer to OUT with a manifest carrying provenance and eval metrics (the service's
    hot-reload gate compares metrics["ndcg@10"]); OUT is replaced whole, never left half-written."""
    from trainer.export import ExportError, export_checkpoint, report_metrics

    source = _checkpoint(model, "--model")
    try:
        metrics = report_metrics(report, source.model_version, mode) if report is not None else {}
    except ExportError as exc:
        raise typer.BadParameter(str(exc), param_hint="--report") from exc
    manifest = export_checkpoint(model, out, metrics, _command_line())
    typer.echo(f"exported {out} model_version={manifest.model_version} metrics={json.dumps(metrics)}")


@app.command("refresh")
def refresh_cmd(
    model: Annotated[Path, typer.Option(help="A checkpoint whose evidence states a next-item rank (RUN/sft/model).")],
    sequence_model: Annotated[
        Path, typer.Option(help="A `seqrec` output trained on later positions (e.g. RUN/seqrec, horizon test).")
    ],
    out: Annotated[Path, typer.Option(help="Directory for the refreshed checkpoint (e.g. RUN/refreshed).")],
    data: DataOption = DEFAULT_DATA,
) -> None:
    """The same LLM with fresher collaborative evidence: the given sequence model and statistics recounted on the
    positions it trained on (its horizon); a new model_version. Run it whenever the sequence model is retrained:
    the LLM needs no retraining to read a fresher one (trainer/refresh.py)."""
    from trainer.refresh import RefreshError, refresh_checkpoint
    from trainer.runs import data_fingerprint

    _checkpoint(model, "--model")
    catalogue, splits = _splits(data)
    try:
        manifest = refresh_checkpoint(model, sequence_model, catalogue, splits, out, data_fingerprint(data),
                                      _command_line())  # fmt: skip
    except RefreshError as exc:
        raise typer.BadParameter(str(exc)) from exc
    refresh = manifest.provenance["refresh"]
    typer.echo(f"wrote {out} model_version={manifest.model_version} horizon={refresh['horizon']} "
               f"stats_version={manifest.stats_version} sequence_version={manifest.sequence_version} "
               f"weights={manifest.weights_version}")  # fmt: skip
    if refresh["horizon"] == "all":
        typer.echo(f"no report can score it; the service's gate takes it in place of a checkpoint with the weights "
                   f"{manifest.weights_version} (docs/deploy.md)")  # fmt: skip


@app.command("demo-data")
def demo_data_cmd(
    out: Annotated[Path, typer.Option(help="Directory for the demo subset.")] = Path("data/demo"),
    data: DataOption = DEFAULT_DATA,
    users: Annotated[int, typer.Option(help="How many test users to keep.")] = 300,
    negatives: Annotated[int, typer.Option(help="Random negatives per user (1 positive + N).")] = 19,
    seed: Annotated[int, typer.Option(help="Seed for the users and their negatives.")] = 0,
) -> None:
    """A small subset for the demo, tests and load tests: users with test histories and 1+N candidates."""
    catalogue, splits = _splits(data)
    rng = random.Random(seed)
    chosen = rng.sample(splits, min(users, len(splits)))
    all_items = item_order(catalogue.titles)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    with (out / "users.jsonl").open("w") as handle:
        for split in chosen:
            history = split.test_history
            negs = sample_negatives(rng, all_items, set(history) | {split.test_target}, negatives)
            candidates = [split.test_target, *negs]
            rng.shuffle(candidates)
            used.update(history)
            used.update(candidates)
            row = {"user_id": split.user_id, "history": history, "candidates": candidates, "target": split.test_target}
            handle.write(json.dumps(row) + "\n")
    with (out / "items.jsonl").open("w") as handle:
        for item_id in item_order(used):
            handle.write(json.dumps({"item_id": item_id, "title": catalogue.title(item_id)}) + "\n")
    typer.echo(f"wrote {len(chosen)} users and {len(used)} items to {out}")


@app.command("publish")
def publish_cmd(
    model: Annotated[
        Path | None, typer.Argument(help="Checkpoint directory, as the service sees it (shared volume).")
    ] = None,
    url: Annotated[str, typer.Option(help="Base URL of the r2rank service.")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(envvar="R2RANK_API_KEY", help="A key with the admin scope.")] = None,
    force: Annotated[bool, typer.Option(help="Publish even if its eval is worse than the serving model's.")] = False,
    rollback: Annotated[bool, typer.Option(help="Roll the service back to its previous model instead.")] = False,
) -> None:
    """Hot-swap the service to this checkpoint (POST /admin/models): loaded beside the old one, warmed up,
    swapped atomically; the service refuses a checkpoint with a worse eval unless --force."""
    import httpx

    if model is None and not rollback:
        raise typer.BadParameter("give a checkpoint directory, or --rollback", param_hint="MODEL")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if rollback:
        path, body = "/admin/models/rollback", None
    else:
        path, body = "/admin/models", {"path": str(model.resolve()), "force": force}
    response = httpx.post(url.rstrip("/") + path, json=body, headers=headers, timeout=600)
    if response.status_code != 200:
        error = response.json().get("error", {}) if "json" in response.headers.get("content-type", "") else {}
        typer.echo(f"publish refused (HTTP {response.status_code}): {error.get('message', response.text)}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(response.json()))


if __name__ == "__main__":
    app()
