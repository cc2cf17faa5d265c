"""RL step time with rationales sampled by torch or by a vLLM engine (``rl --rollout-engine``), side by side.

    VLLM_CPU_KVCACHE_SPACE=1 python -m loadtest.bench_rl_rollouts [--model models/default] [--steps 4]

vLLM is the rollout engine on a GPU. This runs both engines on whatever this machine has (vllm-cpu on a CPU)
for the Makefile's RL step shape (2 rollout users x 4 rollouts + 8 served users, 1 + 19 candidates), from
the same weights, alternating, with the optimiser's learning rate at 0 so every step starts from the same
model. The vLLM arm pays its weight sync after every step (save + in-place reload + prefix-cache reset).
Prints the engine's start-up time, seconds per step and the part spent sampling, and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from loadtest.bench_rl_sampling import make_trainer, timed_step
from trainer.cli import DEFAULT_DATA, _load, _split
from trainer.rl import rl_cases
from trainer.rollouts import VLLMRollouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per engine (after one warm-up step)")
    args = parser.parse_args()
    catalogue, sequences = _load(args.data)
    cases = rl_cases(_split(sequences, args.data), catalogue, 1000, 19, seed=0)

    started = time.perf_counter()
    engine = VLLMRollouts(args.model, dtype="bfloat16" if torch.cuda.is_available() else "float32")
    startup = time.perf_counter() - started
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arms = {"torch": make_trainer(args.model, "r2rank", None, device),
            "vllm": make_trainer(args.model, "r2rank", engine, device)}  # fmt: skip
    step_seconds: dict[str, list[float]] = {name: [] for name in arms}
    sampling_seconds: dict[str, list[float]] = {name: [] for name in arms}
    for step in range(args.steps + 1):  # step 0 warms up
        picked = cases[step * 10 : step * 10 + 10]
        for name, trainer in arms.items():
            seconds, sampled, stats = timed_step(trainer, step, picked)
            if step:
                step_seconds[name].append(seconds)
                sampling_seconds[name].append(sampled)
            served, length = stats.ndcg_served, stats.rationale_tokens
            print(f"step {step} {name:>5}: served NDCG@10 {served:.3f}, rationale {length:.1f} tokens")
    print(f"vLLM engine start-up: {startup:.1f} s; {torch.get_num_threads()} torch threads")
    for name in arms:
        print(f"{name:>5}: {statistics.mean(step_seconds[name]):.2f} s/step, of which sampling "
              f"{statistics.mean(sampling_seconds[name]):.2f} s")  # fmt: skip
    torch_s, vllm_s = (statistics.mean(step_seconds[name]) for name in arms)
    print(f"speed-up per RL step with vLLM rollouts: {torch_s / vllm_s:.2f}x ({args.steps} steps each, alternating); "
          f"break-even after {startup / max(torch_s - vllm_s, 1e-9):.0f} steps")  # fmt: skip


if __name__ == "__main__":
    main()
