"""SFT step time: one row per candidate on a shared prefix (the layout before) vs packed examples, side by side.

    python -m loadtest.bench_sft_step [--model models/default] [--steps 8] [--micro-batch 2]

Builds SFT examples shaped like the Makefile's ``SFT_ARGS`` (built-in teacher, 2 target positions per user,
1 + 3 candidates, 30% ``none`` form; ``steps x batch-size`` users, without the misrecall flags), then times
forward + backward + optimiser step on the same batches and weights (lr 0), in micro-batches of the same
size, alternating the two layouts so drift on a shared machine hits both alike:
- ``rows on a shared prefix``: ``grouped_forward`` runs each example's history prefix once and its
  candidates as left-padded rows on its cache, projecting the last columns of every row onto the vocabulary
  (SFT's forward until 2026-11-27);
- ``packed``: ``trainer/packing.py``, the prefix and all candidate rows in one sequence with a block mask,
  projecting only the target positions (SFT's forward now).

Prints seconds per step and the mean loss each way (they should agree), the ratio, and the share of real
(non-pad) tokens among those run through the model each way.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator

import torch

from loadtest.arms import bench_parser, time_arms
from service.checkpoint import Checkpoint, open_checkpoint
from trainer.attention import load_causal_lm
from trainer.data import Catalogue, UserSplit, leave_one_out, load_dataset
from trainer.loop import optimizer_step
from trainer.policy import grouped_forward
from trainer.sft import Example, SFTConfig, build_examples, micro_batches, packed_length, step_losses, target_tokens
from trainer.teacher import BuiltinTeacher, TrainingStats


def grouped_token_nll(model, batch: list[Example], pad_id: int) -> torch.Tensor:
    """SFT's summed target cross-entropy as it was computed before packing: ``grouped_forward`` with every row
    left-padded to the longest and the last ``longest target + 1`` columns of every row projected."""
    keep = max(n for example in batch for _, n in example.rows) + 1
    packed = grouped_forward(model, [e.prefix for e in batch], [[ids for ids, _ in e.rows] for e in batch], pad_id,
                             logits_to_keep=keep)  # fmt: skip
    logp = torch.log_softmax(packed.logits.float(), dim=-1)[:, :-1]
    token_logp = torch.gather(logp, -1, packed.suffix_ids[:, -keep + 1 :].unsqueeze(-1)).squeeze(-1)
    mask = torch.zeros_like(token_logp)
    for row, n in enumerate(n for example in batch for _, n in example.rows):
        mask[row, keep - 1 - n :] = 1.0
    return -(token_logp * mask).sum()


def grouped_micro_batches(batch: list[Example], size: int) -> list[list[Example]]:
    """Micro-batches as they were grouped for that layout: by longest candidate row, then prefix length."""
    ordered = sorted(batch, key=lambda e: (max(len(ids) for ids, _ in e.rows), len(e.prefix)))
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def grouped_real_share(batch: list[Example], size: int) -> float:
    """Real / computed tokens of the grouped layout (a prefix block and a suffix block per micro-batch)."""
    real = padded = 0
    for group in grouped_micro_batches(batch, size):
        rows = [ids for e in group for ids, _ in e.rows]
        real += sum(len(e.prefix) for e in group) + sum(map(len, rows))
        padded += max(len(e.prefix) for e in group) * len(group) + max(map(len, rows)) * len(rows)
    return real / padded


def packed_real_share(batch: list[Example], size: int) -> float:
    """Real / computed tokens of the packed layout (each micro-batch padded to its longest example)."""
    groups = micro_batches(batch, size)
    return sum(map(packed_length, batch)) / sum(max(map(packed_length, g)) * len(g) for g in groups)


def grouped_step_losses(model, batch: list[Example], pad_id: int, size: int) -> Iterator[torch.Tensor]:
    total = target_tokens(batch)
    for group in grouped_micro_batches(batch, size):
        yield grouped_token_nll(model, group, pad_id) / total


def makefile_sft_batches(
    checkpoint: Checkpoint, catalogue: Catalogue, splits: list[UserSplit], steps: int, batch_size: int
) -> list[list[Example]]:
    """``steps`` SFT batches shaped like the Makefile's ``SFT_ARGS`` (without the misrecall flags), from
    ``steps x batch_size`` users, for ``checkpoint``'s tokenizer."""
    config = SFTConfig(users=steps * batch_size, targets_per_user=2, negatives=3, none_fraction=0.3,
                       batch_size=batch_size)  # fmt: skip
    teacher = BuiltinTeacher(catalogue, TrainingStats.from_splits(splits))
    examples = build_examples(checkpoint, catalogue, splits, teacher, config)
    return [examples[i : i + batch_size] for i in range(0, steps * batch_size, batch_size)]


def main() -> None:
    parser = bench_parser(__doc__, steps=8, steps_help="timed steps per layout")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=SFTConfig.micro_batch)
    args = parser.parse_args()

    catalogue, sequences = load_dataset(args.data)
    checkpoint = open_checkpoint(args.model)
    batches = makefile_sft_batches(checkpoint, catalogue, leave_one_out(sequences), args.steps + 1, args.batch_size)
    model = load_causal_lm(args.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: every step sees the same weights
    pad_id, size = checkpoint.encoder.tokenizer.pad_token_id or 0, args.micro_batch
    layouts = {
        "rows on a shared prefix": (lambda b: grouped_step_losses(model, b, pad_id, size), grouped_real_share),
        "packed": (lambda b: step_losses(model, b, pad_id, size, contextlib.nullcontext()), packed_real_share),
    }
    arms = {name: (lambda b, losses=losses: optimizer_step(model, optimizer, losses(b)).loss)
            for name, (losses, _) in layouts.items()}  # fmt: skip
    results = time_arms(arms, batches[0], batches[1:])
    for name, (secs, loss) in results.items():
        share = statistics.mean(layouts[name][1](b, size) for b in batches[1:])
        print(f"{name:>24}: {secs:.3f} s/step, mean loss {loss:.5f}, real tokens {share:.0%} of those computed")
    (before, _), (now, _) = results.values()
    print(f"speed-up: {before / now:.2f}x ({args.steps} steps of {args.batch_size} examples in micro-batches of "
          f"{size}, {torch.get_num_threads()} threads)")  # fmt: skip


if __name__ == "__main__":
    main()
