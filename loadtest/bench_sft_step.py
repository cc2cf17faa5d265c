"""SFT step time: one padded forward over the whole batch vs length-grouped micro-batches, side by side.

    python -m loadtest.bench_sft_step [--model models/default] [--steps 8] [--micro-batch 2]

Builds SFT examples shaped like the Makefile's ``SFT_ARGS`` (built-in teacher, 2 target positions per user,
1 + 3 candidates, 30% ``none`` form; ``steps x batch-size`` users, without the misrecall flags), then times
forward + backward + optimiser step on the same batches, alternating the two settings so drift on a shared
machine hits both alike. Prints seconds per step each way, the ratio, and the share of real (non-pad)
tokens each way.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from service.checkpoint import Checkpoint, open_checkpoint
from trainer.cli import DEFAULT_DATA
from trainer.data import Catalogue, UserSplit, leave_one_out, load_dataset
from trainer.loop import optimizer_step
from trainer.sft import Example, SFTConfig, build_examples, micro_batches, step_losses
from trainer.teacher import BuiltinTeacher, TrainingStats


def real_token_share(batch: list[Example], micro_batch: int) -> float:
    """Real tokens / padded tokens over the forwards of one step (prefix and suffix blocks)."""
    real = padded = 0
    for group in micro_batches(batch, micro_batch):
        rows = [ids for e in group for ids, _ in e.rows]
        real += sum(len(e.prefix) for e in group) + sum(map(len, rows))
        padded += max(len(e.prefix) for e in group) * len(group) + max(map(len, rows)) * len(rows)
    return real / padded


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=SFTConfig.micro_batch)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    catalogue, sequences = load_dataset(args.data)
    checkpoint = open_checkpoint(args.model)
    batches = makefile_sft_batches(checkpoint, catalogue, leave_one_out(sequences), args.steps, args.batch_size)
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: every step sees the same weights
    pad_id = checkpoint.encoder.tokenizer.pad_token_id or 0
    settings = {"one pass": args.batch_size, f"micro-batches of {args.micro_batch}": args.micro_batch}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    for warmup, batch in [(True, batches[0]), *((False, b) for b in batches)]:
        for name, size in settings.items():
            started = time.perf_counter()
            optimizer_step(model, optimizer, step_losses(model, batch, pad_id, size, contextlib.nullcontext()))
            if not warmup:
                seconds[name].append(time.perf_counter() - started)
    for name, size in settings.items():
        share = statistics.mean(real_token_share(b, size) for b in batches)
        print(f"{name:>22}: {statistics.mean(seconds[name]):.3f} s/step, real tokens {share:.0%} of those computed")
    one, micro = (statistics.mean(v) for v in seconds.values())
    print(
        f"speed-up: {one / micro:.2f}x ({args.steps} steps of {args.batch_size} examples, {torch.get_num_threads()} "
        "threads)"
    )


if __name__ == "__main__":
    main()
