"""LM pre-training step time on this CPU: a plain padded forward, the shared-prefix forward, and that in bf16.

    python -m loadtest.bench_pretrain_step [--model models/default] [--steps 16]

Every training sequence starts with the contract's instruction and history header, so ``pretrain.lm_loss``
runs those tokens once per batch (same loss and gradients, ``tests/test_rl.py``). Three arms run the same
``init-model`` batches (32 training prefixes each, spread evenly through the epoch) from the same weights,
alternating, with the optimiser's learning rate at 0 so every step sees them unchanged:
- plain: ``model(input_ids, labels)`` over whole right-padded sequences (the code before);
- shared prefix, float32;
- shared prefix, bf16 autocast (what ``R2RANK_TRAIN_PRECISION=auto`` uses on a CPU with bf16 hardware).
Prints seconds per step, the mean loss of each arm and the speed-ups.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable

import torch

from loadtest.arms import bench_parser, time_arms
from service.checkpoint import open_checkpoint
from trainer.attention import load_causal_lm
from trainer.data import leave_one_out, load_dataset
from trainer.loop import cpu_has_native_bf16, optimizer_step
from trainer.pretrain import _batch, length_bucketed_batches, lm_loss, lm_sequences, shared_prefix_length


def main() -> None:
    args = bench_parser(__doc__, steps=16).parse_args()

    checkpoint = open_checkpoint(args.model)
    catalogue, sequences = load_dataset(args.data)
    epoch = length_bucketed_batches(lm_sequences(checkpoint, catalogue, leave_one_out(sequences)), 32, seed=0)
    batches = epoch[:: len(epoch) // (args.steps + 1)][: args.steps + 1]  # the first warms up
    pad_id = checkpoint.encoder.tokenizer.pad_token_id or 0
    model = load_causal_lm(args.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)

    def step_with(loss_of: Callable[[list], torch.Tensor], context: Callable[[], contextlib.AbstractContextManager]):
        def step(batch: list) -> float:
            with context():
                loss = loss_of(batch)
            return optimizer_step(model, optimizer, loss).loss

        return step

    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    arms = {
        "plain padded, float32": step_with(lambda b: model(**_batch(b, pad_id)).loss, contextlib.nullcontext),
        "shared prefix, float32": step_with(lambda b: lm_loss(model, b, pad_id), contextlib.nullcontext),
        "shared prefix, bf16": step_with(lambda b: lm_loss(model, b, pad_id), bf16),
    }
    results = time_arms(arms, batches[0], batches[1:])
    shared = statistics.mean(shared_prefix_length(b) for b in batches)
    tokens = statistics.mean(sum(map(len, b)) / len(b) for b in batches)
    print(f"{torch.get_num_threads()} threads; bf16 in hardware (AVX512-BF16/AMX): {cpu_has_native_bf16()}; "
          f"shared prefix {shared:.0f} of {tokens:.0f} tokens per sequence on average")  # fmt: skip
    for name, (secs, loss) in results.items():
        print(f"{name:>24}: {secs:.3f} s/step, mean loss {loss:.4f}")
    plain, shared_fp32, shared_bf16 = (secs for secs, _ in results.values())
    print(f"speed-up: shared prefix {plain / shared_fp32:.2f}x; bf16 on top {shared_fp32 / shared_bf16:.2f}x; "
          f"together {plain / shared_bf16:.2f}x ({args.steps} steps per arm, alternating)")  # fmt: skip


if __name__ == "__main__":
    main()
