"""Optional LM pre-training of a from-scratch model on training sequences, in the contract's own layout.

Each user's training prefix is written exactly as the service writes a history (``PromptAssembler``:
instruction, header, one bullet per title, oldest first), and the model learns next-token prediction on it.
A from-scratch model thereby learns which titles are common (popularity) and which follow which
(co-occurrence) before SFT teaches it to answer yes/no: knowledge the ranker needs and that SFT alone,
one answer token per candidate, teaches slowly. Only training prefixes are used (no validation or test
item), and not their last ``holdout_last`` positions either: SFT later uses those as targets, and a target the
LM has already read in its user's sequence would be remembered, not ranked. Resumable like the other stages.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from contract.checkpoint import Checkpoint
from contract.evidence import Item
from trainer.config import PretrainConfig
from trainer.data import Catalogue, UserSplit
from trainer.loop import CpuShare, load_state, optimizer_step, save_state, training_device
from trainer.policy import grouped_forward
from trainer.progress import Progress

logger = logging.getLogger(__name__)
STATE = "pretrain_state.pt"
STEP_LOG = "pretrain_steps.jsonl"


def lm_sequences(
    checkpoint: Checkpoint, catalogue: Catalogue, splits: list[UserSplit], holdout_last: int = 0
) -> list[list[int]]:
    """One token sequence per user: their training prefix, without its last ``holdout_last`` items, as the
    service would render a history."""
    sequences = []
    for split in splits:
        kept = split.train[: len(split.train) - holdout_last] if holdout_last else split.train
        if kept:
            sequences.append(checkpoint.prompts.history_prefix([Item(i, catalogue.title(i)) for i in kept]).ids)
    return sequences


def length_bucketed_batches(sequences: list[list[int]], batch_size: int, seed: int) -> list[list[list[int]]]:
    """Shuffled batches of similar-length sequences (sorted within windows of 50 batches), so padding wastes
    little compute; the batch order is shuffled again so lengths do not drift through an epoch."""
    rng = random.Random(seed)
    order = sequences[:]
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=len)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def padded_batch(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """A plain right-padded LM batch (``model(**batch).loss`` is the ordinary HF loss over it)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence shares, leaving each at least one token of its own."""
    shared = min(len(s) for s in sequences) - 1
    first = sequences[0]
    for sequence in sequences[1:]:
        shared = next((i for i in range(shared) if sequence[i] != first[i]), shared)
    return max(0, shared)


def lm_loss(model, sequences: list[list[int]], pad_id: int, share_prefix: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch: every token after a sequence's first, equally weighted.

    Every training sequence starts with the contract's instruction and history header (28 tokens of an
    average 109 in the shipped layout). That shared prefix runs once per batch and its keys/values are
    repeated for every row (``grouped_forward``); the loss on its own tokens, the same in every row, counts
    once per row. So the loss and gradients are those of a plain padded forward over whole sequences (a test
    checks both), for about a quarter less compute. ``share_prefix=False`` runs the plain padded forward (the
    baseline ``trainer.bench.pretrain_step`` times)."""
    shared = shared_prefix_length(sequences) if share_prefix else 0
    if shared < 2:
        return model(**{name: t.to(model.device) for name, t in padded_batch(sequences, pad_id).items()}).loss
    device = model.device
    prefix = sequences[0][:shared]
    packed = grouped_forward(model, [prefix], [[s[shared:] for s in sequences]], pad_id, logits_to_keep=0,
                             prefix_logits_to_keep=0)  # fmt: skip
    prefix_logits = packed.prefix_logits[0].float()  # (P, V)
    # the prefix's tokens 1..P-1, predicted alike in every row
    prefix_nll = F.cross_entropy(prefix_logits[:-1], torch.tensor(prefix[1:], device=device), reduction="sum")
    # each row's first own token, predicted from the prefix's last position
    first_ids = torch.tensor([s[shared] for s in sequences], device=device)
    first_nll = F.cross_entropy(prefix_logits[-1:].expand(len(sequences), -1), first_ids, reduction="sum")
    # the rest of each row from its own columns (left-padded: a target counts where it and its predictor are real)
    targets = packed.suffix_ids[:, 1:].masked_fill((packed.suffix_mask[:, :-1] * packed.suffix_mask[:, 1:]) == 0, -100)
    logits = packed.logits[:, :-1].float()
    rest_nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    predicted = sum(len(s) - 1 for s in sequences)
    return (len(sequences) * prefix_nll + first_nll + rest_nll) / predicted


def pretrain_lm(
    model_dir: Path, checkpoint: Checkpoint, catalogue: Catalogue, splits: list[UserSplit], config: PretrainConfig
) -> dict:
    """Train the model in ``model_dir`` in place (its tokenizer is already there)."""
    from trainer.attention import load_causal_lm

    torch.manual_seed(config.seed)
    sequences = lm_sequences(checkpoint, catalogue, splits, config.holdout_last)
    batches = length_bucketed_batches(sequences, config.batch_size, config.seed)
    steps = max(1, math.ceil(config.epochs * len(batches)))
    device, autocast = training_device("pretrain")
    model = load_causal_lm(model_dir, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, losses = 0, []
    state_path = model_dir / STATE
    state = load_state(state_path, optimizer)
    if state is not None:
        step, losses = state["step"], state["losses"]
        logger.info("resumed LM pre-training at step %d", step)
    pad_id = checkpoint.encoder.pad_token_id
    last = min(steps, config.stop_after or steps)
    progress = Progress("pretrain", steps, model_dir / STEP_LOG, done=step, every=20, shown=("loss", "lr"))
    model.train()
    cpu = CpuShare()
    while step < last:
        cpu.poll()
        chunk = batches[step % len(batches)]
        warm = min(1.0, (step + 1) / config.warmup_steps)
        fraction = min(1.0, step / steps)
        for group in optimizer.param_groups:  # warm-up, then cosine to 10% of the peak
            group["lr"] = config.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction)))
        with autocast:
            loss = lm_loss(model, chunk, pad_id)
        outcome = optimizer_step(model, optimizer, loss)
        losses.append(outcome.loss)
        step += 1
        progress.update(step, loss=outcome.loss, lr=optimizer.param_groups[0]["lr"], grad_norm=outcome.grad_norm,
                        applied=outcome.applied)  # fmt: skip
        if step % config.checkpoint_every == 0 or step == last:
            model.save_pretrained(model_dir, safe_serialization=True)
            save_state(state_path, optimizer, step, losses=losses)
    summary = {"pretrain": asdict(config), "pretrain_sequences": sum(map(len, batches)), "pretrain_steps": steps,
               "pretrain_loss_first_10": sum(losses[:10]) / max(1, len(losses[:10])),
               "pretrain_loss_last_10": sum(losses[-10:]) / max(1, len(losses[-10:]))}  # fmt: skip
    if step >= steps:
        state_path.unlink(missing_ok=True)  # done: the directory is a plain checkpoint again
    return summary
