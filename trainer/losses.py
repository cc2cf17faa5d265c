"""Pure tensor functions for listwise RL on pointwise scores (Reasoning to Rank).

A user's N candidates get scores s (N,). The Plackett–Luce model turns them into a distribution over
rankings: pick items one at a time, each with probability softmax over the items not yet picked. Sampling
a ranking from it and rewarding the ranking with NDCG@k makes the list reward differentiable for the
scores (REINFORCE through log P_PL(ranking | s)), and the same advantage multiplies the rationale tokens'
log-probability (policy gradient into the reasoning). Shapes are noted as comments.
"""

from __future__ import annotations

import torch

from trainer.evaluation.metrics import ndcg_single_positive


def pl_log_likelihood(scores: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """log P_PL(ranking | scores) = sum_i [ s_{r_i} - logsumexp(s_{r_i..r_N}) ].

    scores: (..., N) real; ranking: (..., N) a permutation of 0..N-1 (best first). Returns (...).
    """
    ordered = torch.gather(scores, -1, ranking)  # (..., N) scores in ranked order
    # logsumexp over the suffix i..N-1 for every i: reverse cumulative logsumexp
    suffix_lse = torch.flip(torch.logcumsumexp(torch.flip(ordered, [-1]), dim=-1), [-1])  # (..., N)
    return (ordered - suffix_lse).sum(-1)


def gumbel_noise(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Standard Gumbel draws: argsort(scores + this) is an exact Plackett–Luce sample. Drawn on the CPU (where
    the seeded generator lives) and moved to ``device``."""
    uniform = torch.rand(shape, generator=generator, dtype=torch.float32).to(device)
    return -torch.log((-torch.log(uniform.clamp_min(1e-20))).clamp_min(1e-20))


def sample_pl_ranking(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample rankings from Plackett–Luce via the Gumbel trick: argsort(s + Gumbel noise) is an exact PL
    sample. scores: (..., N) → (..., N) permutation, best first."""
    gumbel = gumbel_noise(scores.shape, generator, scores.device)
    return torch.argsort(scores.detach().float() + gumbel, dim=-1, descending=True)


def dcg_discounts(n: int, device: torch.device | None = None) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(n, device=device, dtype=torch.float32) + 2.0)  # (N,)


def ndcg_at_k(ranking: torch.Tensor, relevance: torch.Tensor, k: int = 10) -> torch.Tensor:
    """NDCG@k of rankings. ranking: (..., N) item indices best first; relevance: (..., N) gains per item
    (binary here: 1 for the held-out positive). Returns (...); 0 when no item is relevant."""
    gains = torch.gather(relevance.float(), -1, ranking)[..., :k]  # (..., k)
    discounts = dcg_discounts(gains.shape[-1], ranking.device)
    dcg = (gains * discounts).sum(-1)
    ideal = torch.sort(relevance.float(), dim=-1, descending=True).values[..., :k]
    idcg = (ideal * discounts[: ideal.shape[-1]]).sum(-1)
    return torch.where(idcg > 0, dcg / idcg.clamp_min(1e-12), torch.zeros_like(dcg))


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise rewards within each user's group of rollouts. rewards: (B, G) → (B, G), zero mean per row;
    a group whose rollouts all scored the same carries no signal (advantages 0)."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def split_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages for one user's G rollouts × M Plackett–Luce rankings each. rewards: (G, M).

    Two sources of variance sit in one reward: which rationales were sampled (rollout g) and which ranking
    PL drew from their scores (sample m). They get separate advantages so neither is noise for the other:

    - rationale tokens: the rollout's mean reward over its M rankings (≈ the expected NDCG@k its scores
      earn), normalised across the G rollouts (GRPO). (G,)
    - PL log-likelihood (the scoring head): each ranking's reward minus its own rollout's mean, scaled by
      the user's reward std. (G, M). With M = 1 there is no within-rollout baseline, and the rollout's
      advantage is used (plain REINFORCE with the group baseline).
    """
    value = rewards.mean(-1)  # (G,)
    rationale = group_advantages(value.unsqueeze(0)).squeeze(0)
    if rewards.shape[-1] == 1:
        return rationale, rationale.unsqueeze(-1)
    ranking = (rewards - value.unsqueeze(-1)) / (rewards.std(unbiased=False) + eps)
    return rationale, ranking


def candidate_advantages(
    scores: torch.Tensor,
    positive: int,
    k: int = 10,
    samples: int = 16,
    generator: torch.Generator | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-rationale advantages for one user's G rollouts × N candidates. scores: (G, N) → (G, N).

    Candidates are scored pointwise, so candidate i's rationale moves only s_i; crediting every rationale of a
    rollout with the whole list's reward (``split_advantages``) blurs 20 decisions into one number. Here
    rationale (g, i) is credited with the expected NDCG@k (under Plackett–Luce) of the list where item i takes
    rollout g's score and every other item its mean score over the G rollouts, minus the mean of that over g:
    the effect of that one rationale on the list reward. The same Gumbel draws serve every (g, i) (common
    random numbers), so the differences come from the scores and not from sampling luck. A negative far below
    the positive, or a positive far above the rest, gets ~0: its rationale did not change the ranking.
    Advantages are scaled by the user's std over all G·N (GRPO-style), 0 when nothing mattered.
    """
    G, n = scores.shape
    own = scores.detach().float()
    context = own.mean(0)  # (N,) each item's mean score over the rollouts
    swapped = context.expand(G, n, n).clone()  # (G, N, N): row (g, i) is the context list ...
    items = torch.arange(n, device=own.device)
    swapped[:, items, items] = own  # ... with item i's score from rollout g
    gumbel = gumbel_noise((samples, n), generator, own.device)  # (M, N)
    noisy = swapped.unsqueeze(2) + gumbel  # (G, N, M, N): argsort of each row is a PL sample
    rank_of_positive = (noisy > noisy[..., positive : positive + 1]).sum(-1)  # (G, N, M)
    reward = ndcg_single_positive(rank_of_positive, k).mean(-1)  # (G, N) expected NDCG@k
    centred = reward - reward.mean(0, keepdim=True)
    return centred / (centred.std(unbiased=False) + eps)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim where mask is set. values, mask: (..., T) → (...)."""
    return (values * mask).sum(-1)


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean of the k3 estimator of KL(policy || reference) on sampled tokens:
    exp(r) - r - 1 with r = logp_ref - logp (unbiased, always >= 0). (..., T) → (...)."""
    ratio = logp_ref - logp
    per_token = torch.exp(ratio) - ratio - 1.0
    return masked_sum(per_token, mask) / mask.sum(-1).clamp_min(1.0)
