"""RL step time: projecting every trailing column onto the vocabulary vs only the positions RL reads.

    python -m loadtest.bench_rl_projection [--model models/default] [--data DIR] [--steps 3]

RL's score pass runs ``prefix + candidate + rationale + cue`` for every rollout row and reads the answer
position (the score) and the rationale tokens' log-probs. Rows are left-padded to the longest rationale, so
projecting the last ``longest rationale + cue + 1`` columns of every row onto the 4,096-token vocabulary (the
code before) projects many positions nobody reads, and the served-rationale term reads the score alone.
Two arms run the same RL steps (the Makefile's ``RL_ARGS`` shape, torch rollouts) from the same weights with
lr 0, alternating: ``every trailing column`` (the previous ``_score_pass``, kept here as the baseline) and
``read positions only`` (``RLTrainer._score_pass`` now). The same seed samples the same rationales in both, so
their losses should agree. Prints seconds per step, the mean loss, and the speed-up.
"""

from __future__ import annotations

import statistics
import types

import torch

from loadtest.bench_rl_sampling import alternate_steps, make_trainer, rl_bench_setup
from trainer.policy import grouped_forward
from trainer.rl import Prompted, RLTrainer


def score_pass_every_column(self: RLTrainer, model, batch: list[Prompted], rationales, G=None, token_logps=True):
    """``_score_pass`` before: the logits of every trailing column of every row, log-softmaxed whole."""
    G = self.config.rollouts if G is None else G
    suffixes, spans = [], []
    for prompted, group in zip(batch, rationales, strict=True):
        rows = []
        for i, rationale in enumerate(group):
            rows.append(prompted.segments[i % len(prompted.segments)] + rationale + self.cue)
            spans.append(len(rationale))
        suffixes.append(rows)
    keep = max(spans) + len(self.cue) + 1
    packed = grouped_forward(model, [p.prefix for p in batch], suffixes, self.pad_id, logits_to_keep=keep)
    logp = torch.log_softmax(packed.logits.float(), dim=-1)
    scores = logp[:, -1, self.yes] - logp[:, -1, self.no]
    targets = packed.suffix_ids[:, -keep + 1 :]
    token_logp = torch.gather(logp[:, :-1], -1, targets.unsqueeze(-1)).squeeze(-1)
    mask = torch.zeros_like(token_logp)
    for row, n in enumerate(spans):
        mask[row, keep - 1 - len(self.cue) - n : keep - 1 - len(self.cue)] = 1.0
    return token_logp, mask, scores


def main() -> None:
    args, cases = rl_bench_setup(__doc__.splitlines()[0])
    before = make_trainer(args.model, "r2rank")
    before._score_pass = types.MethodType(score_pass_every_column, before)
    arms = {"every trailing column": before, "read positions only": make_trainer(args.model, "r2rank")}
    results = alternate_steps(arms, cases, args.steps)
    for name, timed in results.items():
        loss = statistics.mean(t.stats.loss for t in timed)
        print(f"{name:>22}: {statistics.mean(t.seconds for t in timed):.2f} s/step, mean loss {loss:.5f}")
    slow, fast = (statistics.mean(t.seconds for t in timed) for timed in results.values())
    print(f"speed-up per RL step: {slow / fast:.2f}x ({args.steps} steps each, alternating, "
          f"{torch.get_num_threads()} threads)")  # fmt: skip


if __name__ == "__main__":
    main()
