"""LM pre-training step time: the plain padded forward, the shared-prefix forward, and that in bf16.

    python -m trainer.bench.pretrain_step [--model models/default] [--steps 16]

Every training sequence starts with the contract's instruction and history header, so ``pretrain.lm_loss``
runs those tokens once per batch (same loss and gradients, ``tests/test_rl.py``). Three arms, one flag each,
run the same ``init-model`` batches (32 training prefixes each, spread evenly through the epoch) from the same
weights, alternating, with the optimiser's learning rate at 0 so every step sees them unchanged:
- ``lm_loss(share_prefix=False)``: ``model(input_ids, labels)`` over whole right-padded sequences;
- ``lm_loss()`` (shared prefix), float32;
- ``lm_loss()`` under bf16 autocast (what ``R2RANK_TRAIN_PRECISION=auto`` uses on a CPU with bf16 hardware).
Prints seconds per step, the mean loss of each arm and the speed-ups.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable

import torch

from contract.checkpoint import open_checkpoint
from trainer.attention import load_causal_lm
from trainer.bench.arms import bench_parser, recipe_lm_batches, time_arms
from trainer.data import load_splits
from trainer.loop import cpu_has_native_bf16, optimizer_step
from trainer.pretrain import lm_loss, shared_prefix_length


def main() -> None:
    args = bench_parser(__doc__, steps=16).parse_args()

    checkpoint = open_checkpoint(args.model)
    catalogue, splits = load_splits(args.data)
    batches = recipe_lm_batches(checkpoint, catalogue, splits, args.steps + 1)  # the first warms up
    pad_id = checkpoint.encoder.pad_token_id
    model = load_causal_lm(args.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)

    def step_with(share_prefix: bool, context: Callable[[], contextlib.AbstractContextManager]):
        def step(batch: list) -> float:
            with context():
                loss = lm_loss(model, batch, pad_id, share_prefix=share_prefix)
            return optimizer_step(model, optimizer, loss).loss

        return step

    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    arms = {
        "plain padded, float32": step_with(False, contextlib.nullcontext),
        "shared prefix, float32": step_with(True, contextlib.nullcontext),
        "shared prefix, bf16": step_with(True, bf16),
    }
    results = time_arms(arms, batches[0], batches[1:])
    shared = statistics.mean(shared_prefix_length(b) for b in batches)
    tokens = statistics.mean(sum(map(len, b)) / len(b) for b in batches)
    print(
        f"{torch.get_num_threads()} threads; bf16 in hardware (AVX512-BF16/AMX): {cpu_has_native_bf16()}; "
        f"shared prefix {shared:.0f} of {tokens:.0f} tokens per sequence on average"
    )
    for name, (secs, loss) in results.items():
        print(f"{name:>24}: {secs:.3f} s/step, mean loss {loss:.4f}")
    plain, shared_fp32, shared_bf16 = (secs for secs, _ in results.values())
    print(
        f"speed-up: shared prefix {plain / shared_fp32:.2f}x; bf16 on top {shared_fp32 / shared_bf16:.2f}x; "
        f"together {plain / shared_bf16:.2f}x ({args.steps} steps per arm, alternating)"
    )


if __name__ == "__main__":
    main()
