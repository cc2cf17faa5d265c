"""SFT cold start: teach the model to write the teacher's rationale and then the right answer token.

Each example is one (user, candidate) pair from the TRAINING prefix of a user's sequence: history =
train[:-1], positive = train[-1], plus sampled negatives. Inputs are built by the service's own
``prepare_prompts`` (same cleaning, caps and token segmentation as serving), followed by
``encode(rationale segment) + encode(answer cue) + [yes|no]`` — exactly the ids the service scores. The loss
is next-token cross-entropy on everything after the prompt: rationale, the newline that ends it, the cue
and the answer.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from service import contract
from service.checkpoint import Checkpoint, open_checkpoint
from service.protocol import ItemIn
from service.ranking import prepare_prompts
from trainer.data import Catalogue, UserSplit, sample_negatives
from trainer.teacher import BuiltinTeacher

logger = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class SFTConfig:
    users: int = 2000  # training users to draw examples from
    negatives: int = 3  # negatives per positive (pointwise labels: 1 yes + N no)
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3  # from-scratch tiny models; use ~1e-5 for a pretrained base model
    warmup_steps: int = 20
    weight_decay: float = 0.01
    checkpoint_every: int = 100
    seed: int = 0
    stop_after: int | None = None  # end this invocation after this step (checkpointed); rerun to resume

    def __post_init__(self) -> None:
        assert self.users > 0 and self.steps > 0 and self.batch_size > 0, "users, steps, batch_size must be > 0"
        assert self.negatives >= 1, "SFT needs negatives (answer 'no') as well as positives"


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt


def build_examples(
    checkpoint: Checkpoint, catalogue: Catalogue, splits: list[UserSplit], teacher: BuiltinTeacher, config: SFTConfig
) -> list[Example]:
    rng = random.Random(config.seed)
    encoder = checkpoint.encoder
    yes, no = checkpoint.answer_ids
    cue = encoder.encode(contract.ANSWER_CUE)
    items = sorted(catalogue.titles)
    eligible = [s for s in splits if len(s.train) >= 2]
    examples = []
    for split in rng.sample(eligible, min(config.users, len(eligible))):
        history, positive = split.train[:-1], split.train[-1]
        exclude = set(split.train) | {split.valid_target, split.test_target}
        candidates = [positive, *sample_negatives(rng, items, exclude, config.negatives)]
        prepared = prepare_prompts(
            checkpoint,
            [ItemIn(item_id=i, title=catalogue.title(i)) for i in history],
            [ItemIn(item_id=i, title=catalogue.title(i)) for i in candidates],
            "full",
        )
        for item, job in zip(candidates, prepared.jobs, strict=True):
            rationale = teacher.rationale(history, item)
            target = encoder.encode(contract.rationale_segment(rationale)) + cue + [yes if item == positive else no]
            examples.append(Example(job.prompt_ids + target, [IGNORE] * len(job.prompt_ids) + target))
    rng.shuffle(examples)
    return examples


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lr_at(step: int, config: SFTConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_sft(
    base: Path, out: Path, catalogue: Catalogue, splits: list[UserSplit], teacher: BuiltinTeacher, config: SFTConfig
) -> dict:
    """Fine-tune ``base`` into ``out``; resumes from ``out/state.pt`` if an earlier run was interrupted."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(config.seed)
    checkpoint = open_checkpoint(base)
    examples = build_examples(checkpoint, catalogue, splits, teacher, config)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    model_dir = out / "model" if state_path.exists() else base
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, losses = 0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed SFT at step %d", step)
    pad_id = checkpoint.encoder.tokenizer.pad_token_id or 0
    model.train()
    last = min(config.steps, config.stop_after or config.steps)
    while step < last:
        start = (step * config.batch_size) % len(examples)
        batch = collate(examples[start : start + config.batch_size] or examples[: config.batch_size], pad_id)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 10 == 0:
            logger.info("sft step %d loss %.4f lr %.2e", step, losses[-1], lr_at(step, config))
        if step % config.checkpoint_every == 0 or step == last:
            model.save_pretrained(out / "model", safe_serialization=True)
            torch.save({"optimizer": optimizer.state_dict(), "step": step, "losses": losses,
                        "torch_rng": torch.get_rng_state()}, state_path)  # fmt: skip
    checkpoint.encoder.tokenizer.save_pretrained(out / "model")
    summary = {"stage": "sft", "examples": len(examples), "config": asdict(config),
               "loss_first_10": sum(losses[:10]) / max(1, len(losses[:10])),
               "loss_last_10": sum(losses[-10:]) / max(1, len(losses[-10:]))}  # fmt: skip
    (out / "sft_log.json").write_text(json.dumps({"losses": losses, **summary}, indent=2))
    return summary
