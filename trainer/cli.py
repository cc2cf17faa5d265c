"""``r2rank-train``: one sub-command per stage of making a ranker."""

from __future__ import annotations

import itertools
import json
import random
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from trainer.data import DataError, leave_one_out, load_dataset, sample_negatives, training_titles

app = typer.Typer(help="Build, train and export r2rank ranker checkpoints.", no_args_is_help=True)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-videogames"


def _command_line() -> str:
    return "r2rank-train " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _load(data: Path):
    try:
        return load_dataset(data)
    except DataError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc


def _checkpoint(path: Path, hint: str):
    """Open a checkpoint or fail with the service's own message (names the file and field)."""
    from service.checkpoint import CheckpointError, open_checkpoint

    try:
        return open_checkpoint(path)
    except CheckpointError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


def _split(sequences: dict[str, list[str]], data: Path) -> list:
    """Leave-one-out; refuses data where most users are too short to split rather than silently training on
    the few that are not."""
    splits = leave_one_out(sequences)
    skipped = len(sequences) - len(splits)
    if not splits or skipped > len(sequences) / 2:
        raise typer.BadParameter(
            f"{data}: {skipped} of {len(sequences)} users have fewer than 3 interactions (leave-one-out needs "
            "train + validation + test items)", param_hint="--data")  # fmt: skip
    if skipped:
        typer.echo(f"{data}: skipped {skipped} of {len(sequences)} users with fewer than 3 interactions", err=True)
    return splits


@app.command("data")
def data_cmd(
    out: Annotated[Path, typer.Option(help="Directory for train/valid/test candidate sets (JSONL).")],
    data: Annotated[Path, typer.Option(help="Dataset directory.")] = DEFAULT_DATA,
    negatives: Annotated[int, typer.Option(help="Negatives per positive (1 + N candidates).")] = 19,
    kind: Annotated[str, typer.Option("--negatives-from", help="random | popularity | <retriever suffix>")] = "random",
    seed: int = 0,
) -> None:
    """Leave-one-out splits with seeded candidate sets; no test target enters training data or statistics."""
    from trainer.data import candidate_sets, negative_sampler
    from trainer.evaluate import read_retriever_lists

    catalogue, sequences = _load(data)
    splits = _split(sequences, data)
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
    summary = {"users": len(sequences), "split_users": len(splits), "skipped_short": len(sequences) - len(splits),
               "negatives": negatives, "negatives_from": kind, "seed": seed, "written": counts}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(json.dumps(summary))


@app.command("init-model")
def init_model_cmd(
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    data: Annotated[Path, typer.Option(help="Dataset dir (RecBole files or items/interactions JSONL).")] = DEFAULT_DATA,
    name: Annotated[str, typer.Option(help="Prefix of model_version.")] = "tiny-qwen2",
    seed: Annotated[int, typer.Option(help="Seed for weights (the tokenizer is deterministic in the data).")] = 0,
    vocab_size: int = 4096,
    hidden_size: int = 256,
    intermediate_size: int = 768,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    pretrain_epochs: Annotated[float, typer.Option(help="LM pre-training on training sequences (0: none).")] = 0.0,
    pretrain_batch_size: int = 32,
    pretrain_lr: float = 2e-3,
    stop_after: Annotated[int | None, typer.Option(help="Stop pre-training after this step; rerun resumes.")] = None,
    base_model: Annotated[
        Path | None, typer.Option(help="A local HF checkpoint (e.g. Qwen2.5-3B) to start from instead of scratch.")
    ] = None,
) -> None:
    """A small Qwen2-architecture model + a BPE tokenizer trained on training-split titles only, optionally
    pre-trained as an LM on the training sequences (rendered as the service renders histories); or, with
    --base-model, a copy of a real model with an r2rank manifest (its tokenizer must encode " yes"/" no" as
    one token each), ready for `sft --base`."""
    import logging

    from service.checkpoint import open_checkpoint
    from trainer.export import write_checkpoint_manifest
    from trainer.modeling import TinyModelConfig, init_model
    from trainer.pretrain import STATE, PretrainConfig, pretrain_lm

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if base_model is not None:
        import shutil

        from service.checkpoint import CheckpointError
        from service.contract import ContractError

        if not (base_model / "config.json").is_file():
            raise typer.BadParameter(f"{base_model}/config.json: not found (not a HF checkpoint)", "--base-model")
        shutil.copytree(base_model, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
        try:
            manifest = write_checkpoint_manifest(out, name, {"stage": "base-model", "base_model": str(base_model),
                                                             "command": _command_line()})  # fmt: skip
        except (CheckpointError, ContractError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--base-model") from exc
        typer.echo(f"wrote {out} model_version={manifest.model_version} (from {base_model})")
        return
    catalogue, sequences = _load(data)
    splits = _split(sequences, data)
    titles = training_titles(splits, catalogue)
    config = TinyModelConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
    )
    resuming = (out / STATE).exists()
    if resuming:  # an interrupted pre-training: keep its weights, rebuild only the provenance
        provenance = json.loads((out / "init_provenance.json").read_text())
    else:
        provenance = init_model(titles, out, config, seed)
        (out / "init_provenance.json").write_text(json.dumps(provenance))
    provenance.update(command=_command_line(), data=data.name, users=len(splits))
    manifest = write_checkpoint_manifest(out, name, provenance)
    if pretrain_epochs > 0:
        pretrain = PretrainConfig(epochs=pretrain_epochs, batch_size=pretrain_batch_size, lr=pretrain_lr, seed=seed,
                                  stop_after=stop_after)  # fmt: skip
        provenance.update(pretrain_lm(out, open_checkpoint(out), catalogue, splits, pretrain))
        manifest = write_checkpoint_manifest(out, name, provenance)
    typer.echo(f"wrote {out} model_version={manifest.model_version} parameters={provenance['parameters']:,}")


@app.command("sft")
def sft_cmd(
    base: Annotated[Path, typer.Option(help="Checkpoint to start from (init-model output or a real model).")],
    out: Annotated[Path, typer.Option(help="Run directory; the servable checkpoint lands in OUT/model.")],
    data: Annotated[Path, typer.Option(help="Dataset directory.")] = DEFAULT_DATA,
    users: int = 2000,
    negatives: int = 3,
    targets_per_user: Annotated[int, typer.Option(help="Training-prefix positions per user used as targets.")] = 1,
    none_fraction: Annotated[float, typer.Option(help="Share of examples without a rationale.")] = 0.0,
    drop_link: Annotated[
        float, typer.Option(help="P(a true co-occurrence link is dropped from the rationale the answer sees).")
    ] = 0.0,
    add_link: Annotated[float, typer.Option(help="P(a false co-occurrence link is added to it).")] = 0.0,
    steps: int = 300,
    batch_size: Annotated[int, typer.Option(help="Examples per step (each 1 + N candidates).")] = 8,
    micro_batch: Annotated[
        int, typer.Option(help="Examples per forward pass, grouped by length; the update does not depend on it.")
    ] = 2,
    lr: float = 1e-3,
    seed: int = 0,
    name: str = "sft",
    stop_after: Annotated[int | None, typer.Option(help="Checkpoint and stop after this step; rerun resumes.")] = None,
    teacher_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server (e.g. a vLLM server) to write rationales.")
    ] = None,
    teacher_model: Annotated[str | None, typer.Option(help="Model name at --teacher-url.")] = None,
    teacher_api: Annotated[str, typer.Option(help="chat | completions (for models without a chat template).")] = "chat",
    teacher_concurrency: int = 16,
    teacher_cache: Annotated[
        Path | None, typer.Option(help="JSONL cache of the teacher's answers (default OUT/teacher_cache.jsonl).")
    ] = None,
) -> None:
    """Supervised cold start on teacher rationales (built-in, or an LLM behind --teacher-url); resumable."""
    import logging

    from trainer.export import write_checkpoint_manifest
    from trainer.sft import SFTConfig, train_sft
    from trainer.teacher import BuiltinTeacher, TrainingStats

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    base_version = _checkpoint(base, "--base").model_version
    catalogue, sequences = _load(data)
    splits = _split(sequences, data)
    if teacher_url:
        from trainer.teacher_llm import LLMTeacher

        if not teacher_model:
            raise typer.BadParameter("--teacher-url needs --teacher-model", param_hint="--teacher-model")
        if teacher_api not in ("chat", "completions"):
            raise typer.BadParameter("must be chat or completions", param_hint="--teacher-api")
        teacher = LLMTeacher(catalogue, teacher_url, teacher_model, teacher_cache or out / "teacher_cache.jsonl",
                             api=teacher_api, concurrency=teacher_concurrency)  # type: ignore[arg-type]  # fmt: skip
    else:
        teacher = BuiltinTeacher(catalogue, TrainingStats.from_splits(splits))
    if teacher_url and (drop_link or add_link):
        raise typer.BadParameter("only with the built-in teacher (it rewrites its clause)", param_hint="--drop-link")
    for value, hint in ((drop_link, "--drop-link"), (add_link, "--add-link")):
        if not 0 <= value <= 1:
            raise typer.BadParameter(f"a probability in [0, 1], got {value}", param_hint=hint)
    config = SFTConfig(users=users, negatives=negatives, targets_per_user=targets_per_user,
                       none_fraction=none_fraction, drop_link=drop_link, add_link=add_link, steps=steps,
                       batch_size=batch_size, micro_batch=micro_batch, lr=lr, seed=seed,
                       stop_after=stop_after)  # fmt: skip
    summary = train_sft(base, out, catalogue, splits, teacher, config)
    teacher_name = f"{teacher_url} {teacher_model}" if teacher_url else "builtin"
    provenance = {**summary, "command": _command_line(), "base": str(base), "base_model_version": base_version,
                  "data": data.name, "teacher": teacher_name}  # fmt: skip
    manifest = write_checkpoint_manifest(out / "model", name, provenance)
    typer.echo(json.dumps({"model_version": manifest.model_version, **{k: summary[k] for k in (
        "examples", "loss_first_10", "loss_last_10", "skipped_updates")}}))  # fmt: skip


@app.command("rl")
def rl_cmd(
    base: Annotated[Path, typer.Option(help="The SFT checkpoint: the starting policy and the KL reference.")],
    out: Annotated[Path, typer.Option(help="Run directory; the servable checkpoint lands in OUT/model.")],
    data: Annotated[Path, typer.Option(help="Dataset directory.")] = DEFAULT_DATA,
    users: Annotated[int, typer.Option(help="Training users to draw ranking tasks from.")] = 6000,
    negatives: Annotated[int, typer.Option(help="Negatives per user (1 positive + N candidates).")] = 19,
    steps: int = 200,
    users_per_step: int = 2,
    rollouts: Annotated[int, typer.Option(help="G: rollouts per user; advantages are normalised within them.")] = 4,
    temperature: float = 1.0,
    pl_samples: Annotated[int, typer.Option(help="M: Plackett–Luce rankings sampled per rollout.")] = 16,
    none_weight: Annotated[float, typer.Option(help="Weight of the listwise term on reasoning='none' scores.")] = 1.0,
    served_users_per_step: Annotated[
        int, typer.Option(help="More users per step for the listwise term on scores after greedy (served) rationales.")
    ] = 0,
    served_weight: Annotated[float, typer.Option(help="Weight of that served-rationale term.")] = 1.0,
    served_objective: Annotated[str, typer.Option(help="pl (REINFORCE on NDCG) or top1 (PL top-1 likelihood).")] = "pl",
    rationale_credit: Annotated[
        str, typer.Option(help="rollout (each rationale gets its rollout's reward) or candidate (its own effect).")
    ] = "rollout",
    lr: float = 5e-5,
    beta: Annotated[float, typer.Option(help="Weight of KL(policy || SFT reference).")] = 0.04,
    seed: int = 0,
    name: str = "rl",
    rollout_engine: Annotated[str, typer.Option(help="torch | vllm | auto (vllm on a GPU).")] = "auto",
    stop_after: Annotated[int | None, typer.Option(help="Checkpoint and stop after this step; rerun resumes.")] = None,
) -> None:
    """Listwise RL: G rollouts per user, PL-sampled rankings rewarded by NDCG@10; resumable."""
    import logging

    from trainer.export import write_checkpoint_manifest
    from trainer.rl import RLConfig, rl_cases, train_rl

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    base_version = _checkpoint(base, "--base").model_version
    catalogue, sequences = _load(data)
    splits = _split(sequences, data)
    cases = rl_cases(splits, catalogue, users, negatives, seed)
    config = RLConfig(steps=steps, users_per_step=users_per_step, rollouts=rollouts, temperature=temperature,
                      pl_samples=pl_samples, none_weight=none_weight, served_users_per_step=served_users_per_step,
                      served_weight=served_weight, served_objective=served_objective,
                      rationale_credit=rationale_credit, lr=lr, beta=beta, seed=seed,
                      stop_after=stop_after, rollout_engine=rollout_engine)  # fmt: skip
    summary = train_rl(base, out, cases, config)
    provenance = {**summary, "command": _command_line(), "base": str(base), "base_model_version": base_version,
                  "data": data.name, "users": len(cases)}  # fmt: skip
    manifest = write_checkpoint_manifest(out / "model", name, provenance)
    typer.echo(json.dumps({"model_version": manifest.model_version, **{k: summary[k] for k in (
        "steps_done", "reward_first", "reward_last", "kl_last", "skipped_updates")}}))  # fmt: skip


@app.command("eval")
def eval_cmd(
    model: Annotated[list[Path], typer.Option(help="Checkpoint(s) to evaluate; repeat the option.")] = [],  # noqa: B006
    data: Annotated[Path, typer.Option(help="Dataset directory.")] = DEFAULT_DATA,
    users: Annotated[int, typer.Option(help="Held-out test users (>= 1000 for the report).")] = 1000,
    negatives: int = 19,
    retriever: Annotated[str | None, typer.Option(help="Negatives from DATA/*.<name> (e.g. sasrec).")] = None,
    reasoning: Annotated[str, typer.Option(help="Comma-separated modes for the model(s): full,none.")] = "full,none",
    out: Annotated[Path, typer.Option(help="Report directory (eval.json, eval.md, eval.png).")] = Path("docs/eval"),
    seed: int = 0,
) -> None:
    """Baselines (random, popularity, co-occurrence) and the model(s) through the service's engine code."""
    import asyncio

    from trainer.evaluate import (
        PRETEST_POPULARITY,
        build_cases,
        cooccurrence_scorer,
        metrics_with_ci,
        model_ranks,
        paired_difference,
        popularity_scorer,
        positive_rank,
        pretest_popularity_scorer,
        random_scorer,
        read_retriever_lists,
        write_report,
    )
    from trainer.teacher import TrainingStats

    catalogue, sequences = _load(data)
    splits = _split(sequences, data)
    stats = TrainingStats.from_splits(splits)
    lists = None
    if retriever:
        files = sorted(data.glob(f"*.{retriever}"))
        if not files:
            raise typer.BadParameter(f"no file {data}/*.{retriever}", param_hint="--retriever")
        lists = read_retriever_lists(files[0])
    cases = build_cases(splits, catalogue, users, negatives, seed, lists)
    results, ranks = {}, {}
    for name, scorer in (("random", random_scorer(seed)), ("popularity", popularity_scorer(stats)),
                         (PRETEST_POPULARITY, pretest_popularity_scorer(splits)),
                         ("co-occurrence + pop", cooccurrence_scorer(stats))):  # fmt: skip
        ranks[name] = [positive_rank(scorer(c), c.candidates, c.target) for c in cases]
    models = []  # "<model_version> (<mode>)", in order; baseline names may end in ")" too
    for path in model:
        label = _checkpoint(path, "--model").model_version
        for mode in reasoning.split(","):
            models.append(f"{label} ({mode})")
            ranks[models[-1]] = asyncio.run(model_ranks(path, catalogue, cases, mode))
    results = {name: metrics_with_ci(r) for name, r in ranks.items()}
    differences = {}
    for name in models:
        for baseline in ("popularity", PRETEST_POPULARITY):
            differences[f"{name} − {baseline}"] = paired_difference(ranks[name], ranks[baseline])
        if name.endswith("(full)") and name.replace("(full)", "(none)") in ranks:
            differences[f"{name} − (none)"] = paired_difference(ranks[name], ranks[name.replace("(full)", "(none)")])
    for mode in reasoning.split(","):  # every pair of models in one mode, later − earlier in --model order
        in_mode = [n for n in models if n.endswith(f"({mode})")]
        for earlier, later in itertools.combinations(in_mode, 2):
            differences[f"{later} − {earlier}"] = paired_difference(ranks[later], ranks[earlier])
    title = f"{len(cases)} test users, 1 positive + {negatives} {retriever or 'random'} negatives"
    write_report(results, out, title, _command_line(), differences)
    # per-user ranks of the positive, so a later run on the same users can be paired without re-scoring
    (out / "ranks.json").write_text(json.dumps({"users": [c.user_id for c in cases], "ranks": ranks}))
    typer.echo((out / "eval.md").read_text())


@app.command("diagnose")
def diagnose_cmd(
    model: Annotated[Path, typer.Option(help="Checkpoint to diagnose.")],
    data: Annotated[Path, typer.Option(help="Dataset directory.")] = DEFAULT_DATA,
    users: Annotated[int, typer.Option(help="Held-out test users (the first of eval's sample).")] = 300,
    negatives: int = 19,
    out: Annotated[Path | None, typer.Option(help="Also write the diagnosis here as JSON.")] = None,
    seed: int = 0,
) -> None:
    """Served rationale vs the teacher's rationale vs no rationale, on eval's test cases (plain torch): shows
    whether the model loses NDCG in the rationales it writes or in how its answer reads them."""
    from trainer.diagnose import clause_ceiling, diagnose
    from trainer.evaluate import build_cases, metrics_with_ci
    from trainer.teacher import BuiltinTeacher, TrainingStats

    _checkpoint(model, "--model")
    catalogue, sequences = _load(data)
    splits = _split(sequences, data)
    cases = build_cases(splits, catalogue, users, negatives, seed)
    teacher = BuiltinTeacher(catalogue, TrainingStats.from_splits(splits))
    result = diagnose(model, catalogue, cases, teacher)
    result.ranks["clauses"] = clause_ceiling(splits, catalogue, teacher, cases)
    ndcg = {mode: metrics_with_ci(ranks)["ndcg@10"] for mode, ranks in result.ranks.items()}
    agreement = {
        kind: {"all": t[0] / max(1, t[1]), "positives": t[2] / max(1, t[3])} for kind, t in result.agree.items()
    }
    report = {"model": str(model), "users": len(cases), "ndcg@10": ndcg, "clause_agreement": agreement,
              "positives_served_vs_teacher": result.examples, "command": _command_line()}  # fmt: skip
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    lines = [f"{len(cases)} test users, 1 + {negatives} random negatives, NDCG@10 (95% CI)"]
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
    import shutil
    import tempfile

    from trainer.export import write_checkpoint_manifest

    source = _checkpoint(model, "--model")
    metrics: dict = {}
    if report is not None:
        evaluation = json.loads(report.read_text())
        results = evaluation["results"]
        key = f"{source.model_version} ({mode})"
        if key not in results:
            raise typer.BadParameter(
                f"{report} has no results for {key!r} (has {sorted(results)})", param_hint="--report"
            )
        metrics = {name: value["mean"] for name, value in results[key].items()}
        metrics["eval"] = {"report": str(report), "title": evaluation["title"], "mode": mode}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    for path in model.iterdir():
        if (
            path.is_file()
            and path.name != "manifest.json"
            and path.suffix in {".json", ".safetensors", ".txt", ".jinja"}
        ):
            shutil.copy2(path, staging / path.name)
            (staging / path.name).chmod(0o644)
    staging.chmod(0o755)  # mkdtemp makes it 0700: a service running as another user must read it
    name = source.model_version.rsplit("-", 1)[0]
    provenance = {**source.manifest.provenance, "exported_from": str(model), "export_command": _command_line()}
    manifest = write_checkpoint_manifest(staging, name, provenance, metrics)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    typer.echo(f"exported {out} model_version={manifest.model_version} metrics={json.dumps(metrics)}")


@app.command("demo-data")
def demo_data_cmd(
    out: Annotated[Path, typer.Option(help="Directory for the demo subset.")] = Path("data/demo"),
    data: Annotated[Path, typer.Option(help="Dataset directory.")] = DEFAULT_DATA,
    users: Annotated[int, typer.Option(help="How many test users to keep.")] = 300,
    negatives: Annotated[int, typer.Option(help="Random negatives per user (1 positive + N).")] = 19,
    seed: int = 0,
) -> None:
    """A small subset for the demo, tests and load tests: users with test histories and 1+N candidates."""
    catalogue, sequences = _load(data)
    rng = random.Random(seed)
    splits = _split(sequences, data)
    chosen = rng.sample(splits, min(users, len(splits)))
    all_items = sorted(catalogue.titles, key=lambda k: (len(k), k))
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
        for item_id in sorted(used, key=lambda k: (len(k), k)):
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
