"""RL on a CPU: the trainer's attention and sampler against transformers' SDPA and ``torch.multinomial``.

    python -m loadtest.bench_rl_sampling [--model models/default] [--data DIR] [--steps 3]

Two arms run the same RL steps (the Makefile's ``RL_ARGS`` shape: 2 rollout users x 4 rollouts + 8 served
users, 1 + 19 candidates) from the same weights, alternating, with the optimiser's learning rate at 0 so
every step starts from the same model:
- before: transformers' ``sdpa`` attention (keys/values repeated per query head when a mask is passed) and
  ``torch.multinomial``;
- after: ``trainer.attention`` (``enable_gqa``) and ``policy.sample_categorical``.
It prints seconds per step and the time spent sampling rationales, and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

import trainer.policy as policy
from loadtest.arms import bench_parser
from service.checkpoint import open_checkpoint
from trainer.attention import load_causal_lm
from trainer.cli import _load, _split
from trainer.rl import RLCase, RLConfig, RLTrainer, StepStats, rl_cases
from trainer.rollouts import VLLMRollouts


def multinomial(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The sampler before: ``torch.multinomial`` on the CPU."""
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)


def make_trainer(
    model_dir: Path, attention: str, engine: VLLMRollouts | None = None, device: torch.device | str = "cpu"
) -> RLTrainer:
    """An RL trainer in the Makefile's step shape with lr 0 (every step starts from the same weights), its
    models on ``device`` with ``attention`` (``sdpa``: transformers' own; else the trainer's), rationales
    sampled by ``engine`` (vLLM) or, when None, by torch."""
    from transformers import AutoModelForCausalLM

    def load():
        if attention == "sdpa":
            return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                        attn_implementation="sdpa").to(device)  # fmt: skip
        return load_causal_lm(model_dir, device)

    reference = load().eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    config = RLConfig(users_per_step=2, served_users_per_step=8, served_objective="top1",
                      rationale_credit="candidate", lr=0.0, rollout_engine="vllm" if engine else "torch")  # fmt: skip
    return RLTrainer(open_checkpoint(model_dir), load(), reference, config, engine)


class TimedStep(NamedTuple):
    seconds: float  # the whole step
    sampling: float  # of which sampling rationales
    stats: StepStats


def timed_step(trainer: RLTrainer, step: int, picked: list[RLCase]) -> TimedStep:
    """One RL step on ``picked`` (the first 2 users get rollouts, the rest the served term): its seconds, the
    seconds spent sampling rationales within it, and its stats."""
    sampled = 0.0
    inner = type(trainer)._rollouts

    def timed_rollouts(*args, **kwargs):
        nonlocal sampled
        started = time.perf_counter()
        out = inner(trainer, *args, **kwargs)
        sampled += time.perf_counter() - started
        return out

    trainer._rollouts = timed_rollouts
    started = time.perf_counter()
    stats = trainer.step(step, picked[:2], picked[2:])
    return TimedStep(time.perf_counter() - started, sampled, stats)


def alternate_steps(
    arms: dict[str, RLTrainer], cases: list[RLCase], steps: int, before_step: Callable[[str], None] | None = None
) -> dict[str, list[TimedStep]]:
    """``steps`` timed RL steps per arm after one warm-up step, the arms alternating on the same 10 users per
    step (2 rollout users + 8 served), so drift on a shared machine hits them alike. ``before_step(name)``
    runs before each arm's step (e.g. to switch a module-level function)."""
    results: dict[str, list[TimedStep]] = {name: [] for name in arms}
    for step in range(steps + 1):  # step 0 warms up
        picked = cases[step * 10 : step * 10 + 10]
        for name, trainer in arms.items():
            if before_step is not None:
                before_step(name)
            timed = timed_step(trainer, step, picked)
            if step:
                results[name].append(timed)
    return results


def rl_bench_setup(description: str, steps: int = 3) -> tuple[argparse.Namespace, list[RLCase]]:
    """The RL benchmarks' command line (``--model``, ``--data``, ``--steps``) and their users: 1,000 RL cases
    of 1 + 19 candidates, seeded, taken 10 per step."""
    args = bench_parser(description, steps, "timed steps per arm (after one warm-up step)").parse_args()
    catalogue, sequences = _load(args.data)
    return args, rl_cases(_split(sequences, args.data), catalogue, 1000, 19, seed=0)


def main() -> None:
    args, cases = rl_bench_setup(__doc__.splitlines()[0])
    arms = {
        "before (sdpa + multinomial)": (make_trainer(args.model, "sdpa"), multinomial),
        "after (enable_gqa + inverse CDF)": (make_trainer(args.model, "r2rank"), policy.sample_categorical),
    }
    samplers = {name: sampler for name, (_, sampler) in arms.items()}

    def use_sampler(name: str) -> None:
        policy.sample_categorical = samplers[name]

    results = alternate_steps({name: trainer for name, (trainer, _) in arms.items()}, cases, args.steps, use_sampler)
    for name, timed in results.items():
        print(f"{name:>34}: {statistics.mean(t.seconds for t in timed):.2f} s/step, of which sampling "
              f"{statistics.mean(t.sampling for t in timed):.2f} s")  # fmt: skip
    before, after = (statistics.mean(t.seconds for t in timed) for timed in results.values())
    print(f"speed-up per RL step: {before / after:.2f}x ({args.steps} steps each, alternating, "
          f"{torch.get_num_threads()} threads)")  # fmt: skip


if __name__ == "__main__":
    main()
