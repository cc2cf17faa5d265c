"""Ranking metrics with one relevant item per user, their bootstrap CIs, and paired differences.

Every figure is computed from the 0-based rank of the positive among its candidates (``positive_rank``), so
two rankers evaluated on the same users can be compared user by user (``paired_difference``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def positive_rank(scores: Sequence[float], candidates: Sequence[str], target: str) -> int:
    """0-based rank of the target; ties count against it (an order that cannot separate is no help)."""
    s_target = scores[candidates.index(target)]
    return sum(1 for item, s in zip(candidates, scores, strict=True) if item != target and s >= s_target)


def hit_rate_at_k(rank_of_positive: torch.Tensor, k: int) -> torch.Tensor:
    """1 where the positive's 0-based rank is < k. (...) → (...)."""
    return (rank_of_positive < k).float()


def reciprocal_rank(rank_of_positive: torch.Tensor) -> torch.Tensor:
    return 1.0 / (rank_of_positive.float() + 1.0)


def ndcg_single_positive(rank_of_positive: torch.Tensor, k: int = 10) -> torch.Tensor:
    """NDCG@k with one relevant item at 0-based rank r: 1/log2(r+2) if r < k else 0."""
    r = rank_of_positive.float()
    return torch.where(r < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))


def expected_ndcg_random(n: int, k: int = 10) -> float:
    """NDCG@k of a uniformly random order with one positive among n items (a sanity baseline)."""
    return sum(1.0 / math.log2(r + 2) for r in range(min(k, n))) / n


def metrics_with_ci(ranks: Sequence[int], resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """NDCG@10, HR@5, HR@10 and MRR over users, each with a 95% bootstrap CI."""
    r = torch.tensor(ranks)
    per_user = {
        "ndcg@10": ndcg_single_positive(r, 10),
        "hr@5": hit_rate_at_k(r, 5),
        "hr@10": hit_rate_at_k(r, 10),
        "mrr": reciprocal_rank(r),
    }
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(ranks), (resamples, len(ranks)), generator=generator)
    out = {}
    for name, values in per_user.items():
        boot = values[index].mean(-1)
        out[name] = {
            "mean": values.mean().item(),
            "ci_low": torch.quantile(boot, 0.025).item(),
            "ci_high": torch.quantile(boot, 0.975).item(),
        }
    return out


def paired_difference(ranks_a: Sequence[int], ranks_b: Sequence[int], resamples: int = 1000, seed: int = 0) -> dict:
    """NDCG@10 of A minus B on the SAME users, with a paired bootstrap 95% CI: tighter than comparing two
    marginal CIs, and the right test for "is A better than B" on one test set."""
    if len(ranks_a) != len(ranks_b):
        raise ValueError(f"paired ranks must be of the same users: {len(ranks_a)} vs {len(ranks_b)}")
    diff = ndcg_single_positive(torch.tensor(ranks_a), 10) - ndcg_single_positive(torch.tensor(ranks_b), 10)
    generator = torch.Generator().manual_seed(seed)
    boot = diff[torch.randint(len(diff), (resamples, len(diff)), generator=generator)].mean(-1)
    return {"mean": diff.mean().item(), "ci_low": torch.quantile(boot, 0.025).item(),
            "ci_high": torch.quantile(boot, 0.975).item()}  # fmt: skip
