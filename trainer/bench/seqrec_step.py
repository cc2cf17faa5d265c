"""Sequence-model (SASRec) step time: the fused full-softmax loss against the whole logit matrix.

    python -m trainer.bench.seqrec_step [--data DIR] [--steps 20]

Two arms, one flag (``sequence_loss(fused=...)``), run the same ``seqrec`` batches (the recipe's
``--horizon sft`` training sequences, about 4,096 positions each, spread evenly through an epoch) from the same
weights, alternating, with Adam's learning rate at 0 so every step sees them unchanged:
- ``fused=False``: ``F.cross_entropy`` of the (positions x items) logits;
- ``fused=True``: ``trainer.fused_softmax``, the logits one cache-sized chunk of positions at a time.
Prints seconds per step, the mean loss of each arm (they should agree to float rounding), the speed-up, and
what it comes to for the recipe's 16 epochs of ``make seqrec-ranker``.
"""

from __future__ import annotations

import random

import torch

from contract.catalogue import item_order
from trainer.bench.arms import bench_parser, time_arms
from trainer.config import SeqRecConfig
from trainer.data import load_splits
from trainer.seqrec import SequenceModel, _pad, length_batches, sequence_loss, training_sequences

RANKER_EPOCHS = 12 + 4  # make seqrec-ranker: the sft horizon, then the valid one from its weights


def main() -> None:
    args = bench_parser(__doc__, steps=20).parse_args()

    catalogue, splits = load_splits(args.data)
    config = SeqRecConfig()
    model = SequenceModel(item_order(catalogue.titles), config)  # as `seqrec` orders them
    encoded = [ids for ids in (model.encode(s) for s in training_sequences(splits, "sft")) if len(ids) >= 2]
    epoch = length_batches([len(ids) for ids in encoded], config.batch_tokens, random.Random(0))
    batches = [_pad([encoded[i] for i in b])[0] for b in epoch[:: max(1, len(epoch) // (args.steps + 1))]]
    batches = batches[: args.steps + 1]  # the first warms up
    optimizer = torch.optim.Adam(model.model.parameters(), lr=0.0)
    model.model.train()

    def step_with(fused: bool):
        def step(ids: torch.Tensor) -> float:
            torch.manual_seed(0)  # the same dropout draws in both arms
            loss = sequence_loss(model.model, ids, fused=fused)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return float(loss)

        return step

    results = time_arms({"whole logit matrix": step_with(False), "fused": step_with(True)}, batches[0], batches[1:])
    print(f"{torch.get_num_threads()} threads; {len(catalogue.titles)} items; {len(epoch)} steps per epoch")
    for name, (secs, loss) in results.items():
        print(f"{name:>20}: {secs:.3f} s/step, mean loss {loss:.4f}")
    (plain, _), (fused, _) = results.values()
    saved_min = (plain - fused) * len(epoch) * RANKER_EPOCHS / 60
    print(f"speed-up: {plain / fused:.2f}x ({args.steps} steps per arm, alternating); at {len(epoch)} steps per "
          f"epoch, {saved_min:.1f} min less over make seqrec-ranker's {RANKER_EPOCHS} epochs")  # fmt: skip


if __name__ == "__main__":
    main()
