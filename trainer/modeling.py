"""Building a small Qwen2-architecture ranker from scratch: a BPE tokenizer trained on the catalogue, a
config, seeded random weights.

On a machine with a GPU the same pipeline takes ``--base-model PATH`` (a local Qwen2.5 checkpoint) instead;
only the from-scratch path lives here. Everything is deterministic given the seed and the data, so the
shipped default model can be rebuilt bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from service import contract

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the from-scratch model (defaults: ~4M parameters, ~17 MB in float32)."""

    vocab_size: int = 4096  # BPE merges learned on titles + contract strings
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4  # head_dim 64: a size vLLM's CPU attention supports
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        assert self.hidden_size % self.num_attention_heads == 0, "hidden_size must divide by num_attention_heads"
        head_dim = self.hidden_size // self.num_attention_heads
        assert head_dim in (32, 64, 80, 96, 112, 128), f"head_dim {head_dim} is not one vLLM's CPU backend supports"
        assert self.num_attention_heads % self.num_key_value_heads == 0, "heads must divide by kv heads"


def contract_corpus(repeat: int = 200) -> list[str]:
    """Lines that make every contract string (cues, answer words, newline) common enough to become
    single tokens in the learned vocabulary."""
    lines = [
        contract.history_prefix(["Example Title"]),
        contract.candidate_segment("Example Title", "full") + " reason" + contract.answer_segment(True),
        contract.candidate_segment("Example Title", "none") + contract.answer_segment(False),
        contract.ANSWER_CUE + contract.ANSWER_YES,
        contract.ANSWER_CUE + contract.ANSWER_NO,
    ]
    return lines * repeat


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (GPT-2/Qwen style), so any Unicode title encodes without unknown tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    fast.model_max_length = 2048
    return fast


def build_model(config: TinyModelConfig, tokenizer, seed: int):
    """Random-initialised Qwen2ForCausalLM sized by ``config``, float32 (fast on CPUs without AVX-512)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab = -(-len(tokenizer) // 64) * 64  # pad the embedding to a multiple of 64
    hf_config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    hf_config.dtype = "float32"
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(hf_config)
    return model.to(torch.float32)


def init_model(titles: list[str], out_dir: Path, config: TinyModelConfig, seed: int) -> dict:
    """Train the tokenizer on ``titles`` (+ contract strings), build the model, save both to ``out_dir``.

    Returns the provenance dict the manifest records.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer([*titles, *contract_corpus()], config.vocab_size)
    model = build_model(config, tokenizer, seed)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    return {
        "stage": "init-model",
        "seed": seed,
        "tokenizer_corpus_titles": len(titles),
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_config": asdict(config),
    }
