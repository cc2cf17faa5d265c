"""The shared training-loop pieces: a non-finite gradient must not reach the weights; the precision setting
is honoured and checked; a stage sharing the CPU takes its threads back when the other ends; RL's rollout
engine choice must not need vLLM where it is not installed."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.toy_model import build_toy_model
from trainer.loop import SHARE_CPU_UNTIL_ENV, CpuShare, compile_body, optimizer_step, training_device
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


def test_a_stage_beside_another_keeps_half_the_threads_until_the_other_ends(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        other_done = tmp_path / "seqrec.done"
        monkeypatch.setenv(SHARE_CPU_UNTIL_ENV, str(other_done))
        share = CpuShare()
        assert torch.get_num_threads() == 2
        share.poll()
        assert torch.get_num_threads() == 2  # the other stage is still running
        other_done.touch()
        share.poll()
        assert torch.get_num_threads() == 4
        share.poll()
        assert torch.get_num_threads() == 4

        CpuShare()  # the other stage has already ended (a resumed run): every thread from the start
        assert torch.get_num_threads() == 4
        monkeypatch.delenv(SHARE_CPU_UNTIL_ENV)
        CpuShare().poll()  # not started beside another stage
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)


def test_rollout_engine_choice(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not _use_vllm_rollouts("auto", cpu)
    assert _use_vllm_rollouts("vllm", cpu)  # asked for by name: used (and fails loudly if missing)
    assert not _use_vllm_rollouts("torch", cuda)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert not _use_vllm_rollouts("auto", cuda)  # a GPU without vLLM falls back to the torch sampler
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    assert _use_vllm_rollouts("auto", cuda)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU's defaults")
def test_training_precision_on_a_cpu(monkeypatch):
    """``auto`` runs only LM pre-training in bf16 on a CPU, and only one with bf16 hardware (elsewhere bf16 is
    emulated); ``bf16`` and ``fp32`` apply to every stage; a typo is refused by the variable's name, not
    silently trained in another precision."""

    def bf16(precision: str, stage: str, hardware: bool) -> bool:
        monkeypatch.setenv("R2RANK_TRAIN_PRECISION", precision)
        monkeypatch.setattr("trainer.loop.cpu_has_native_bf16", lambda: hardware)
        device, autocast = training_device(stage)
        assert device.type == "cpu" and autocast.device == "cpu"
        assert not autocast._enabled or autocast.fast_dtype == torch.bfloat16
        return autocast._enabled

    for stage in ("pretrain", "sft", "rl"):
        for hardware in (True, False):
            assert bf16("auto", stage, hardware) is (stage == "pretrain" and hardware)
            assert bf16("bf16", stage, hardware) and not bf16("fp32", stage, hardware)
    monkeypatch.delenv("R2RANK_TRAIN_PRECISION")
    assert not training_device("sft")[1]._enabled  # unset means auto
    monkeypatch.setenv("R2RANK_TRAIN_PRECISION", "fp16")
    with pytest.raises(ValueError, match="R2RANK_TRAIN_PRECISION"):
        training_device("sft")


def test_a_bf16_step_on_the_cpu_trains_float32_weights(tmp_path, monkeypatch):
    """Under CPU bf16 autocast the loss is close to the float32 one, the gradient is finite, and the update
    lands in float32 weights (autocast computes in bf16; it must not turn the model into bf16)."""
    from trainer.attention import load_causal_lm

    model = load_causal_lm(build_toy_model(tmp_path / "toy")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(2, 300, (3, 24), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        reference = float(model(**batch).loss)
    monkeypatch.setenv("R2RANK_TRAIN_PRECISION", "bf16")
    _, autocast = training_device("sft")
    before = [p.detach().clone() for p in model.parameters()]
    with autocast:
        loss = model(**batch).loss
    assert float(loss) == pytest.approx(reference, rel=0.02)
    outcome = optimizer_step(model, optimizer, loss)
    assert outcome.applied
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_a_compiled_body_computes_the_eager_loss_and_gradients_at_any_length(tmp_path):
    """``sft --compile`` changes how a step is computed, not what: the compiled copy's loss and gradients match the
    eager model's to float rounding, for batches of two lengths (one symbolic-shape graph, not one per length)."""
    from trainer.attention import load_causal_lm

    path = build_toy_model(tmp_path / "toy")
    eager, compiled = load_causal_lm(path).train(), compile_body(load_causal_lm(path).train(), enabled=True)
    assert compile_body(eager, enabled=False).get_decoder().forward.__func__ is type(eager.get_decoder()).forward
    generator = torch.Generator().manual_seed(0)
    for length in (24, 37):
        ids = torch.randint(2, 300, (3, length), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, :5] = 0  # a left-padded row, as SFT's micro-batches have
        batch = {"input_ids": ids, "labels": ids, "attention_mask": mask}
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
        losses = [model(**batch).loss for model in (eager, compiled)]
        for loss in losses:
            loss.backward()
        assert float(losses[1]) == pytest.approx(float(losses[0]), rel=1e-4)
        for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            assert torch.allclose(p_eager.grad, p_compiled.grad, rtol=1e-3, atol=1e-6), name
