"""A ranker checkpoint on disk: Hugging Face weights + tokenizer + ``manifest.json``.

The manifest is what makes a plain HF directory an r2rank ranker: which prompt format it was trained on
(``prompt_format``), its answer token ids, the prompt limits, a ``model_version`` that names its bytes and the
``stats_version`` of the evidence statistics shipped beside the weights (``evidence.json.gz``), and the
``sequence_version`` of the sequence model shipped in ``sequence/`` where its evidence states a next-item rank
(hashed into ``model_version`` too); the versions key the score cache. The trainer writes it
(``write_checkpoint_manifest``), the service and the trainer read it (``open_checkpoint``), which refuses
anything inconsistent before an engine spends a minute loading weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from contract import prompt
from contract.assembly import PromptAssembler, PromptLimits, answer_token_ids
from contract.evidence import EVIDENCE_FILE, EvidenceStats
from contract.sequence import SEQUENCE_DIR, SequenceRanker

MANIFEST_NAME = "manifest.json"
HASHED_SUFFIXES = frozenset({".safetensors", ".json"})


class AnswerTokenIds(BaseModel):
    yes: int = Field(ge=0)
    no: int = Field(ge=0)


LIMIT_FIELDS = ("max_history_items", "max_history_tokens", "max_title_tokens", "max_rationale_tokens")
REFRESH_PROVENANCE = "refresh"
"""The provenance key under which ``r2rank-train refresh`` records what it changed (the evidence, not the LLM)."""


class Manifest(BaseModel):
    """What ``manifest.json`` holds. Unknown keys are kept (``provenance`` is free-form)."""

    model_config = {"extra": "allow", "protected_namespaces": ()}

    model_version: str = Field(min_length=1, description="Unique id of these weights; keys the score cache.")
    prompt_format: str = Field(description="contract.prompt.PROMPT_FORMAT the model was trained on.")
    answer_token_ids: AnswerTokenIds
    max_history_items: int = Field(default=prompt.DEFAULT_MAX_HISTORY_ITEMS, ge=0)
    max_history_tokens: int = Field(default=prompt.DEFAULT_MAX_HISTORY_TOKENS, ge=1)
    max_title_tokens: int = Field(default=prompt.DEFAULT_MAX_TITLE_TOKENS, ge=1)
    max_rationale_tokens: int = Field(default=prompt.DEFAULT_MAX_RATIONALE_TOKENS, ge=1)
    stats_version: str = Field(min_length=1, description="Version of the evidence statistics (evidence.json.gz).")
    sequence_version: str | None = Field(
        None,
        description="Version of the sequence model whose next-item rank the evidence states (seqrec.*); "
        "none for a checkpoint without one.",
    )
    candidate_sources: list[prompt.CandidateSource] = Field(
        default_factory=lambda: ["catalogue"],
        min_length=1,
        description="Where the candidates it was trained on came from (contract.prompt.CandidateSource): the "
        "candidate_source values a request may give it.",
    )
    provenance: dict[str, Any] = Field(default_factory=dict, description="How it was made: command, data, seed.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Eval results, if any.")

    @property
    def limits(self) -> PromptLimits:
        return PromptLimits(self.max_history_items, self.max_history_tokens, self.max_title_tokens)

    @property
    def weights_version(self) -> str:
        """The ``model_version`` these LLM weights were trained as. ``r2rank-train refresh`` gives the same weights
        fresher evidence under a new ``model_version`` and records the weights' own version (``llm_model_version``;
        a record without it names only the checkpoint it was refreshed from, which was then the trained one)."""
        refresh = self.provenance.get(REFRESH_PROVENANCE) or {}
        return refresh.get("llm_model_version") or refresh.get("from_model_version") or self.model_version

    def limit_settings(self) -> dict[str, int]:
        """The prompt and rationale limits as ``write_checkpoint_manifest`` takes them: a copy of these weights
        (export, refresh) must keep them, or it would read requests differently from the model it copies."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS}

    def copy_settings(self) -> dict[str, Any]:
        """What a copy of these weights (export, refresh) must keep: the limits, and the candidate sources the weights
        were trained on."""
        return {**self.limit_settings(), "candidate_sources": list(self.candidate_sources)}


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be served; the message says which file/field and why."""


class HFEncoder:
    """Adapts a Hugging Face tokenizer to ``contract.assembly.Encoder`` (no special tokens added).

    Fast tokenizers are called through their Rust backend directly: same ids as ``tokenizer.encode``
    without its Python overhead, which is most of a cached /rank request's CPU time.
    """

    def __init__(self, tokenizer: Any, memo_bytes: int = 64 * 1024 * 1024) -> None:
        self.tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._memo: dict[str, list[int]] = {}
        self._memo_bytes_max = memo_bytes
        self._memo_bytes = 0

    def encode(self, text: str) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """One call for many texts, memoised: catalogue titles recur across requests, so most of a request's
        titles and candidate segments are already tokenized. The memo is bounded in bytes (an estimate of the
        texts' and ids' size; cleared when full), so unique long titles cannot grow the process."""
        out: list[list[int] | None] = [self._memo.get(t) for t in texts]
        missing = [i for i, ids in enumerate(out) if ids is None]
        if missing:
            fresh = [texts[i] for i in missing]
            if self._backend is not None:
                encoded = [e.ids for e in self._backend.encode_batch(fresh, add_special_tokens=False)]
            else:
                encoded = [self.tokenizer.encode(t, add_special_tokens=False) for t in fresh]
            size = sum(_memo_cost(text, ids) for text, ids in zip(fresh, encoded, strict=True))
            if self._memo_bytes + size > self._memo_bytes_max:
                self._memo.clear()
                self._memo_bytes = 0
            for i, text, ids in zip(missing, fresh, encoded, strict=True):
                out[i] = self._memo[text] = ids
            self._memo_bytes += size
        return out  # type: ignore[return-value]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def special_texts(self) -> list[str]:
        """The tokenizer's special and added tokens' strings: text in a title that would encode as control."""
        added = [token.content for token in getattr(self.tokenizer, "added_tokens_decoder", {}).values()]
        return sorted(set(self.tokenizer.all_special_tokens) | set(added))

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id or 0


def _memo_cost(text: str, ids: list[int]) -> int:
    """Bytes one memo entry holds, about: the key string, the list and its ints, the dict slot."""
    return 49 + len(text.encode("utf-8", "surrogatepass")) + 56 + 36 * len(ids) + 100


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
    """A validated checkpoint: its directory, manifest, a tokenizer that agrees with it, and the prompt
    assembler every consumer builds its inputs with."""

    path: Path
    manifest: Manifest
    encoder: HFEncoder
    prompts: PromptAssembler

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def stats(self) -> EvidenceStats:
        return self.prompts.stats

    @property
    def answer_ids(self) -> tuple[int, int]:
        return self.manifest.answer_token_ids.yes, self.manifest.answer_token_ids.no

    @property
    def sequence(self) -> SequenceRanker | None:
        return self.prompts.sequence

    @property
    def evidence_horizon(self) -> str | None:
        """The positions this checkpoint's collaborative state has seen: its sequence model's horizon (a refreshed
        checkpoint's statistics were counted on the same positions, a trained one's on its training prefixes, the
        ``valid`` horizon's); None without a sequence model."""
        return None if self.sequence is None else str(self.sequence.config.get("horizon", "valid"))

    def with_manifest(self, manifest: Manifest) -> Checkpoint:
        """The same weights, tokenizer, statistics and sequence model under another manifest (limits re-read)."""
        assembler = PromptAssembler(self.encoder, manifest.limits, self.answer_ids, self.stats, self.sequence)
        return Checkpoint(self.path, manifest, self.encoder, assembler)


def open_checkpoint(model_dir: str | Path) -> Checkpoint:
    """Read and cross-check a checkpoint: format supported, answer ids match the tokenizer."""
    from transformers import AutoTokenizer  # heavy import, only when a checkpoint is opened

    path = Path(model_dir).resolve()
    if not path.is_dir():
        raise CheckpointError(f"{path}: model directory does not exist")
    manifest = read_manifest(path)
    try:
        prompt.check_prompt_format(manifest.prompt_format)
    except prompt.ContractError as exc:
        raise CheckpointError(f"{path / MANIFEST_NAME}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad checkpoint
        raise CheckpointError(f"{path}: tokenizer failed to load: {exc}") from exc
    encoder = HFEncoder(tokenizer)
    try:
        ids = answer_token_ids(encoder)
    except prompt.ContractError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    expected = (manifest.answer_token_ids.yes, manifest.answer_token_ids.no)
    if ids != expected:
        raise CheckpointError(
            f"{path / MANIFEST_NAME}: answer_token_ids {expected} disagree with the tokenizer's {ids}"
        )
    stats = read_stats(path)
    if stats.version != manifest.stats_version:
        raise CheckpointError(f"{path / EVIDENCE_FILE}: statistics version {stats.version} is not the manifest's "
                              f"stats_version {manifest.stats_version}")  # fmt: skip
    has_sequence = SequenceRanker.exists(path / SEQUENCE_DIR)
    _check_format_matches_contents(path, manifest.prompt_format, has_sequence, stats.has_co_bought)
    sequence = read_sequence(path, manifest) if has_sequence else None
    return Checkpoint(path, manifest, encoder, PromptAssembler(encoder, manifest.limits, ids, stats, sequence))


def _check_format_matches_contents(path: Path, prompt_format: str, has_sequence: bool, has_co_bought: bool) -> None:
    """A format's evidence line needs exactly what the directory holds: a sequence model iff it states the rank
    (a model never trained on the field must not be served it), co-purchase counts iff it states them."""
    if prompt.prompt_format_for(has_sequence, has_co_bought) == prompt_format:
        return
    states_rank, states_co_bought = prompt.format_states(prompt_format)
    needs = (
        f"{'a' if states_rank else 'no'} sequence model ({SEQUENCE_DIR}/) and statistics "
        f"{'with' if states_co_bought else 'without'} co-purchases"
    )
    holds = (
        f"{'a' if has_sequence else 'no'} sequence model and statistics "
        f"{'with' if has_co_bought else 'without'} co-purchases ({EVIDENCE_FILE})"
    )
    raise CheckpointError(f"{path / MANIFEST_NAME}: prompt_format {prompt_format!r} needs {needs}; the directory "
                          f"holds {holds}")  # fmt: skip


def read_sequence(model_dir: Path, manifest: Manifest) -> SequenceRanker:
    """The shipped sequence model, checked against the manifest's version."""
    where = Path(model_dir) / SEQUENCE_DIR
    try:
        sequence = SequenceRanker.load(where)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{where}: unreadable: {exc}") from exc
    if sequence.version != manifest.sequence_version:
        raise CheckpointError(f"{where}: sequence model version {sequence.version} is not the manifest's "
                              f"sequence_version {manifest.sequence_version}")  # fmt: skip
    return sequence


def read_stats(model_dir: Path) -> EvidenceStats:
    path = Path(model_dir) / EVIDENCE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a ranker needs its evidence statistics (r2rank-train init-model "
                              "writes them)")  # fmt: skip
    try:
        return EvidenceStats.load(model_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable: {exc}") from exc


def content_hash(model_dir: Path) -> str:
    """SHA-256 over weights, config and tokenizer: the same bytes give the same ``model_version``, and any
    change of weights gives a new one (so score-cache entries can never be reused wrongly)."""
    digest = hashlib.sha256()
    shipped = [*Path(model_dir).iterdir(), *sorted((Path(model_dir) / SEQUENCE_DIR).glob("*"))]
    for path in sorted(shipped):
        if path.is_file() and path.suffix in HASHED_SUFFIXES and path.name != MANIFEST_NAME:
            digest.update(str(path.relative_to(model_dir)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def write_checkpoint_manifest(
    model_dir: Path,
    name: str,
    provenance: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    candidate_sources: Sequence[prompt.CandidateSource] = ("catalogue",),
    **limits: int,
) -> Manifest:
    """Write ``manifest.json`` for ``model_dir`` (``model_version`` = ``name`` + its content hash) and check
    that the result opens. ``candidate_sources``: what its training examples' candidates were (a copy of trained
    weights keeps its source's)."""
    from transformers import AutoTokenizer

    yes, no = answer_token_ids(HFEncoder(AutoTokenizer.from_pretrained(str(model_dir))))
    shipped = Path(model_dir) / SEQUENCE_DIR
    sequence = SequenceRanker.load(shipped) if SequenceRanker.exists(shipped) else None
    stats = read_stats(model_dir)
    manifest = Manifest(
        model_version=f"{name}-{content_hash(model_dir)[:12]}",
        prompt_format=prompt.prompt_format_for(sequence is not None, stats.has_co_bought),
        answer_token_ids=AnswerTokenIds(yes=yes, no=no),
        stats_version=stats.version,
        sequence_version=sequence.version if sequence is not None else None,
        provenance=provenance,
        metrics=metrics or {},
        candidate_sources=list(candidate_sources),
        **limits,
    )
    write_manifest(model_dir, manifest)
    open_checkpoint(model_dir)  # fail here, not in production, if anything disagrees
    return manifest
