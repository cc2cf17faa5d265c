"""A 2-layer Qwen2 small enough to build and train in seconds, for the trainer's unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from contract.evidence import EvidenceStats
from trainer.config import TinyModelConfig
from trainer.modeling import init_model

TOY_TITLES = [f"Title {i} of Series {i % 7}" for i in range(200)]


def build_toy_model(
    out: Path,
    titles: Sequence[str] = TOY_TITLES,
    *,
    vocab_size: int = 300,
    hidden_size: int = 64,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
) -> Path:
    """Write a seeded toy model, with a tokenizer trained on ``titles`` and evidence statistics over items named by
    those titles (no interactions: every candidate's evidence says "no links", popularity 0), to ``out``."""
    config = TinyModelConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=num_attention_heads,
                             num_key_value_heads=num_key_value_heads)  # fmt: skip
    init_model(list(titles), out, config, seed=0)
    EvidenceStats.from_sequences([], {title: title for title in titles}).save(out)
    return out
