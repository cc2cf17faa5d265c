"""Turning a trained HF directory into a checkpoint the service loads: the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from service import contract
from service.checkpoint import AnswerTokenIds, HFEncoder, Manifest, open_checkpoint, write_manifest


def content_hash(model_dir: Path) -> str:
    """SHA-256 over weights, config and tokenizer: the same bytes give the same ``model_version``,
    and any change of weights gives a new one (so score-cache entries can never be reused wrongly)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.suffix in {".safetensors", ".json"} and path.name != "manifest.json":
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def write_checkpoint_manifest(
    model_dir: Path,
    name: str,
    provenance: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    **limits: int,
) -> Manifest:
    """Write ``manifest.json`` for ``model_dir`` and check the service can open the result."""
    from transformers import AutoTokenizer

    encoder = HFEncoder(AutoTokenizer.from_pretrained(str(model_dir)))
    yes, no = contract.answer_token_ids(encoder)
    manifest = Manifest(
        model_version=f"{name}-{content_hash(model_dir)[:12]}",
        prompt_format=contract.PROMPT_FORMAT,
        answer_token_ids=AnswerTokenIds(yes=yes, no=no),
        provenance=provenance,
        metrics=metrics or {},
        **limits,
    )
    write_manifest(model_dir, manifest)
    open_checkpoint(model_dir)  # fail here, not in production, if anything disagrees
    return manifest
