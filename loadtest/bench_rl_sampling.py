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
from pathlib import Path

import torch

import trainer.policy as policy
from service.checkpoint import open_checkpoint
from trainer.attention import load_causal_lm
from trainer.cli import DEFAULT_DATA, _load, _split
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


def timed_step(trainer: RLTrainer, step: int, picked: list[RLCase]) -> tuple[float, float, StepStats]:
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
    return time.perf_counter() - started, sampled, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    catalogue, sequences = _load(args.data)
    cases = rl_cases(_split(sequences, args.data), catalogue, 1000, 19, seed=0)
    arms = {
        "before (sdpa + multinomial)": (make_trainer(args.model, "sdpa"), multinomial),
        "after (enable_gqa + inverse CDF)": (make_trainer(args.model, "r2rank"), policy.sample_categorical),
    }
    step_seconds = {name: [] for name in arms}
    sampling_seconds = {name: [] for name in arms}
    for step in range(args.steps + 1):  # step 0 warms up
        picked = cases[step * 10 : step * 10 + 10]
        for name, (trainer, sampler) in arms.items():
            policy.sample_categorical = sampler
            seconds, sampled, _ = timed_step(trainer, step, picked)
            if step:
                step_seconds[name].append(seconds)
                sampling_seconds[name].append(sampled)
    for name in arms:
        print(f"{name:>34}: {statistics.mean(step_seconds[name]):.2f} s/step, of which sampling "
              f"{statistics.mean(sampling_seconds[name]):.2f} s")  # fmt: skip
    before, after = (statistics.mean(v) for v in step_seconds.values())
    print(f"speed-up per RL step: {before / after:.2f}x ({args.steps} steps each, alternating, "
          f"{torch.get_num_threads()} threads)")  # fmt: skip


if __name__ == "__main__":
    main()
