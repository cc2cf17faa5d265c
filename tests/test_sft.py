"""SFT's forward and micro-batching: packing an example's rows into one sequence, and grouping a step's
examples by length, must not change the loss or the update."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch

from tests.toy_model import build_toy_model
from trainer.loop import optimizer_step
from trainer.packing import target_log_probs
from trainer.sft import (
    AnswerTarget,
    Example,
    answer_target,
    build_examples,
    loss_weight,
    micro_batches,
    packed_length,
    step_losses,
    summed_token_nll,
)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return build_toy_model(tmp_path_factory.mktemp("sft-toy") / "model")


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _examples(n: int, seed: int) -> list[Example]:
    """Examples with prefixes of 3-40 tokens and rows of 2-25 tokens, of which the last 1 to all but the first are
    trained (as in SFT, where the candidate segment comes before the targets)."""
    rng = random.Random(seed)
    tokens = lambda k: [rng.randrange(2, 250) for _ in range(k)]  # noqa: E731
    examples = []
    for _ in range(n):
        rows = []
        for _ in range(4):
            ids = tokens(rng.randint(2, 25))
            rows.append((ids, rng.randint(1, len(ids) - 1)))
        examples.append(Example(tokens(rng.randint(3, 40)), rows))
    return examples


def target_tokens(batch: list[Example]) -> int:
    """Every row's target count, summed: the plain token mean's denominator."""
    return sum(n for example in batch for _, n in example.rows)


def _gradients(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_micro_batches_keep_every_example_and_group_similar_lengths():
    batch = _examples(16, seed=1)
    groups = micro_batches(batch, 3)
    assert [len(g) for g in groups] == [3, 3, 3, 3, 3, 1]
    assert sorted(map(id, (e for g in groups for e in g))) == sorted(map(id, batch))
    longest = [max(map(packed_length, g)) for g in groups]
    assert longest == sorted(longest)


def _plain_target_log_probs(model, batch: list[Example]) -> torch.Tensor:
    """The reference: each ``prefix + row`` on its own, unpadded, through the model's ordinary forward."""
    parts = []
    for example in batch:
        for ids, n in example.rows:
            sequence = torch.tensor([[*example.prefix, *ids]])
            logp = torch.log_softmax(model(input_ids=sequence).logits[0].float(), -1)
            targets = sequence[0, -n:]
            parts.append(logp[-n - 1 : -1].gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    return torch.cat(parts)


@pytest.mark.parametrize("attention", ["sdpa", "r2rank_sdpa"])
def test_packed_rows_compute_what_each_row_computes_alone(tiny_model_dir, attention):
    """Every row of a packed example sees its prefix and itself only: log-probabilities and gradients equal
    those of each ``prefix + row`` run alone, for examples of different lengths (pads) and rows trained on
    every token (whose first target is predicted from the prefix's last token)."""
    from transformers import AutoModelForCausalLM

    import trainer.attention  # noqa: F401  (registers r2rank_sdpa)

    batch = _examples(3, seed=3)
    batch[1] = Example(batch[1].prefix, [(ids, len(ids)) for ids, _ in batch[1].rows] + [([7], 1)])
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32,
                                                 attn_implementation=attention)  # fmt: skip
    packed = target_log_probs(model, [e.prefix for e in batch], [e.rows for e in batch], pad_id=1)
    packed.sum().backward()
    packed_grads = _gradients(model)
    model.zero_grad()
    plain = _plain_target_log_probs(model, batch)
    plain.sum().backward()
    assert packed.shape == plain.shape == (target_tokens(batch),)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    for got, want in zip(packed_grads, _gradients(model), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("micro_batch", [1, 3, 16])
def test_micro_batched_step_has_the_whole_batch_gradient(tiny_model_dir, micro_batch):
    batch = _examples(16, seed=2)
    whole = _model(tiny_model_dir)
    whole.zero_grad()
    expected_loss = summed_token_nll(whole, batch, pad_id=1) / target_tokens(batch)
    expected_loss.backward()

    model = _model(tiny_model_dir)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the weights, read the gradients
    loss = optimizer_step(model, optimizer, step_losses(model, batch, 1, micro_batch, contextlib.nullcontext())).loss

    assert loss == pytest.approx(float(expected_loss.detach()), rel=1e-5)
    clipped = torch.nn.utils.clip_grad_norm_(whole.parameters(), 1.0)  # optimizer_step clips: compare like with like
    assert float(clipped) > 0
    for got, want in zip(_gradients(model), _gradients(whole), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_answer_targets_weigh_and_soften_only_each_rows_last_token(tiny_model_dir):
    """A row's answer (its last target) counts ``weight`` times and puts ``1 - share`` of its target on the other
    answer; every other token keeps its plain cross-entropy, and the step's loss is the mean over the weights."""
    plain = _examples(2, seed=5)
    soft = [Example(e.prefix, e.rows, [AnswerTarget(other=9, share=0.25 * (1 + j % 4), weight=1.0 + j)
                                       for j in range(len(e.rows))]) for e in plain]  # fmt: skip
    model = _model(tiny_model_dir)
    with torch.no_grad():
        expected = 0.0
        for example in soft:
            for (ids, n), answer in zip(example.rows, example.answers, strict=True):
                sequence = torch.tensor([[*example.prefix, *ids]])
                logp = torch.log_softmax(model(input_ids=sequence).logits[0].float(), -1)[-n - 1 : -1]
                targets = sequence[0, -n:]
                nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                answer_nll = answer.share * nll[-1] - (1 - answer.share) * logp[-1, answer.other]
                expected += float(nll[:-1].sum() + answer.weight * answer_nll)
        got = float(summed_token_nll(model, soft, pad_id=1))
        unchanged = float(summed_token_nll(model, [Example(e.prefix, e.rows, [AnswerTarget(9)] * len(e.rows))
                                                   for e in plain], pad_id=1))  # fmt: skip
        assert unchanged == pytest.approx(float(summed_token_nll(model, plain, pad_id=1)), rel=1e-6)
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx(unchanged, rel=1e-3)
    weights = sum(a.weight for e in soft for a in e.answers)
    assert loss_weight(soft) == pytest.approx(target_tokens(plain) - sum(len(e.rows) for e in plain) + weights)
    assert loss_weight(plain) == target_tokens(plain)


def test_distilled_answers_take_their_share_from_the_teachers_probability_and_need_the_builtin_teacher():
    from contract.evidence import Evidence, Link
    from trainer.config import SFTConfig
    from trainer.data import DataError
    from trainer.teacher import BuiltinTeacher, EvidenceModel

    teacher = BuiltinTeacher(EvidenceModel([1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.3, 0.5, 0.5, 0.0], -2.0))
    evidence = Evidence((Link(1, "a", 14),), 0, 812, 3, None, ())
    p_next = teacher.model.probability(evidence)
    assert 0.05 < p_next < 0.95
    config = SFTConfig(answer_distill=0.5, answer_weight=3.0)
    assert answer_target(9, True, p_next, config) == AnswerTarget(9, 0.5 + 0.5 * p_next, 3.0)
    assert answer_target(9, False, p_next, config) == AnswerTarget(9, 0.5 + 0.5 * (1 - p_next), 3.0)
    assert answer_target(9, True, None, SFTConfig(answer_distill=0, answer_weight=1)) == AnswerTarget(9)  # 0/1
    with pytest.raises(DataError, match="built-in teacher"):
        build_examples(None, None, [], object(), config)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answer_distill"):
        SFTConfig(answer_distill=1.5)
