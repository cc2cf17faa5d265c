"""A ranker checkpoint on disk: Hugging Face weights + tokenizer + ``manifest.json``.

The manifest is what makes a plain HF directory an r2rank ranker: which contract it was trained on
(``prompt_format``), its answer token ids and a ``model_version`` that keys the score cache. The
trainer writes it (``trainer.export``), the service reads it here and refuses anything inconsistent
before the engine spends a minute loading weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from service import contract

MANIFEST_NAME = "manifest.json"


class AnswerTokenIds(BaseModel):
    yes: int = Field(ge=0)
    no: int = Field(ge=0)


class Manifest(BaseModel):
    """What ``manifest.json`` holds. Unknown keys are kept (``provenance`` is free-form)."""

    model_config = {"extra": "allow", "protected_namespaces": ()}

    model_version: str = Field(min_length=1, description="Unique id of these weights; keys the score cache.")
    prompt_format: str = Field(description="contract.PROMPT_FORMAT the model was trained on.")
    answer_token_ids: AnswerTokenIds
    max_history_items: int = Field(default=contract.DEFAULT_MAX_HISTORY_ITEMS, ge=0)
    max_history_tokens: int = Field(default=contract.DEFAULT_MAX_HISTORY_TOKENS, ge=1)
    max_title_tokens: int = Field(default=contract.DEFAULT_MAX_TITLE_TOKENS, ge=1)
    max_rationale_tokens: int = Field(default=contract.DEFAULT_MAX_RATIONALE_TOKENS, ge=1)
    provenance: dict[str, Any] = Field(default_factory=dict, description="How it was made: command, data, seed.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Eval results, if any.")


class CheckpointError(RuntimeError):
    """A checkpoint directory the service cannot serve; the message says which file/field and why."""


class HFEncoder:
    """Adapts a Hugging Face tokenizer to ``contract.Encoder`` (no special tokens added).

    Fast tokenizers are called through their Rust backend directly: same ids as ``tokenizer.encode``
    without its Python overhead, which is most of a cached /rank request's CPU time.
    """

    def __init__(self, tokenizer: Any, memo_size: int = 100_000) -> None:
        self.tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._memo: dict[str, list[int]] = {}
        self._memo_size = memo_size

    def encode(self, text: str) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """One call for many texts, memoised: catalogue titles recur across requests, so most of a request's
        titles and candidate segments are already tokenized. The memo is bounded (cleared when full)."""
        out: list[list[int] | None] = [self._memo.get(t) for t in texts]
        missing = [i for i, ids in enumerate(out) if ids is None]
        if missing:
            fresh = [texts[i] for i in missing]
            if self._backend is not None:
                encoded = [e.ids for e in self._backend.encode_batch(fresh, add_special_tokens=False)]
            else:
                encoded = [self.tokenizer.encode(t, add_special_tokens=False) for t in fresh]
            if len(self._memo) + len(fresh) > self._memo_size:
                self._memo.clear()
            for i, text, ids in zip(missing, fresh, encoded, strict=True):
                out[i] = self._memo[text] = ids
        return out  # type: ignore[return-value]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id


def read_manifest(model_dir: Path) -> Manifest:
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; an r2rank checkpoint needs a manifest (r2rank-train export writes it)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(f"{path}: field {field!r}: {first['msg']}") from exc


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    path = Path(model_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint: its directory, manifest and a tokenizer that agrees with the manifest."""

    path: Path
    manifest: Manifest
    encoder: HFEncoder

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def answer_ids(self) -> tuple[int, int]:
        return self.manifest.answer_token_ids.yes, self.manifest.answer_token_ids.no


def open_checkpoint(model_dir: str | Path) -> Checkpoint:
    """Read and cross-check a checkpoint: format supported, answer ids match the tokenizer."""
    from transformers import AutoTokenizer  # heavy import, only when a checkpoint is opened

    path = Path(model_dir).resolve()
    if not path.is_dir():
        raise CheckpointError(f"{path}: model directory does not exist")
    manifest = read_manifest(path)
    try:
        contract.check_prompt_format(manifest.prompt_format)
    except contract.ContractError as exc:
        raise CheckpointError(f"{path / MANIFEST_NAME}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad checkpoint
        raise CheckpointError(f"{path}: tokenizer failed to load: {exc}") from exc
    encoder = HFEncoder(tokenizer)
    try:
        ids = contract.answer_token_ids(encoder)
    except contract.ContractError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    expected = (manifest.answer_token_ids.yes, manifest.answer_token_ids.no)
    if ids != expected:
        raise CheckpointError(
            f"{path / MANIFEST_NAME}: answer_token_ids {expected} disagree with the tokenizer's {ids}"
        )
    return Checkpoint(path=path, manifest=manifest, encoder=encoder)
