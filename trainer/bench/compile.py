"""Training step time with the model's body eager vs compiled (``torch.compile``, ``sft --compile``), side by side.

    python -m trainer.bench.compile [--model models/default] [--steps 8]

Two copies of the same weights, one compiled by ``trainer.loop.compile_body``, run the same batches, alternating,
with the optimiser's learning rate at 0 so every step sees the weights unchanged:
- an SFT step: 16 examples shaped like the recipe, in micro-batches of 2 (the stage's default);
- an LM pre-training step: 32 training prefixes, batches spread evenly through ``init-model``'s epoch. That stage
  runs eagerly: compiled, a resumed run no longer ends on the same bytes as a straight one (the kernels depend on
  the first shapes compiled), and ``init-model`` promises it does.
The compiled copy first runs every batch once, so compiling (printed apart: the stage pays it once per run,
and again for a shape it has not met) is not in the step times. Prints seconds per step, the mean loss each way
(they should agree to float rounding) and the speed-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from contract.checkpoint import open_checkpoint
from trainer.attention import load_causal_lm
from trainer.bench.arms import bench_parser, recipe_lm_batches, recipe_sft_batches, time_arms
from trainer.config import SFTConfig
from trainer.data import load_splits
from trainer.loop import compile_body, optimizer_step, training_device
from trainer.pretrain import lm_loss
from trainer.sft import step_losses


def report(stage: str, results: dict, compiling_s: float) -> None:
    for name, (secs, loss) in results.items():
        print(f"{stage:>9} {name:>8}: {secs:.3f} s/step, mean loss {loss:.5f}")
    (eager, _), (compiled, _) = results.values()
    print(f"{stage:>9} speed-up compiled: {eager / compiled:.2f}x (compiling and the first pass: {compiling_s:.0f} s)")


def main() -> None:
    args = bench_parser(__doc__, steps=8).parse_args()
    checkpoint = open_checkpoint(args.model)
    catalogue, splits = load_splits(args.data)
    pad_id = checkpoint.encoder.pad_token_id
    models = {"eager": load_causal_lm(args.model).train(),
              "compiled": compile_body(load_causal_lm(args.model).train(), enabled=True)}  # fmt: skip
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=0.0) for name, model in models.items()}

    def arms(step: Callable[[torch.nn.Module, torch.optim.Optimizer, object], float]) -> dict:
        return {name: (lambda batch, name=name: step(models[name], optimizers[name], batch)) for name in models}

    def compiling(step: Callable[[object], float], batches: list) -> float:
        started = time.perf_counter()
        for batch in batches:
            step(batch)
        return time.perf_counter() - started

    sft_batches = recipe_sft_batches(checkpoint, catalogue, splits, args.steps + 1, 16)
    _, sft_autocast = training_device("sft")

    def sft_step(model, optimizer, batch) -> float:
        parts = step_losses(model, batch, pad_id, SFTConfig.micro_batch, sft_autocast)
        return optimizer_step(model, optimizer, parts).loss

    lm_batches = recipe_lm_batches(checkpoint, catalogue, splits, args.steps + 1)
    _, pretrain_autocast = training_device("pretrain")

    def pretrain_step(model, optimizer, batch) -> float:
        with pretrain_autocast:
            loss = lm_loss(model, batch, pad_id)
        return optimizer_step(model, optimizer, loss).loss

    print(f"{torch.get_num_threads()} threads")
    for stage, step, batches in (("sft", sft_step, sft_batches), ("pretrain", pretrain_step, lm_batches)):
        warm = compiling(arms(step)["compiled"], batches)
        report(stage, time_arms(arms(step), batches[0], batches), warm)


if __name__ == "__main__":
    main()
