"""The trainer's fast paths must compute what the library paths they replace compute: grouped-query attention
without repeated keys/values (``trainer.attention``) and the inverse-CDF sampler (``policy.sample_categorical``)."""

from __future__ import annotations

import pytest
import torch

from tests.toy_model import build_toy_model
from trainer.attention import ATTENTION, load_causal_lm
from trainer.policy import sample_categorical


@pytest.fixture(scope="module")
def grouped_model_dir(tmp_path_factory):
    """A tiny Qwen2 with grouped heads (4 query heads of 32 dims share 2 key/value heads), as the shipped model has."""
    return build_toy_model(tmp_path_factory.mktemp("gqa") / "model", hidden_size=128, num_attention_heads=4,
                           num_key_value_heads=2)  # fmt: skip


def test_trainer_attention_matches_transformers_sdpa_on_a_padded_batch(grouped_model_dir):
    from transformers import AutoModelForCausalLM

    ours = load_causal_lm(grouped_model_dir)
    library = AutoModelForCausalLM.from_pretrained(str(grouped_model_dir), dtype=torch.float32,
                                                   attn_implementation="sdpa")  # fmt: skip
    assert ours.config._attn_implementation == ATTENTION
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (3, 24))
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[1, :7] = 0  # left padding, so a mask is passed (the path that used to repeat keys/values)
    mask[2, :20] = 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    real = mask.bool()
    outputs = []
    for model in (ours, library):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        logits[real].logsumexp(-1).sum().backward()
        outputs.append((logits.detach()[real], [p.grad for p in model.parameters()]))
    (ours_logits, ours_grads), (library_logits, library_grads) = outputs
    torch.testing.assert_close(ours_logits, library_logits, atol=1e-5, rtol=1e-5)
    for got, want in zip(ours_grads, library_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_sample_categorical_draws_from_the_distribution():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_categorical(probs, generator) for _ in range(20_000)])  # (20000, 3)
    frequencies = torch.stack([torch.bincount(draws[:, row], minlength=4) for row in range(3)]).float() / 20_000
    torch.testing.assert_close(frequencies, probs, atol=0.012, rtol=0)  # about 4 standard errors at most
    assert not (draws[:, 0] == 1).any()  # a zero-probability token is never drawn
    again = torch.stack([sample_categorical(probs, torch.Generator().manual_seed(0)) for _ in range(3)])
    first = torch.stack([sample_categorical(probs, torch.Generator().manual_seed(0)) for _ in range(3)])
    assert torch.equal(again, first)  # seeded: the same tokens again
