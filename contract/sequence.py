"""The sequence model's judgement of a pair: where a SASRec ranks the candidate among the whole catalogue.

An ID-based sequential recommender learns the collaborative signal hand-counted statistics miss (what users
with histories like this one went on to choose). Its judgement becomes one evidence field, ``next-item rank
37``: 1 + the number of catalogue items (outside the user's history) it scores above the candidate, after
the user's history. The rank is the candidate's alone: it does not depend on which other candidates the
request holds, so scores stay pointwise and the score cache stays valid. A candidate the model has no id
for, or a history with none it knows, gets ``unknown``, never a made-up rank.

This module is the inference half, in NumPy: the service runs it on the API's CPU (in-process or beside a
remote engine) with no torch, and the trainer computes training examples' fields with the same code. The
trainer (``trainer.seqrec``) trains the model in torch and saves the files read here; a test checks that
this forward pass agrees with torch's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

SEQUENCE_WEIGHTS = "seqrec.safetensors"
SEQUENCE_META = "seqrec.json"
SEQUENCE_DIR = "sequence"  # inside a checkpoint: a subdirectory, so an engine never takes it for LLM weights

# Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): erf for the exact GELU without SciPy
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: np.ndarray) -> np.ndarray:
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * x)
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return sign * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class SequenceRanker:
    """A trained SASRec (RecBole's post-norm layout, as ``trainer.seqrec.SASRec`` builds it) and its item ids."""

    def __init__(self, item_ids: Sequence[str], weights: dict[str, np.ndarray], config: dict, version: str) -> None:
        self.item_ids = list(item_ids)
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}  # 0 is padding
        self.weights = {name: np.asarray(w, dtype=np.float32) for name, w in weights.items()}
        self.layers = int(config["layers"])
        self.heads = int(config["heads"])
        self.max_length = int(config["max_length"])
        self.config = dict(config)
        self.version = version
        self._items = self.weights["items.weight"]  # (items + 1, H), row 0 = padding

    # --- the artifact ------------------------------------------------------------------------------------
    @staticmethod
    def exists(directory: Path) -> bool:
        return (Path(directory) / SEQUENCE_META).is_file() and (Path(directory) / SEQUENCE_WEIGHTS).is_file()

    @classmethod
    def load(cls, directory: Path) -> SequenceRanker:
        """Read ``seqrec.safetensors`` + ``seqrec.json`` (what ``r2rank-train seqrec`` writes)."""
        from safetensors.numpy import load_file

        directory = Path(directory)
        meta_bytes = (directory / SEQUENCE_META).read_bytes()
        weight_bytes = (directory / SEQUENCE_WEIGHTS).read_bytes()
        meta = json.loads(meta_bytes)
        digest = hashlib.sha256(weight_bytes)
        digest.update(json.dumps([meta["item_ids"], meta["config"]], sort_keys=True).encode())
        return cls(meta["item_ids"], load_file(str(directory / SEQUENCE_WEIGHTS)), meta["config"],
                   digest.hexdigest()[:16])  # fmt: skip

    @property
    def provenance(self) -> dict:
        return {"version": self.version, "items": len(self.item_ids), "config": self.config}

    # --- inference ---------------------------------------------------------------------------------------
    def encode(self, items: Sequence[str | None]) -> list[int]:
        """The last ``max_length`` items it knows, as ids (others, and ``None``, are left out)."""
        known = [self.index[i] for i in items if i is not None and i in self.index]
        return known[-self.max_length :]

    def state(self, ids: Sequence[int]) -> np.ndarray:
        """The hidden state after the last item of ``ids`` (non-empty): what every item's logit is read from."""
        w = self.weights
        length = len(ids)
        x = self._items[list(ids)] + w["positions.weight"][:length]
        x = _layer_norm(x, w["norm.weight"], w["norm.bias"])
        causal = np.triu(np.full((length, length), -np.inf, dtype=np.float32), k=1)
        for layer in range(self.layers):
            p = f"encoder.layers.{layer}."
            x = _layer_norm(x + self._attention(x, p, causal), w[p + "norm1.weight"], w[p + "norm1.bias"])
            inner = _gelu(x @ w[p + "linear1.weight"].T + w[p + "linear1.bias"])
            x = _layer_norm(x + inner @ w[p + "linear2.weight"].T + w[p + "linear2.bias"],
                            w[p + "norm2.weight"], w[p + "norm2.bias"])  # fmt: skip
        return x[-1]

    def _attention(self, x: np.ndarray, prefix: str, causal: np.ndarray) -> np.ndarray:
        w = self.weights
        width = x.shape[-1]
        q, k, v = np.split(x @ w[prefix + "self_attn.in_proj_weight"].T + w[prefix + "self_attn.in_proj_bias"], 3, -1)
        head = width // self.heads
        split = lambda t: t.reshape(len(x), self.heads, head).transpose(1, 0, 2)  # noqa: E731 - (heads, L, head)
        scores = split(q) @ split(k).transpose(0, 2, 1) / math.sqrt(head) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        mixed = (scores / scores.sum(-1, keepdims=True)) @ split(v)
        mixed = mixed.transpose(1, 0, 2).reshape(len(x), width)
        return mixed @ w[prefix + "self_attn.out_proj.weight"].T + w[prefix + "self_attn.out_proj.bias"]

    def logits(self, history: Sequence[str | None]) -> np.ndarray | None:
        """Every item id's logit after ``history`` (index = id; 0 is padding), or None if it knows no item of it."""
        ids = self.encode(history)
        if not ids:
            return None
        return self._items @ self.state(ids)

    def _outside(self, logits: np.ndarray, items: Iterable[str | None]) -> np.ndarray:
        """A copy of ``logits`` with padding and ``items`` (those it has ids for) at ``-inf``: what is left are the
        items a rank counts and a top list may name."""
        masked = logits.copy()
        masked[0] = -np.inf
        masked[[self.index[i] for i in items if i is not None and i in self.index]] = -np.inf
        return masked

    def ranks(self, history: Sequence[str | None], candidates: Sequence[str | None]) -> list[int | None]:
        """Each candidate's catalogue rank after ``history``: 1 + the items outside the history scored above
        it. ``None`` (unknown) for a candidate it has no id for, or for every candidate of a history it knows
        no item of. One forward pass per history, whatever the number of candidates."""
        logits = self.logits(history)
        if logits is None:
            return [None] * len(candidates)
        ordered = np.sort(self._outside(logits, history))
        out: list[int | None] = []
        for candidate in candidates:
            column = self.index.get(candidate) if candidate is not None else None
            if column is None:
                out.append(None)
                continue
            above = len(ordered) - int(np.searchsorted(ordered, logits[column], side="right"))
            out.append(1 + above)
        return out

    def top_items(self, history: Sequence[str | None], count: int, exclude: Collection[str] = ()) -> list[str]:
        """The ``count`` items it scores highest after ``history``, best first, none of the history's or
        ``exclude``'s: the items a SASRec would show this user (hard negatives for training, the candidate lists
        of a hard evaluation). Empty if it knows no item of the history."""
        logits = self.logits(history)
        if logits is None or count <= 0:
            return []
        masked = self._outside(logits, (*history, *exclude))
        count = min(count, int(np.isfinite(masked).sum()))
        if count <= 0:
            return []
        top = np.argpartition(-masked, count - 1)[:count]
        top = top[np.argsort(-masked[top], kind="stable")]
        return [self.item_ids[int(column) - 1] for column in top]

    def scores(self, history: Sequence[str | None], candidates: Sequence[str | None]) -> list[float]:
        """Each candidate's logit (``-inf`` where ``ranks`` says unknown): the sequence model as a ranker."""
        logits = self.logits(history)
        if logits is None:
            return [-math.inf] * len(candidates)
        columns = [self.index.get(c) if c is not None else None for c in candidates]
        return [float(logits[c]) if c is not None else -math.inf for c in columns]
