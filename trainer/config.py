"""Every training stage's settings, one dataclass per stage (the TRL way).

The defaults ARE the shipped recipe (``make train`` passes nothing else), each field carries its help text
(``metadata["help"]``, which the CLI shows), options with fixed values are ``Literal``, and ``__post_init__``
refuses bad values with a ``ValueError`` that says what to change. The CLI takes its defaults and help from
here and checks nothing itself. This module imports neither torch nor the service: ``r2rank-train --help``
stays instant.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, get_args

RolloutEngine = Literal["torch", "vllm", "auto"]
ServedObjective = Literal["pl", "top1"]
RationaleCredit = Literal["rollout", "candidate"]
TeacherApi = Literal["chat", "completions"]
SharedWordClause = Literal["quote", "ref"]
VerdictScale = Literal["three", "six"]
TitleOverlapUse = Literal["off", "verdict", "clause"]

VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128)


def option(default: Any, help: str) -> Any:  # noqa: A002 - the name dataclass users read
    """A config field with its help text."""
    return field(default=default, metadata={"help": help})


def help_of(config: type, name: str) -> str:
    return next(f.metadata["help"] for f in fields(config) if f.name == name)


def default_of(config: type, name: str) -> Any:
    found = next(f for f in fields(config) if f.name == name)
    return found.default if found.default is not MISSING else found.default_factory()  # type: ignore[misc]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _literal(value: object, allowed: object, name: str) -> None:
    choices = get_args(allowed)
    _require(value in choices, f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of the from-scratch model (defaults: ~4M parameters, ~17 MB in float32)."""

    vocab_size: int = option(4096, "BPE vocabulary learned on training titles + contract strings.")
    hidden_size: int = option(256, "Width of the model.")
    intermediate_size: int = option(768, "Width of the MLP.")
    num_hidden_layers: int = option(4, "Decoder layers.")
    num_attention_heads: int = option(4, "Query heads; hidden_size / heads must be a head size vLLM's CPU runs.")
    num_key_value_heads: int = option(2, "Key/value heads (grouped-query attention).")
    max_position_embeddings: int = option(2048, "Longest sequence the model is built for.")
    rope_theta: float = option(10000.0, "RoPE base.")

    def __post_init__(self) -> None:
        sizes = (self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers)
        _require(min(sizes) > 0, "vocab_size, hidden_size, intermediate_size and layers must be > 0")
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads
        _require(
            heads > 0 and self.hidden_size % heads == 0,
            f"hidden_size ({self.hidden_size}) must be a multiple of heads ({heads})",
        )
        head_dim = self.hidden_size // heads
        _require(
            head_dim in VLLM_CPU_HEAD_DIMS,
            f"hidden_size / heads = {head_dim}: pick sizes that give one of "
            f"{VLLM_CPU_HEAD_DIMS} (the head sizes vLLM's CPU attention supports)",
        )
        _require(kv_heads > 0 and heads % kv_heads == 0, f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")


@dataclass(frozen=True)
class EvidenceConfig:
    """The statistics evidence is computed from (counted on training prefixes, shipped with the checkpoint)."""

    window: int = option(3, "A candidate 'follows' an item when it comes at most this many steps after it.")
    max_followers: int = option(256, "Followers kept per item (bounds the artifact; 256 costs < 0.001 NDCG@10).")
    stopword_share: float = option(0.01, "Title words in more than this share of titles are not evidence.")
    co_bought: bool = option(
        False, "Count co-purchases and state them (prompt format v5; tried, not chosen: docs/training.md)."
    )

    def __post_init__(self) -> None:
        _require(self.window >= 1 and self.max_followers >= 1, "window and max_followers must be >= 1")
        _require(0 < self.stopword_share <= 1, f"stopword_share must be in (0, 1], got {self.stopword_share}")


SeqRecHorizon = Literal["test", "valid", "sft", "all"]
HORIZON_ORDER: tuple[str, ...] = ("sft", "valid", "test", "all")  # each sees every position the earlier ones see


@dataclass(frozen=True)
class SeqRecConfig:
    """The sequence-model baseline (SASRec, RecBole's sizes): an ID-based causal transformer, full softmax."""

    horizon: SeqRecHorizon = option(
        "test",
        "test: train on every position before the test targets (the report's baseline); valid: stop "
        "before the validation targets (leak-free on the selection users and RL's positions: the model a ranker "
        "ships; the learning curve is measured there); sft: also stop before each user's last --held-out "
        "training positions (SFT's targets: the model that states SFT examples' next-item rank); all: every "
        "interaction, test targets included (to serve, through `refresh`; no report can score it).",
    )
    held_out: int = option(2, "Horizon sft: training positions per user left out (>= SFT's --targets-per-user).")
    epochs: int = option(12, "Passes over the training sequences.")
    hidden_size: int = option(64, "Width (item embeddings, tied to the output layer).")
    layers: int = option(2, "Transformer layers.")
    heads: int = option(2, "Attention heads.")
    inner_size: int = option(256, "Width of the feed-forward layer.")
    dropout: float = option(
        0.2, "Dropout on embeddings, attention and feed-forward (RecBole's 0.5 learns about half as fast per epoch)."
    )
    max_length: int = option(50, "Most recent items of a sequence the model reads.")
    batch_tokens: int = option(4096, "Positions per step (sequences grouped by length, padded to the longest).")
    lr: float = option(1e-3, "Adam learning rate.")
    weight_decay: float = option(0.0, "Adam weight decay.")
    seed: int = option(0, "Seed for weights and batch order.")

    def __post_init__(self) -> None:
        _literal(self.horizon, SeqRecHorizon, "horizon")
        sizes = ("epochs", "hidden_size", "layers", "heads", "inner_size", "max_length", "batch_tokens", "held_out")
        for name in sizes:
            _require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        _require(self.hidden_size % self.heads == 0, f"hidden_size ({self.hidden_size}) must be a multiple of heads")
        _require(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _require(self.batch_tokens >= self.max_length, "batch_tokens must be >= max_length")
        _require(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")


@dataclass(frozen=True)
class PretrainConfig:
    """LM pre-training of a from-scratch model on training histories, rendered as the service renders them."""

    epochs: float = option(1.0, "Passes over the training histories (0: no pre-training).")
    holdout_last: int = option(2, "Positions left off the end of each history (SFT's targets: never pre-trained on).")
    batch_size: int = option(32, "Histories per step.")
    lr: float = option(2e-3, "Peak learning rate (linear warm-up, cosine to 10%).")
    warmup_steps: int = option(20, "Warm-up steps.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    checkpoint_every: int = option(100, "Save weights and optimiser state every N steps (resume point).")
    seed: int = option(0, "Seed for batch order.")
    stop_after: int | None = option(None, "Stop after this step (checkpointed); rerun to resume.")

    def __post_init__(self) -> None:
        _require(self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}")
        _require(self.holdout_last >= 0, f"holdout_last must be >= 0, got {self.holdout_last}")
        _require(self.batch_size > 0 and self.lr > 0, "batch_size and lr must be > 0")
        _require(self.warmup_steps > 0 and self.checkpoint_every > 0, "warmup_steps and checkpoint_every must be > 0")


@dataclass(frozen=True)
class SFTConfig:
    """Supervised cold start on teacher rationales."""

    users: int = option(10_000, "Training users to draw examples from.")
    negatives: int = option(3, "Negatives per positive (pointwise labels: 1 yes + N no).")
    hard_negatives: int = option(
        0,
        "Of those negatives, how many are drawn from the --hard-pool items the examples' sequence model scores "
        "highest after the history (items a SASRec would show this user; needs the sequence models); the "
        "rest are random.",
    )
    hard_pool: int = option(
        50,
        "Hard negatives, and retrieved candidates' negatives, are drawn uniformly from this many of the examples' "
        "sequence model's top items.",
    )
    retrieval_share: float = option(
        0.0,
        "Share of the positions whose positive is among the examples' sequence model's --hard-pool top items (a "
        "retriever's list that found it) that get a retrieved-candidates example beside their catalogue one: all "
        "negatives from those items, the prompt saying so (a request's candidate_source='retrieval'), weighed by a "
        "second teacher verdict model fitted on such hits. 0: the model serves only catalogue candidates.",
    )
    targets_per_user: int = option(2, "Positions of a user's training prefix used as targets, latest first.")
    answer_weight: float = option(
        4.0,
        "How many times each row's answer token (yes/no, what the score is read from) counts in the loss, "
        "against once for every rationale and cue token.",
    )
    answer_distill: float = option(
        0.5,
        "Share of each answer's target taken from the built-in teacher's verdict model (its probability that "
        "the pair is next) instead of the 0/1 label: soft labels. With --teacher-url the answers are 0/1.",
    )
    none_fraction: float = option(0.3, 'Share of examples in reasoning="none" form (one model serves both modes).')
    steps: int = option(1200, "Optimiser steps.")
    batch_size: int = option(16, "Examples per step (each 1 + N candidate rows sharing one history prefix).")
    micro_batch: int = option(2, "Examples per forward pass, grouped by length; the update does not depend on it.")
    compile: bool = option(
        False,
        "Compile the model's body with torch.compile: 1.1x faster steps on the two CPUs measured (AMX, AVX-512 "
        "BF16), the same update to float rounding; off by default because the compiled runs ranked at the low "
        "end of the recipe's runs (docs/training.md, section Compiled SFT).",
    )
    lr: float = option(1.5e-3, "Peak learning rate (from-scratch tiny models; about 1e-5 for a pretrained base).")
    warmup_steps: int = option(20, "Warm-up steps.")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    checkpoint_every: int = option(100, "Save weights and optimiser state every N steps (resume point).")
    seed: int = option(0, "Seed for examples, negatives and order.")
    stop_after: int | None = option(None, "Checkpoint and stop after this step; rerun to resume.")

    def __post_init__(self) -> None:
        sizes = {
            "users": self.users,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "micro_batch": self.micro_batch,
            "targets_per_user": self.targets_per_user,
        }
        for name, value in sizes.items():
            _require(value > 0, f"{name} must be > 0, got {value}")
        _require(self.negatives >= 1, "negatives must be >= 1: SFT needs 'no' answers as well as 'yes'")
        _require(
            0 <= self.hard_negatives <= self.negatives,
            f"hard_negatives must be in [0, negatives={self.negatives}], got {self.hard_negatives}",
        )
        _require(self.hard_pool >= self.hard_negatives, "hard_pool must be >= hard_negatives")
        _require(self.hard_pool >= self.negatives or not self.retrieval_share, "hard_pool must be >= negatives")
        _require(0 <= self.retrieval_share <= 1, f"retrieval_share must be in [0, 1], got {self.retrieval_share}")
        _require(
            0 <= self.none_fraction <= 1, f"none_fraction is a share: give a value in [0, 1], got {self.none_fraction}"
        )
        _require(self.lr > 0 and self.checkpoint_every > 0, "lr and checkpoint_every must be > 0")
        _require(self.answer_weight > 0, f"answer_weight must be > 0, got {self.answer_weight}")
        _require(0 <= self.answer_distill <= 1, f"answer_distill must be in [0, 1], got {self.answer_distill}")


@dataclass(frozen=True)
class TeacherConfig:
    """Who writes SFT's rationales: the built-in teacher, or an LLM behind an OpenAI-compatible server."""

    url: str | None = option(None, "OpenAI-compatible server (e.g. a vLLM server) that writes the rationales.")
    model: str | None = option(None, "Model name at --teacher-url.")
    api: TeacherApi = option("chat", "chat, or completions for models without a chat template.")
    concurrency: int = option(16, "Requests in flight to the teacher.")
    calibration_users: int = option(
        5000, "Built-in teacher: users (other than SFT's) whose training positions fit its verdict model."
    )
    shared_word: SharedWordClause = option(
        "quote",
        "Built-in teacher: how its line cites a title word the candidate shares with a history item: quote "
        '(shares "zelda" with #2) or ref (shares a word with #2; the word stays on the evidence line, and a small '
        "model that must copy it letter by letter often writes another word).",
    )
    verdicts: VerdictScale = option(
        "three",
        "Built-in teacher: how finely its line's closing verdict grades the verdict model's probability: three "
        "(likely / possible / unlikely) or six (near certain ... very unlikely), to carry more of the teacher's "
        "judgement into the rationale the answer is read after. Six ranked as three in two pairs of runs "
        '(docs/training.md "A finer verdict"), with 1.6 more tokens per rationale.',
    )
    title_overlap: TitleOverlapUse = option(
        "off",
        "Built-in teacher: whether it weighs how much the candidate's title shares with the history's titles "
        "(trainer/title_overlap.py: common words such as a platform, which the evidence line never states): off; "
        "verdict (its verdict and soft labels weigh it, so the LLM must read the titles in its prompt); clause "
        '(also a clause "titles alike" before the verdict where the overlap is high). The evidence-model row stays '
        "the logistic of the evidence line alone.",
    )
    title_words: bool = option(
        False,
        "Built-in teacher with --teacher-title-overlap verdict or clause: its verdict model also weighs the era the "
        "candidate's title words mark (trainer/title_overlap.py: their share among the sequences' last items, "
        "counted on sequences that end before every example's target).",
    )
    retrieval_hits: int = option(
        20,
        "Built-in teacher with --retrieval-share: the fewest calibration users whose next item the examples' "
        "sequence model's top items hold, to fit its verdict model for retrieved candidates on; with fewer, SFT "
        "trains on catalogue candidates only.",
    )

    def __post_init__(self) -> None:
        _literal(self.api, TeacherApi, "teacher api")
        _literal(self.shared_word, SharedWordClause, "teacher shared word")
        _literal(self.verdicts, VerdictScale, "teacher verdicts")
        _literal(self.title_overlap, TitleOverlapUse, "teacher title overlap")
        _require(not self.title_words or self.title_overlap != "off",
                 "--teacher-title-words needs --teacher-title-overlap verdict or clause")  # fmt: skip
        _require(self.calibration_users > 0, f"calibration_users must be > 0, got {self.calibration_users}")
        _require(self.retrieval_hits > 0, f"retrieval_hits must be > 0, got {self.retrieval_hits}")
        _require(self.url is None or bool(self.model), "--teacher-url needs --teacher-model (the served model name)")
        _require(self.concurrency > 0, f"teacher concurrency must be > 0, got {self.concurrency}")


@dataclass(frozen=True)
class RLConfig:
    """Listwise RL: G rollouts per user, Plackett–Luce rankings rewarded by NDCG@k."""

    users: int = option(6000, "Training users to draw ranking tasks from (their validation position).")
    negatives: int = option(19, "Negatives per user (1 positive + N candidates).")
    steps: int = option(100, "Optimiser steps.")
    users_per_step: int = option(2, "Rollout users per step.")
    rollouts: int = option(4, "G: rollouts per user; advantages are normalised within them.")
    temperature: float = option(1.0, "Sampling temperature of the rationales.")
    pl_samples: int = option(16, "M: Plackett–Luce rankings sampled per rollout.")
    none_weight: float = option(1.0, 'Weight of the listwise term on reasoning="none" scores (0: off).')
    served_users_per_step: int = option(
        8, "More users per step for the listwise term on scores after the greedy (served) rationales."
    )
    served_weight: float = option(1.0, "Weight of that served-rationale term.")
    served_objective: ServedObjective = option("top1", "pl (REINFORCE on NDCG) or top1 (PL top-1 likelihood).")
    rationale_credit: RationaleCredit = option(
        "candidate", "rollout (each rationale gets its rollout's reward) or candidate (its own effect on it)."
    )
    lr: float = option(5e-5, "Learning rate.")
    beta: float = option(0.04, "Weight of KL(policy || SFT reference).")
    k: int = option(10, "NDCG@k reward.")
    max_rationale_tokens: int | None = option(None, "Rationale budget (default: the checkpoint's manifest).")
    checkpoint_every: int = option(50, "Save weights and optimiser state every N steps (resume point).")
    seed: int = option(0, "Seed for users, negatives, sampling and order.")
    stop_after: int | None = option(None, "Checkpoint and stop after this step; rerun to resume.")
    rollout_engine: RolloutEngine = option("auto", "torch | vllm | auto (vllm on a GPU, torch on a CPU).")

    def __post_init__(self) -> None:
        _literal(self.rollout_engine, RolloutEngine, "rollout_engine")
        _literal(self.served_objective, ServedObjective, "served_objective")
        _literal(self.rationale_credit, RationaleCredit, "rationale_credit")
        _require(self.rollouts >= 2, f"rollouts must be >= 2 (group-normalised advantages), got {self.rollouts}")
        _require(self.temperature > 0, f"temperature must be > 0 (RL samples rationales), got {self.temperature}")
        for name in ("users", "negatives", "steps", "users_per_step", "pl_samples", "k", "checkpoint_every"):
            _require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("none_weight", "served_users_per_step", "served_weight", "beta"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        pl_served = self.served_users_per_step > 0 and self.served_objective == "pl"
        _require(not pl_served or self.pl_samples >= 2, "the pl served objective needs pl_samples >= 2")
        # the none-mode term's baseline is the mean over its M rankings: with M = 1 it would carry no gradient
        _require(self.none_weight == 0 or self.pl_samples >= 2, "none_weight > 0 needs pl_samples >= 2")
