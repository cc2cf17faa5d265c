"""Export: a trained checkpoint copied to a servable directory, its manifest carrying provenance and the eval
metrics of the report that measured it (the service's hot-reload gate compares ``metrics["ndcg@10"]``)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from contract.checkpoint import Manifest, open_checkpoint, write_checkpoint_manifest
from contract.evidence import EVIDENCE_FILE
from contract.sequence import SEQUENCE_DIR
from trainer.statistics import ship_sequence_model

SERVED_SUFFIXES = frozenset({".json", ".safetensors", ".txt", ".jinja"})


class ExportError(ValueError):
    """The report does not describe this checkpoint; the message names the file and the key."""


def report_metrics(report: Path, model_version: str, mode: str) -> dict:
    """The metrics ``report`` (an eval.json) holds for ``model_version`` in ``mode``, and where they came from."""
    evaluation = json.loads(report.read_text())
    key = f"{model_version} ({mode})"
    results = evaluation["results"]
    if key not in results:
        raise ExportError(f"{report} has no results for {key!r} (has {sorted(results)})")
    metrics = {name: value["mean"] for name, value in results[key].items()}
    metrics["eval"] = {"report": str(report), "title": evaluation["title"], "mode": mode}
    return metrics


def stage_llm_files(model: Path, out: Path) -> Path:
    """A staging directory beside ``out`` holding ``model``'s weights, config and tokenizer (no manifest, no
    statistics, no sequence model). The caller adds the rest and finishes with ``replace_with_staged``, so
    ``out`` is never left half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    for path in Path(model).iterdir():
        if path.is_file() and path.name != "manifest.json" and path.suffix in SERVED_SUFFIXES:
            shutil.copy2(path, staging / path.name)
    return staging


def replace_with_staged(staging: Path, out: Path) -> None:
    """``out`` replaced whole by a finished staging directory (``stage_llm_files``), every file and folder in it
    readable by a service running as another user: mkdtemp makes the folder 0700, and a trainer run under a
    strict umask (or files copied with their modes) would otherwise ship a checkpoint that service cannot open."""
    _make_world_readable(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def _make_world_readable(root: Path) -> None:
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def export_checkpoint(model: Path, out: Path, metrics: dict, command: str) -> Manifest:
    """Copy weights + tokenizer to ``out`` with a fresh manifest; ``out`` is replaced whole, never left
    half-written (the copy is staged beside it and renamed)."""
    source = open_checkpoint(model)
    staging = stage_llm_files(model, out)
    shutil.copy2(model / EVIDENCE_FILE, staging / EVIDENCE_FILE)
    if source.sequence is not None:
        ship_sequence_model(model / SEQUENCE_DIR, staging)
    name = source.model_version.rsplit("-", 1)[0]
    provenance = {**source.manifest.provenance, "exported_from": str(model), "export_command": command}
    manifest = write_checkpoint_manifest(staging, name, provenance, metrics, **source.manifest.copy_settings())
    replace_with_staged(staging, out)
    return manifest
