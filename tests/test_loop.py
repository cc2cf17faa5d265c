"""The shared training-loop pieces: a non-finite gradient must not reach the weights; RL's rollout engine
choice must not need vLLM where it is not installed."""

from __future__ import annotations

import logging

import torch

from trainer.loop import optimizer_step
from trainer.rl import _use_vllm_rollouts


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def test_a_non_finite_gradient_skips_the_update_and_says_so(caplog):
    model, optimizer = _model_and_optimizer()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.ones(3, 4)
    nan_part = model(x).sum() * float("nan")  # one bad micro-batch among good ones poisons the summed gradient
    with caplog.at_level(logging.WARNING, logger="trainer.loop"):
        outcome = optimizer_step(model, optimizer, iter([model(x).sum(), nan_part, model(x).mean()]))
    assert not outcome.applied and "update skipped" in caplog.text
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert not optimizer.state  # no Adam moments were updated with NaN either

    outcome = optimizer_step(model, optimizer, model(x).sum())  # the next finite step trains as usual
    assert outcome.applied and outcome.grad_norm > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_rollout_engine_choice(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not _use_vllm_rollouts("auto", cpu)
    assert _use_vllm_rollouts("vllm", cpu)  # asked for by name: used (and fails loudly if missing)
    assert not _use_vllm_rollouts("torch", cuda)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert not _use_vllm_rollouts("auto", cuda)  # a GPU without vLLM falls back to the torch sampler
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    assert _use_vllm_rollouts("auto", cuda)
