"""The sequence-model baseline: SASRec (Kang & McAuley 2018), an ID-based causal transformer over item ids.

It is what a product team already runs beside an LLM ranker, so every report shows it (``eval --seqrec``).
Architecture and sizes follow RecBole's SASRec, the implementation LLMRank's published 0.759 NDCG@10 on
Games-6k comes from: 2 post-norm layers, 2 heads, width 64, learned absolute positions, the item embedding
tied to the output layer. Dropout is 0.2 rather than RecBole's 0.5, which learns about half as fast per
epoch on this CPU's budget (docs/training.md has both curves).

Loss: **full-softmax cross-entropy over every item id**, at every position of every training sequence
(position t predicts item t + 1). A full softmax is exact (no sampled-softmax bias to correct), is what
RecBole's ``loss_type="CE"`` does, and is cheap at catalogue sizes like these: the output layer is one
(positions × 64) @ (64 × items) product, run in cache-sized chunks (``trainer.fused_softmax``). Batches are
grouped by length, so short sequences cost no padding.

What it may see is the ``horizon``: ``test`` trains on every position before each user's test target (what the
shipped LLM's training saw, validation targets included: the baseline for the test report); ``valid`` stops
before the validation targets (leak-free on the selection users' and RL's validation positions: its learning
curve is measured there after every epoch, and a ranker ships it to state the next-item rank, like the
evidence statistics counted on the same prefixes); ``sft`` also stops before each user's last ``held_out``
training positions, so SFT examples (targets there) get the rank of a model that never saw their target.
A later horizon may start from an earlier one's weights (``init``): it only adds positions.

Inference (the next-item rank, the baseline's scores) is ``contract.sequence.SequenceRanker``, in NumPy, which
reads the files saved here.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from contract.sequence import SEQUENCE_META, SEQUENCE_WEIGHTS, SequenceRanker
from trainer.config import HORIZON_ORDER, SeqRecConfig
from trainer.data import UserSplit
from trainer.fused_softmax import softmax_cross_entropy
from trainer.loop import CpuShare
from trainer.progress import Progress

logger = logging.getLogger(__name__)

WEIGHTS = SEQUENCE_WEIGHTS
META = SEQUENCE_META
STATE = "seqrec_state.pt"
STEPS = "seqrec_steps.jsonl"


class SASRec(nn.Module):
    """Item embedding + learned positions → causal post-norm transformer → hidden state per position; an
    item's logit is that state's dot product with its (tied) embedding. Id 0 is padding."""

    def __init__(self, num_items: int, config: SeqRecConfig) -> None:
        super().__init__()
        self.items = nn.Embedding(num_items + 1, config.hidden_size, padding_idx=0)
        self.positions = nn.Embedding(config.max_length, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            config.hidden_size, config.heads, config.inner_size, config.dropout,
            activation="gelu", batch_first=True, norm_first=False, layer_norm_eps=1e-12,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:  # RecBole's: normal(0, 0.02), zero biases
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded item ids, positions from each sequence's start → (B, L, H)."""
        length = ids.shape[1]
        positions = torch.arange(length, device=ids.device)
        x = self.dropout(self.norm(self.items(ids) + self.positions(positions)[None]))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=ids.device)
        return self.encoder(x, mask=causal, is_causal=True)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) → (..., items + 1) over every item id; padding can never be predicted."""
        out = hidden @ self.items.weight.T
        out[..., 0] = -math.inf
        return out


class SequenceModel:
    """A trained SASRec with its item vocabulary: scores a history's candidates, one forward per history."""

    def __init__(self, item_ids: Sequence[str], config: SeqRecConfig, provenance: dict | None = None) -> None:
        self.item_ids = list(item_ids)
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}  # 0 is padding
        self.config = config
        self.model = SASRec(len(self.item_ids), config)
        self.provenance = provenance or {}  # how it was trained: recipe, data, learning curve

    def encode(self, items: Sequence[str]) -> list[int]:
        """The last ``max_length`` known items of a history, as ids (items it never saw are left out)."""
        known = [self.index[i] for i in items if i in self.index]
        return known[-self.config.max_length :]

    @torch.no_grad()
    def score_batch(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Each candidate's logit after its history (one forward per history, histories batched); a candidate
        the model has no id for, or a history with no known item, scores ``-inf``."""
        self.model.eval()
        encoded = [self.encode(h) for h in histories]
        out: list[list[float]] = [[-math.inf] * len(c) for c in candidates]
        rows = [r for r, ids in enumerate(encoded) if ids]
        for start in range(0, len(rows), 256):
            batch = rows[start : start + 256]
            ids, lengths = _pad([encoded[r] for r in batch])
            hidden = self.model(ids)[torch.arange(len(batch)), lengths - 1]  # (B, H) at each history's last item
            for row, state in zip(batch, hidden, strict=True):
                columns = [self.index.get(c, 0) for c in candidates[row]]
                scores = (self.model.items.weight[columns] @ state).tolist()
                out[row] = [s if c else -math.inf for s, c in zip(scores, columns, strict=True)]
        return out

    def ranker(self) -> SequenceRanker:
        """The contract's NumPy inference over these weights (what a checkpoint that ships this model serves)."""
        weights = {name: tensor.detach().numpy() for name, tensor in self.model.state_dict().items()}
        return SequenceRanker(self.item_ids, weights, asdict(self.config), version="unsaved")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(directory / WEIGHTS))
        meta = {"item_ids": self.item_ids, "config": asdict(self.config), "provenance": self.provenance}
        (directory / META).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> SequenceModel:
        meta = json.loads((directory / META).read_text())
        model = cls(meta["item_ids"], SeqRecConfig(**meta["config"]), meta["provenance"])
        model.model.load_state_dict(load_file(str(directory / WEIGHTS)))
        model.model.eval()
        return model

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / META).is_file() and (directory / WEIGHTS).is_file()


def _pad(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sequences])
    ids = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, : len(s)] = torch.tensor(s)
    return ids, lengths


def training_sequences(splits: Sequence[UserSplit], horizon: str, held_out: int = 2) -> list[list[str]]:
    """Each user's items before the horizon's targets: ``all`` = every item, ``test`` = train + validation target,
    ``valid`` = train, ``sft`` = train without its last ``held_out`` items."""
    if horizon == "all":
        return [[*s.test_history, s.test_target] for s in splits]
    if horizon == "test":
        return [s.test_history for s in splits]
    if horizon == "valid":
        return [list(s.train) for s in splits]
    return [s.train[: max(0, len(s.train) - held_out)] for s in splits]


def check_init(init: SequenceModel, config: SeqRecConfig) -> None:
    """A warm start must not see more than the new horizon allows, nor have another shape."""
    if HORIZON_ORDER.index(init.config.horizon) > HORIZON_ORDER.index(config.horizon):
        raise ValueError(f"--init: trained with horizon {init.config.horizon!r}, later than {config.horizon!r}")
    if config.horizon == "sft" and init.config.horizon == "sft" and init.config.held_out < config.held_out:
        raise ValueError(f"--init: held out {init.config.held_out} positions, fewer than {config.held_out}")
    shape = ("hidden_size", "layers", "heads", "inner_size", "max_length")
    if any(getattr(init.config, k) != getattr(config, k) for k in shape):
        raise ValueError(f"--init: another shape ({', '.join(f'{k}={getattr(init.config, k)}' for k in shape)})")


@dataclass(frozen=True)
class RankerSequenceModels:
    """The sequence models a ranker's training reads: ``shipped`` goes into the checkpoint (serving, RL and
    eval state its rank) and ``examples`` states SFT examples' (and the teacher's calibration) ranks."""

    shipped: Path
    examples: SequenceRanker


def ranker_sequence_models(shipped: Path, examples: Path, targets_per_user: int) -> RankerSequenceModels:
    """Both models, refused where one would have seen a target it states a rank for: the shipped one must stop
    before the validation targets (RL's and the selection users'), the examples' before SFT's targets."""
    for path, option in ((shipped, "--sequence-model"), (examples, "--example-sequence-model")):
        if not SequenceRanker.exists(path):
            raise ValueError(f"{option} {path}: no sequence model there (r2rank-train seqrec --out {path})")
    shipped_model, example_model = SequenceRanker.load(shipped), SequenceRanker.load(examples)
    if shipped_model.config["horizon"] != "valid":
        raise ValueError(f"--sequence-model {shipped}: horizon {shipped_model.config['horizon']!r}; a ranker ships "
                         "one trained with --horizon valid (RL and selection positions unseen)")  # fmt: skip
    horizon, held = example_model.config["horizon"], example_model.config.get("held_out", 0)
    if horizon != "sft" or held < targets_per_user:
        raise ValueError(f"--example-sequence-model {examples}: horizon {horizon!r} holding out {held} positions; "
                         f"SFT's {targets_per_user} targets per user need --horizon sft --held-out "
                         f">= {targets_per_user}")  # fmt: skip
    if shipped_model.item_ids != example_model.item_ids:
        raise ValueError("--sequence-model and --example-sequence-model were trained on different catalogues")
    return RankerSequenceModels(shipped, example_model)


def length_batches(lengths: Sequence[int], tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by length into batches of about ``tokens`` positions each, in a shuffled order: a
    batch pads only to its own longest sequence."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches, current, longest = [], [], 0
    for i in order:
        longest = max(longest, lengths[i])
        if current and longest * (len(current) + 1) > tokens:
            batches.append(current)
            current, longest = [], lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def sequence_loss(model: SASRec, ids: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """Mean full-softmax cross-entropy of predicting item t + 1 from positions ≤ t, over real positions.
    ``fused``: without materialising the (positions x items) logits (``trainer.fused_softmax``, the same loss
    and gradients); ``False`` takes ``F.cross_entropy`` of the whole logit matrix."""
    hidden = model(ids[:, :-1])
    targets = ids[:, 1:]
    real = targets > 0
    if fused:
        return softmax_cross_entropy(hidden[real], model.items.weight, targets[real], excluded=0)
    return nn.functional.cross_entropy(model.logits(hidden[real]), targets[real])


def train_seqrec(
    item_ids: Sequence[str],
    sequences: Sequence[Sequence[str]],
    out: Path,
    config: SeqRecConfig,
    monitor=None,
    provenance: dict | None = None,
    init: SequenceModel | None = None,
) -> dict:
    """Train on ``sequences`` (oldest first), resumably: weights and optimiser state are saved after every
    epoch, and a rerun continues from the last one. ``monitor(model) -> dict`` (figures such as the selection
    users' NDCG@10) runs after every epoch: the learning curve, in ``OUT/seqrec_steps.jsonl``. ``init``: start
    from those weights (an earlier horizon's model, ``check_init``)."""
    torch.manual_seed(config.seed)
    model = SequenceModel(item_ids, config)
    if init is not None:
        check_init(init, config)
        if init.item_ids != model.item_ids:
            raise ValueError("--init: trained on another catalogue")
        model.model.load_state_dict(init.model.state_dict())
    encoded = [ids for ids in (model.encode(s) for s in sequences) if len(ids) >= 2]
    optimiser = torch.optim.Adam(model.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    out.mkdir(parents=True, exist_ok=True)
    done, curve = 0, []
    if (out / STATE).exists():
        state = torch.load(out / STATE, weights_only=False)
        model.model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        done, curve = state["epochs_done"], state["curve"]
        if "rng" in state:  # dropout draws continue as in an uninterrupted run
            torch.set_rng_state(state["rng"])
        logger.info("seqrec: resuming after epoch %d of %d", done, config.epochs)
    progress = Progress("seqrec", config.epochs, out / STEPS, done=done, every=1, unit="epochs")
    lengths = [len(ids) for ids in encoded]
    cpu = CpuShare()
    for epoch in range(done, config.epochs):
        started = time.monotonic()
        model.model.train()
        total, count = 0.0, 0
        for batch in length_batches(lengths, config.batch_tokens, random.Random(f"{config.seed}-{epoch}")):
            cpu.poll()
            ids, _ = _pad([encoded[i] for i in batch])
            loss = sequence_loss(model.model, ids)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
            count += len(batch)
        figures = {"loss": total / max(1, count), "epoch_s": round(time.monotonic() - started, 1)}
        if monitor is not None:
            figures.update(monitor(model))
        curve.append({"epoch": epoch + 1, **figures})
        torch.save({"model": model.model.state_dict(), "optimiser": optimiser.state_dict(),
                    "epochs_done": epoch + 1, "curve": curve, "rng": torch.get_rng_state()}, out / STATE)  # fmt: skip
        progress.update(epoch + 1, **figures)
    model.provenance = {"config": asdict(config), "sequences": len(encoded), "items": len(item_ids),
                        "parameters": sum(p.numel() for p in model.model.parameters()), "curve": curve,
                        **(provenance or {})}  # fmt: skip
    model.save(out)
    return model.provenance
