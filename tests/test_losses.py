"""The trainer's loss and metric functions against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from trainer.evaluation.metrics import expected_ndcg_random, hit_rate_at_k, ndcg_single_positive, reciprocal_rank
from trainer.losses import (
    candidate_advantages,
    group_advantages,
    kl_k3,
    ndcg_at_k,
    pl_log_likelihood,
    sample_pl_ranking,
    split_advantages,
)


def test_pl_log_likelihood_by_hand():
    scores = torch.tensor([2.0, 1.0, 0.0])
    ranking = torch.tensor([0, 1, 2])
    e = [math.exp(2), math.exp(1), math.exp(0)]
    expected = math.log(e[0] / sum(e)) + math.log(e[1] / (e[1] + e[2])) + math.log(1.0)
    assert pl_log_likelihood(scores, ranking).item() == pytest.approx(expected, rel=1e-6)


def test_pl_probabilities_sum_to_one_over_all_rankings():
    scores = torch.tensor([0.3, -1.2, 2.0, 0.5])
    total = sum(pl_log_likelihood(scores, torch.tensor(perm)).exp().item() for perm in itertools.permutations(range(4)))
    assert total == pytest.approx(1.0, abs=1e-5)


def test_pl_gradient_raises_the_sampled_ranking():
    scores = torch.zeros(4, requires_grad=True)
    pl_log_likelihood(scores, torch.tensor([2, 0, 1, 3])).backward()
    assert scores.grad[2] > 0 > scores.grad[3]  # first place pushed up, last place pushed down


def test_gumbel_sampling_matches_plackett_luce():
    """Empirical frequency of the top item matches softmax(scores) (PL's first-choice probability)."""
    scores = torch.tensor([1.0, 0.0, -1.0])
    generator = torch.Generator().manual_seed(0)
    rankings = sample_pl_ranking(scores.expand(20000, 3), generator)
    freq = torch.bincount(rankings[:, 0], minlength=3).float() / 20000
    assert torch.allclose(freq, torch.softmax(scores, -1), atol=0.015)
    assert sorted(rankings[0].tolist()) == [0, 1, 2]


def test_ndcg_by_hand():
    relevance = torch.tensor([0, 0, 1, 0])
    assert ndcg_at_k(torch.tensor([2, 0, 1, 3]), relevance).item() == pytest.approx(1.0)
    assert ndcg_at_k(torch.tensor([0, 2, 1, 3]), relevance).item() == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(torch.tensor([0, 1, 3, 2]), relevance, k=3).item() == 0.0
    graded = torch.tensor([3, 2, 0])  # graded gains: DCG/IDCG
    value = ndcg_at_k(torch.tensor([1, 0, 2]), graded).item()
    assert value == pytest.approx((2 + 3 / math.log2(3)) / (3 + 2 / math.log2(3)))
    assert ndcg_single_positive(torch.tensor([0, 1, 10])).tolist() == pytest.approx([1.0, 1 / math.log2(3), 0.0])


def test_retrieval_metrics_on_fixed_lists():
    ranks = torch.tensor([0, 4, 9, 15])
    assert hit_rate_at_k(ranks, 5).tolist() == [1, 1, 0, 0]
    assert hit_rate_at_k(ranks, 10).tolist() == [1, 1, 1, 0]
    assert reciprocal_rank(ranks).tolist() == pytest.approx([1, 1 / 5, 1 / 10, 1 / 16])
    # the random baseline the eval report shows: 1 positive among 20, NDCG@10
    by_hand = sum(1 / math.log2(r + 2) for r in range(10)) / 20
    assert expected_ndcg_random(20) == pytest.approx(by_hand) == pytest.approx(0.2272, abs=1e-4)


def test_split_advantages_separate_rollout_and_ranking_luck():
    # 2 rollouts × 2 PL rankings: rollout 0 earns 0.75 on average, rollout 1 earns 0.25
    rewards = torch.tensor([[1.0, 0.5], [0.5, 0.0]])
    rationale, ranking = split_advantages(rewards)
    assert rationale.tolist() == pytest.approx([1, -1], abs=1e-4)  # (0.75 - 0.5) / 0.25
    std = rewards.std(unbiased=False).item()  # over all 4 rewards: sqrt(0.125)
    assert ranking.flatten().tolist() == pytest.approx([0.25 / std, -0.25 / std] * 2, abs=1e-4)
    # one ranking per rollout: no within-rollout baseline, the rollout's advantage drives the PL term
    rationale, ranking = split_advantages(torch.tensor([[1.0], [0.0]]))
    assert rationale.tolist() == pytest.approx([1, -1], abs=1e-4)
    assert ranking.squeeze(-1).tolist() == pytest.approx(rationale.tolist())


def test_candidate_advantages_credit_each_rationale_with_its_own_effect():
    # 2 rollouts × 4 candidates, the positive is item 0. Item 1 is a close rival, items 2 and 3 are far below.
    # rollout 0 scores the positive high and the rival low, rollout 1 the other way round
    scores = torch.tensor([[2.0, 1.0, -20.0, -20.0], [1.0, 2.0, -20.0, -30.0]])
    generator = torch.Generator().manual_seed(0)
    adv = candidate_advantages(scores, positive=0, k=10, samples=256, generator=generator)
    assert adv[0, 0] > 0 > adv[1, 0]  # the positive's rationale that scored it higher is credited
    assert adv[0, 1] > 0 > adv[1, 1]  # the rival's rationale that scored it lower is credited
    assert adv[:, 2:].abs().max() < 1e-4  # far-below negatives did not change the ranking: no credit
    assert adv.mean(0).abs().max() < 1e-5  # zero mean over rollouts for every candidate
    # identical rollouts carry no signal
    same = candidate_advantages(scores[:1].expand(3, 4), positive=0, generator=torch.Generator().manual_seed(0))
    assert same.abs().max() == 0.0


def test_group_advantages_and_kl():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    assert adv[0].tolist() == pytest.approx([1, -1, -1, 1], abs=1e-4)
    assert adv[1].abs().max().item() == 0.0  # no signal in a tied group
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    assert kl_k3(logp, logp, torch.ones(1, 2)).item() == 0.0
    assert kl_k3(logp, torch.log(torch.tensor([[0.25, 0.25]])), torch.ones(1, 2)).item() > 0
