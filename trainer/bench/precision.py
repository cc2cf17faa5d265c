"""Training step time on this machine in float32 vs bf16 autocast (``R2RANK_TRAIN_PRECISION``), side by side.

    python -m trainer.bench.precision [--model models/default] [--steps 6]

Times two of the recipe's stages from the same weights (lr 0, so every step sees them unchanged),
alternating the two precisions so drift on a shared machine hits both alike:
- an SFT step: 16 examples shaped like the recipe, in micro-batches of 2 (the stage's default);
- an LM pre-training step: batches spread evenly through ``init-model``'s epoch (32 training prefixes
  each, length-bucketed).

Prints seconds per step each way, the ratio, the mean loss each way (bf16 should stay close), and whether
this CPU has bf16 hardware (AVX512-BF16 or AMX): without it bf16 is emulated and the ratio falls below 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from contract.checkpoint import open_checkpoint
from trainer.attention import load_causal_lm
from trainer.bench.arms import bench_parser, recipe_lm_batches, recipe_sft_batches, time_arms
from trainer.config import SFTConfig
from trainer.data import load_splits
from trainer.loop import cpu_has_native_bf16, optimizer_step
from trainer.pretrain import lm_loss
from trainer.sft import step_losses

SETTINGS = {
    "float32": contextlib.nullcontext,
    "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
}


def per_precision(step: Callable[[object, contextlib.AbstractContextManager], float]) -> dict:
    """One arm per precision setting: ``step(batch, context)`` under each."""
    return {name: (lambda batch, context=context: step(batch, context())) for name, context in SETTINGS.items()}


def report(stage: str, results: dict) -> None:
    for name, (secs, loss) in results.items():
        print(f"{stage:>9} {name:>14}: {secs:.3f} s/step, mean loss {loss:.4f}")
    (fp32, _), (bf16, _) = results.values()
    print(f"{stage:>9} speed-up with bf16 autocast: {fp32 / bf16:.2f}x")


def main() -> None:
    args = bench_parser(__doc__, steps=6, steps_help="timed steps per precision and stage").parse_args()

    model = load_causal_lm(args.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    catalogue, splits = load_splits(args.data)
    checkpoint = open_checkpoint(args.model)
    sft_batches = recipe_sft_batches(checkpoint, catalogue, splits, args.steps + 1, 16)
    pad_id = checkpoint.encoder.pad_token_id

    def sft_step(batch, context) -> float:
        return optimizer_step(model, optimizer, step_losses(model, batch, pad_id, SFTConfig.micro_batch, context)).loss

    def pretrain_step(chunk, context) -> float:
        with context:
            loss = lm_loss(model, chunk, pad_id)
        return optimizer_step(model, optimizer, loss).loss

    lm_batches = recipe_lm_batches(checkpoint, catalogue, splits, args.steps + 1)
    print(f"{torch.get_num_threads()} threads; bf16 in hardware (AVX512-BF16/AMX): {cpu_has_native_bf16()}")
    report("sft", time_arms(per_precision(sft_step), sft_batches[0], sft_batches))
    report("pretrain", time_arms(per_precision(pretrain_step), lm_batches[0], lm_batches))


if __name__ == "__main__":
    main()
