"""SFT cold start: teach the model to write the teacher's rationale and then the right answer token.

Each example is one target position of a user's TRAINING prefix (history = the items before it, positive =
the item at it; the last ``targets_per_user`` positions are used) with N sampled negatives. Inputs are built
by the contract's ``PromptAssembler`` exactly as the service builds them, evidence included, with one
difference that removes a skew: the evidence leaves the user's own sequence out of the counts
(``contract.evidence.LeaveOut``), so the positive carries a co-occurrence link only when other users made the
same move, as at serving time. Each row is then the rationale's ids + the answer cue + [yes|no]; a share of
examples (``none_fraction``) uses the ``reasoning="none"`` form, prompt + cue + answer, so one model serves
both modes. The loss is next-token cross-entropy on everything after the prompt. The answer token is the one
the ranking is read from, yet one of some thirty targets in a ``full`` row: ``answer_weight`` counts its loss
that many times, and ``answer_distill`` moves that share of its target from the 0/1 label to the built-in
teacher's probability that the pair is next (``AnswerTarget``). Each example's history
prefix and all its candidate rows run as one packed sequence (``trainer/packing.py``: the prefix once, no
padding between rows, the vocabulary projection only where a loss is taken), and a step's examples go
through the model in small micro-batches of similar length (``micro_batch``), their gradients summed.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from contract.checkpoint import Checkpoint, open_checkpoint
from contract.evidence import Item, LeaveOut
from contract.prompt import CandidateSource, Reasoning
from contract.sequence import SequenceRanker
from trainer.config import SFTConfig
from trainer.data import Catalogue, DataError, UserSplit, sample_negatives
from trainer.loop import compile_body, load_state, optimizer_step, save_state, training_device
from trainer.packing import target_log_softmax
from trainer.progress import Progress
from trainer.seqrec import RankerSequenceModels
from trainer.statistics import carry_stats, ship_sequence_model
from trainer.teacher import BuiltinTeacher, Retrieval, Teacher, TeacherInput

logger = logging.getLogger(__name__)

STEP_LOG = "sft_steps.jsonl"


@dataclass(frozen=True)
class AnswerTarget:
    """How a row's last target, its answer, is trained: ``share`` of the target on the row's own answer token and
    the rest on ``other`` (the opposite answer), its loss counted ``weight`` times."""

    other: int
    share: float = 1.0
    weight: float = 1.0


@dataclass(frozen=True)
class Example:
    """One (history, target position) with its 1 + N candidates: the prefix is shared by every row."""

    prefix: list[int]
    rows: list[tuple[list[int], int]]  # (candidate segment + target ids, how many trailing ids are targets)
    answers: list[AnswerTarget] | None = None  # per row; None: every answer a plain 0/1 target of weight 1


def sft_users(splits: list[UserSplit], config: SFTConfig, reserve: int = 0) -> list[UserSplit]:
    """The users SFT draws its examples from (seeded). ``reserve`` users are left to the built-in teacher, whose
    verdict model is fitted on users SFT does not train on: where the catalogue has fewer users than both ask
    for, the two share them in proportion (``users : reserve``), so neither pool is ever empty."""
    eligible = [s for s in splits if len(s.train) >= 2]
    wanted = config.users
    if reserve > 0 and config.users + reserve > len(eligible):
        wanted = len(eligible) * config.users // (config.users + reserve)
    if wanted < 1 or (reserve > 0 and len(eligible) - wanted < 1):
        raise DataError(f"only {len(eligible)} users have 2+ training items: too few for SFT and the teacher's "
                        "calibration (--teacher-calibration-users) to have users of their own")  # fmt: skip
    return random.Random(f"sft-users-{config.seed}").sample(eligible, min(wanted, len(eligible)))


def build_examples(
    checkpoint: Checkpoint,
    catalogue: Catalogue,
    users: list[UserSplit],
    teacher: Teacher,
    config: SFTConfig,
    sequence: SequenceRanker | None = None,
) -> list[Example]:
    """The examples; ``sequence`` states their next-item rank (a model that never saw their targets) and, with
    ``config.hard_negatives``, proposes that many of each example's negatives from its top items (``Retrieval``).
    With ``config.retrieval_share``, that share of the positions whose positive is among those top items (a
    retriever's list that found the item) get a second example beside their catalogue one: retrieved candidates,
    all negatives from the same top items, the prompt saying so (``contract.prompt.CandidateSource``), weighed by
    the teacher's verdict model for retrieved candidates. Only hits: where the positive sits outside the list, a
    retrieved example would teach that the one candidate the retriever did not pick is the next item. And beside,
    not instead: the catalogue examples keep every positive, so what a good rank is worth there stays as it was."""
    if (config.hard_negatives or config.retrieval_share) and sequence is None:
        raise DataError("hard negatives and retrieved candidates come from the examples' sequence model: give "
                        "--sequence-model and --example-sequence-model, or --hard-negatives 0 and "
                        "--retrieval-share 0")  # fmt: skip
    builtin = teacher if isinstance(teacher, BuiltinTeacher) else None  # its verdict models give soft labels
    if config.answer_distill and builtin is None:
        raise DataError("--answer-distill takes its soft labels from the built-in teacher's verdict model: "
                        "give --answer-distill 0 with --teacher-url")  # fmt: skip
    rng = random.Random(config.seed)
    retriever = Retrieval(sequence, config.hard_pool) if sequence is not None else None
    assembler = checkpoint.prompts if sequence is None else checkpoint.prompts.with_sequence(sequence)
    items = sorted(catalogue.titles)
    item = lambda i: Item(i, catalogue.title(i))  # noqa: E731
    pending = []  # (prefix ids, [(segment ids, teacher input, label)], mode): rationales are fetched in one go
    for split in users:
        exclude = set(split.train) | {split.valid_target, split.test_target}
        leave_out = LeaveOut.of_sequence(split.train, assembler.stats.window)
        for end in range(len(split.train) - 1, max(0, len(split.train) - 1 - config.targets_per_user), -1):
            history, positive = split.train[:end], split.train[end]
            hard = retriever.negatives(rng, history, exclude, config.hard_negatives) if config.hard_negatives else []
            random_negatives = sample_negatives(rng, items, exclude | set(hard), config.negatives - len(hard))
            drawn: list[tuple[CandidateSource, list[str]]] = [("catalogue", [positive, *hard, *random_negatives])]
            # drawn only where retrieved candidates are asked for: the other recipes' draws stay as they were
            if config.retrieval_share and rng.random() < config.retrieval_share:
                retrieved = retriever.hit_negatives(rng, history, positive, exclude, config.negatives)
                if retrieved is not None:
                    drawn.append(("retrieval", [positive, *retrieved]))
            for source, candidates in drawn:
                mode: Reasoning = "none" if rng.random() < config.none_fraction else "full"
                prompts = assembler.prompts([item(i) for i in history], [item(i) for i in candidates], mode,
                                            leave_out, source)  # fmt: skip
                shown = zip(candidates, prompts.candidates, prompts.evidence, prompts.segments, strict=True)
                rows = [(segment, TeacherInput(prompts.history, item_shown, evidence, source), candidate == positive)
                        for candidate, item_shown, evidence, segment in shown]  # fmt: skip
                pending.append((prompts.prefix.ids, rows, mode))
    texts = teacher.rationales([inputs for _, rows, mode in pending if mode == "full" for _, inputs, _ in rows])
    rationales = iter(assembler.rationale_ids(texts))
    examples = []
    for prefix, rows, mode in pending:
        built, answers = [], []
        for segment, inputs, label in rows:
            # "none" is scored as prompt + cue (no Reasoning line); "full" as prompt + rationale + cue
            row = assembler.score_input(segment, next(rationales) if mode == "full" else ())
            row.append(assembler.answer_id(label))
            built.append((row, len(row) - len(segment)))
            p_next = None
            if builtin is not None and config.answer_distill:
                p_next = builtin.probability(inputs)
            answers.append(answer_target(assembler.answer_id(not label), label, p_next, config))
        examples.append(Example(prefix, built, answers))
    rng.shuffle(examples)
    return examples


def answer_target(other: int, label: bool, p_next: float | None, config: SFTConfig) -> AnswerTarget:
    """The row's answer target: with ``answer_distill`` d and ``p_next`` the built-in teacher's P(next | evidence),
    a share (1 - d) + d * P of it on the row's own answer, P the probability that the row's label is right; a plain
    0/1 target where ``p_next`` is None."""
    share = 1.0
    if p_next is not None:
        share = 1.0 - config.answer_distill + config.answer_distill * (p_next if label else 1.0 - p_next)
    return AnswerTarget(other, share, config.answer_weight)


def answers_of(example: Example) -> list[AnswerTarget | None]:
    return list(example.answers) if example.answers is not None else [None] * len(example.rows)


def summed_token_nll(model, batch: list[Example], pad_id: int) -> torch.Tensor:
    """Summed next-token cross-entropy over every target token of the batch (rationale, cue, answer), each
    example's prefix and candidate rows run as one packed sequence (``target_log_softmax``); each row's answer
    weighed and soft-labelled as its ``AnswerTarget`` says."""
    log_probs, targets = target_log_softmax(model, [e.prefix for e in batch], [e.rows for e in batch], pad_id)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    position, answer_rows, others, shares, weights = 0, [], [], [], []
    for example in batch:
        for (_, n), answer in zip(example.rows, answers_of(example), strict=True):
            position += n
            if answer is not None and (answer.share != 1.0 or answer.weight != 1.0):
                answer_rows.append(position - 1)
                others.append(answer.other)
                shares.append(answer.share)
                weights.append(answer.weight)
    if not answer_rows:
        return nll.sum()
    index = torch.tensor(answer_rows, device=nll.device)
    share = torch.tensor(shares, device=nll.device, dtype=nll.dtype)
    soft = share * nll[index] - (1.0 - share) * log_probs[index, torch.tensor(others, device=nll.device)]
    weight = torch.ones_like(nll).index_put((index,), torch.tensor(weights, device=nll.device, dtype=nll.dtype))
    return (nll.index_put((index,), soft) * weight).sum()


def loss_weight(batch: list[Example]) -> float:
    """The target tokens, each answer counted by its weight: what the step's loss is the mean over."""
    rows = ((n, answer) for example in batch for (_, n), answer in zip(example.rows, answers_of(example), strict=True))
    return sum(n - 1 + (answer.weight if answer is not None else 1.0) for n, answer in rows)


def packed_length(example: Example) -> int:
    return len(example.prefix) + sum(len(ids) for ids, _ in example.rows)


def micro_batches(batch: list[Example], size: int) -> list[list[Example]]:
    """The step's examples in groups of ``size`` with similar packed lengths (prefix + all candidate rows).

    A packed example runs from about a hundred to several hundred tokens (history lengths vary most), and
    a micro-batch pads its examples to the longest, so grouping by length cuts the waste; the summed loss
    (hence the gradient) is the same."""
    ordered = sorted(batch, key=packed_length)
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def step_losses(model, batch: list[Example], pad_id: int, micro_batch: int, autocast) -> Iterator[torch.Tensor]:
    """The step's mean token cross-entropy as one part per micro-batch (the parts sum to it), produced lazily
    so ``optimizer_step`` backpropagates each before the next forward."""
    total = loss_weight(batch)
    for group in micro_batches(batch, micro_batch):
        with autocast:
            part = summed_token_nll(model, group, pad_id) / total
        yield part


def lr_at(step: int, config: SFTConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_sft(
    base: Path,
    out: Path,
    catalogue: Catalogue,
    users: list[UserSplit],
    teacher: Teacher,
    config: SFTConfig,
    sequence: RankerSequenceModels | None = None,
) -> dict:
    """Fine-tune ``base`` into ``out`` on ``users`` (``sft_users``); resumes from ``out/state.pt`` if an earlier
    run was interrupted. With ``sequence``, the examples state a next-item rank and ``out/model`` ships the
    sequence model that serving states it from."""
    from trainer.attention import load_causal_lm

    torch.manual_seed(config.seed)
    checkpoint = open_checkpoint(base)
    held_out = checkpoint.manifest.provenance.get("pretrain", {}).get("holdout_last")
    if held_out is not None and config.targets_per_user > held_out:
        logger.warning("SFT targets %d positions per user but pre-training held out only the last %d: the extra "
                       "targets were pre-trained on", config.targets_per_user, held_out)  # fmt: skip
    examples = build_examples(checkpoint, catalogue, users, teacher, config, sequence and sequence.examples)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    model_dir = out / "model" if state_path.exists() else base
    device, autocast = training_device("sft")
    model = compile_body(load_causal_lm(model_dir, device), config.compile)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, losses, skipped = 0, [], []
    state = load_state(state_path, optimizer)
    if state is not None:
        step, losses, skipped = state["step"], state["losses"], state.get("skipped_steps", [])
        logger.info("resumed SFT at step %d", step)
    pad_id = checkpoint.encoder.pad_token_id
    model.train()
    last = min(config.steps, config.stop_after or config.steps)
    progress = Progress("sft", config.steps, out / STEP_LOG, done=step, shown=("loss", "lr"))
    while step < last:
        start = (step * config.batch_size) % len(examples)
        batch = examples[start : start + config.batch_size] or examples[: config.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        outcome = optimizer_step(model, optimizer, step_losses(model, batch, pad_id, config.micro_batch, autocast))
        losses.append(outcome.loss)
        if not outcome.applied:
            skipped.append(step)
        step += 1
        progress.update(step, loss=outcome.loss, lr=optimizer.param_groups[0]["lr"], grad_norm=outcome.grad_norm,
                        applied=outcome.applied)  # fmt: skip
        if step % config.checkpoint_every == 0 or step == last:
            model.save_pretrained(out / "model", safe_serialization=True)
            save_state(state_path, optimizer, step, losses=losses, skipped_steps=skipped)
    checkpoint.encoder.tokenizer.save_pretrained(out / "model")
    carry_stats(base, out / "model")
    if sequence is not None:
        ship_sequence_model(sequence.shipped, out / "model")
    summary = {"stage": "sft", "examples": len(examples), "config": asdict(config),
               "skipped_updates": len(skipped),
               "loss_first_10": sum(losses[:10]) / max(1, len(losses[:10])),
               "loss_last_10": sum(losses[-10:]) / max(1, len(losses[-10:]))}  # fmt: skip
    (out / "sft_log.json").write_text(json.dumps({"losses": losses, **summary}, indent=2))
    return summary
