"""Building a small Qwen2-architecture ranker from scratch: a BPE tokenizer trained on the catalogue, a
config, seeded random weights.

On a machine with a GPU the same pipeline takes ``--base-model PATH`` (a local Qwen2.5 checkpoint) instead;
only the from-scratch path lives here. Everything is deterministic given the seed and the data, so the
shipped default model can be rebuilt bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from contract import prompt
from contract.evidence import EvidenceStats
from trainer.config import TinyModelConfig

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


EXAMPLE_EVIDENCE = (
    'follows #1 14x, #3 2x, older 5x; popularity 812 (top 3%); shares "word" with #2',
    "no links; popularity 7 (top 61%)",
    "follows #2 1x; popularity 0 (new); same brand as #4",
    'next-item rank 37; follows #1 14x, #3 2x, older 5x; popularity 812 (top 3%); shares "word" with #2',
    "next-item rank 4120; no links; popularity 7 (top 61%)",
    "next-item rank unknown; follows #2 1x; popularity 0 (new); same brand as #4",
)
EXAMPLE_RATIONALES = (
    "Strong link: follows #1 14x; top 3% popular: likely.",
    'Some link: follows #3 4x; shares "word" with #2; top 8% popular: possible.',
    "Weak link: follows #2 1x; niche, top 40%: unlikely.",
    "Only older links (5x); a new item: unlikely.",
    "No links; same brand as #4; niche, top 61%: unlikely.",
    'Rank 37; strong link: follows #1 14x; shares "word" with #2: likely.',
    "Rank 4120; no links: unlikely.",
    "Rank unknown; weak link: follows #2 1x; same brand as #4: possible.",
)
CO_BOUGHT_EXAMPLES = (  # (evidence, rationale) of format v5, in the corpus only where the statistics count them
    ("next-item rank 37; follows #1 14x, #3 2x, older 5x; co-bought 45x; popularity 812 (top 3%); "
     'shares "word" with #2',
     "Rank 37; strong link: follows #1 14x; co-bought 45x: likely."),
    ("next-item rank 4120; no links; co-bought 0x; popularity 7 (top 61%)",
     "Rank 4120; no links; never co-bought: unlikely."),
    ("next-item rank unknown; follows #2 1x; co-bought 3x; popularity 0 (new); same brand as #4",
     "Rank unknown; weak link: follows #2 1x; co-bought 3x: possible."),
)  # fmt: skip


def contract_corpus(repeat: int = 200, co_bought: bool = False) -> list[str]:
    """Lines that make every contract string (cues, evidence and rationale phrasing, answer words, newline)
    common enough to become single tokens in the learned vocabulary; format v5's co-purchase phrasing too where
    ``co_bought`` (without it the corpus, and so the tokenizer, is v3's)."""
    yes, no = prompt.ANSWER_CUE + prompt.ANSWER_YES, prompt.ANSWER_CUE + prompt.ANSWER_NO
    lines = [prompt.history_prefix(["Example Title", "Another Title"]), yes, no]
    with_rank = [r for r in EXAMPLE_RATIONALES if r.startswith("Rank")]
    without = [r for r in EXAMPLE_RATIONALES if not r.startswith("Rank")]
    pairs = list(zip(EXAMPLE_EVIDENCE, [*without[:3], *with_rank], strict=True))
    for evidence, rationale in pairs + (list(CO_BOUGHT_EXAMPLES) if co_bought else []):
        lines.append(prompt.candidate_segment("Example Title", evidence, "full") + " " + rationale + yes)
        lines.append(prompt.candidate_segment("Example Title", evidence, "none") + no)
    lines += list(EXAMPLE_RATIONALES)
    if co_bought:
        lines += [rationale for _, rationale in CO_BOUGHT_EXAMPLES]
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


def init_model(titles: list[str], out_dir: Path, config: TinyModelConfig, seed: int, co_bought: bool = False) -> dict:
    """Train the tokenizer on ``titles`` (+ contract strings), build the model, save both to ``out_dir``.

    Returns the provenance dict the manifest records.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer([*titles, *contract_corpus(co_bought=co_bought)], config.vocab_size)
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


def copy_base_model(base_model: Path, out: Path, name: str, command: str, stats: EvidenceStats):
    """A real model (a local HF checkpoint) as an r2rank starting point: its files copied to ``out`` with the
    evidence statistics and an r2rank manifest. Raises ``ValueError`` naming what is wrong (not a checkpoint;
    a tokenizer that cannot encode the answer tokens as one token each)."""
    import shutil

    from contract.checkpoint import CheckpointError, write_checkpoint_manifest
    from contract.prompt import ContractError

    if not (base_model / "config.json").is_file():
        raise ValueError(f"{base_model}/config.json: not found (not a HF checkpoint)")
    shutil.copytree(base_model, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
    stats.save(out)
    provenance = {"stage": "base-model", "base_model": str(base_model), "command": command}
    try:
        return write_checkpoint_manifest(out, name, provenance)
    except (CheckpointError, ContractError) as exc:
        raise ValueError(str(exc)) from exc
