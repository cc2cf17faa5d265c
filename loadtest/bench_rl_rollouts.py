"""RL step time with rationales sampled by torch or by a vLLM engine (``rl --rollout-engine``), side by side.

    VLLM_CPU_KVCACHE_SPACE=1 python -m loadtest.bench_rl_rollouts [--model models/default] [--steps 4]

vLLM is the rollout engine on a GPU. This runs both engines on whatever this machine has (vllm-cpu on a CPU)
for the Makefile's RL step shape (2 rollout users x 4 rollouts + 8 served users, 1 + 19 candidates), from
the same weights, alternating, with the optimiser's learning rate at 0 so every step starts from the same
model. The vLLM arm pays its weight sync after every step (save + in-place reload + prefix-cache reset).
Prints the engine's start-up time, seconds per step and the part spent sampling, and the speed-up.
"""

from __future__ import annotations

import statistics
import time

import torch

from loadtest.bench_rl_sampling import alternate_steps, make_trainer, rl_bench_setup
from trainer.rollouts import VLLMRollouts


def main() -> None:
    args, cases = rl_bench_setup(__doc__.splitlines()[0], steps=4)

    started = time.perf_counter()
    engine = VLLMRollouts(args.model, dtype="bfloat16" if torch.cuda.is_available() else "float32")
    startup = time.perf_counter() - started
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arms = {"torch": make_trainer(args.model, "r2rank", None, device),
            "vllm": make_trainer(args.model, "r2rank", engine, device)}  # fmt: skip
    results = alternate_steps(arms, cases, args.steps)
    for step in range(args.steps):
        for name, timed in results.items():
            served, length = timed[step].stats.ndcg_served, timed[step].stats.rationale_tokens
            print(f"step {step + 1} {name:>5}: served NDCG@10 {served:.3f}, rationale {length:.1f} tokens")
    print(f"vLLM engine start-up: {startup:.1f} s; {torch.get_num_threads()} torch threads")
    for name, timed in results.items():
        print(f"{name:>5}: {statistics.mean(t.seconds for t in timed):.2f} s/step, of which sampling "
              f"{statistics.mean(t.sampling for t in timed):.2f} s")  # fmt: skip
    torch_s, vllm_s = (statistics.mean(t.seconds for t in results[name]) for name in arms)
    print(f"speed-up per RL step with vLLM rollouts: {torch_s / vllm_s:.2f}x ({args.steps} steps each, alternating); "
          f"break-even after {startup / max(torch_s - vllm_s, 1e-9):.0f} steps")  # fmt: skip


if __name__ == "__main__":
    main()
