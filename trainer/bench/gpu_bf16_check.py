"""Does bf16 training stay finite on a GPU? A check for a CUDA machine; it prints figures, asserts nothing.

    python -m trainer.bench.gpu_bf16_check --model models/default --data DIR [--batches 40]

1. Versions: torch, CUDA, cuDNN, transformers, the GPU, and whether vLLM is installed.
2. The torch-only repro of pytorch/pytorch#196678 (cuDNN attention's bf16 backward gives NaN query gradients
   when a mask is passed, the length is 64 mod 128 and a row's logsumexp is very negative), with cuDNN
   attention allowed and with it off.
3. The same on this project's own pass: RL's score pass over two users at once (left-padded prefixes, as in
   SFT's micro-batches), forward and backward under bf16 autocast. It counts the batches whose gradient is
   not finite for each attention setting. Half the batches are picked so that the padded prefix is 64 mod
   128 tokens long (the bug's trigger), half at random.

The trainer turns cuDNN attention off on CUDA (``trainer.loop.training_device``). This script shows why.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import random
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

SETTINGS = {  # name -> context that picks SDPA's kernels for the pass
    "default (cuDNN allowed)": lambda: contextlib.nullcontext(),
    "cuDNN only": lambda: sdpa_kernel([SDPBackend.CUDNN_ATTENTION]),
    "cuDNN off (the trainer)": lambda: sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    ),  # fmt: skip
}


def versions() -> None:
    import transformers

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"transformers {transformers.__version__}, GPU {torch.cuda.get_device_name()}, "
          f"vLLM installed: {importlib.util.find_spec('vllm') is not None}")  # fmt: skip


def torch_only_repro(length: int) -> dict[str, int]:
    """pytorch#196678's repro: non-finite grad_q elements per setting."""
    torch.manual_seed(0)
    dim = 64
    counts = {}
    for name, context in SETTINGS.items():
        q = torch.randn(1, 1, length, dim, device="cuda", dtype=torch.bfloat16) * 0.1
        k = torch.randn(1, 1, length, dim, device="cuda", dtype=torch.bfloat16) * 0.1
        v = torch.randn(1, 1, length, dim, device="cuda", dtype=torch.bfloat16)
        q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(dim)  # every logit about -120: logsumexp < -88.7
        q.requires_grad_()
        mask = torch.ones(length, length, dtype=torch.bool, device="cuda").tril()[None, None]
        try:
            with context():
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                out.backward(torch.randn_like(out))
            counts[name] = int((~torch.isfinite(q.grad)).sum())
        except RuntimeError as exc:  # a kernel that cannot take these inputs
            counts[name] = -1
            print(f"  {name}: {str(exc).splitlines()[0][:120]}")
    return counts


def pair_batches(prefix_lengths: list[int], batches: int, seed: int) -> list[tuple[int, int]]:
    """Half: (a, b) with a's prefix 64 mod 128 tokens and b's shorter (so b's prefix is left-padded to a
    length that triggers the bug); half: random pairs."""
    rng = random.Random(seed)
    triggering = [i for i, n in enumerate(prefix_lengths) if n % 128 == 64]
    pairs = []
    for _ in range(batches // 2):
        a = rng.choice(triggering)
        shorter = [i for i, n in enumerate(prefix_lengths) if n < prefix_lengths[a]]
        pairs.append((a, rng.choice(shorter)))
    pairs += [tuple(rng.sample(range(len(prefix_lengths)), 2)) for _ in range(batches - len(pairs))]
    return pairs


def model_check(model_dir: Path, data: Path, batches: int, users: int) -> None:
    from transformers import AutoModelForCausalLM

    from contract.checkpoint import open_checkpoint
    from trainer.config import RLConfig
    from trainer.data import load_splits
    from trainer.rl import RLTrainer, encode_case, rl_cases

    checkpoint = open_checkpoint(model_dir)
    catalogue, splits = load_splits(data)
    cases = rl_cases(splits, catalogue, users, 19, seed=0)
    prompted = [encode_case(checkpoint, c) for c in cases]
    lengths = [len(p.prefix) for p in prompted]
    print(f"{len(prompted)} users; prefixes {min(lengths)}..{max(lengths)} tokens, "
          f"{sum(n % 128 == 64 for n in lengths)} of them 64 mod 128")  # fmt: skip
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).cuda()
    trainer = RLTrainer(checkpoint, policy, policy, RLConfig(rollout_engine="torch"))
    torch.backends.cuda.enable_cudnn_sdp(True)  # the trainer turned it off; the "default" arm is torch's own choice
    generator = torch.Generator().manual_seed(0)
    bad = {name: {"triggering": 0, "random": 0, "errors": 0} for name in SETTINGS}
    for index, (a, b) in enumerate(pair_batches(lengths, batches, seed=0)):
        kind = "triggering" if index < batches // 2 else "random"
        batch = [prompted[a], prompted[b]]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            rationales = trainer.rollouts(batch, generator, G=1, temperature=1.0)
        for name, context in SETTINGS.items():
            policy.zero_grad(set_to_none=True)
            try:
                with context(), torch.autocast("cuda", dtype=torch.bfloat16):
                    token_logp, mask, scores = trainer.score_pass(policy, batch, rationales, G=1)
                    loss = -(token_logp * mask).sum() / mask.sum() - torch.log_softmax(scores, -1)[0]
                loss.backward()
                finite = all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
            except RuntimeError:  # a kernel that cannot take these inputs: counted apart from NaN
                bad[name]["errors"] += 1
                continue
            bad[name][kind] += not finite
    half = batches // 2
    print(f"\nbatches of 2 users with a non-finite gradient (bf16 autocast), of {half} triggering and "
          f"{batches - half} random:")  # fmt: skip
    for name, counts in bad.items():
        print(f"  {name:26s} triggering {counts['triggering']:3d}   random {counts['random']:3d}   "
              f"(kernel refused the inputs: {counts['errors']})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--users", type=int, default=2000)
    args = parser.parse_args()
    versions()
    for length in (704, 768):
        print(f"pytorch#196678 repro, length {length}: non-finite grad_q elements {torch_only_repro(length)}")
    model_check(args.model, args.data, args.batches, args.users)


if __name__ == "__main__":
    main()
