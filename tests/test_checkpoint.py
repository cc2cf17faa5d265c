"""The service refuses checkpoints it cannot serve, with a message naming the file and field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract.checkpoint import CheckpointError, content_hash, open_checkpoint, read_manifest
from loadtest.procs import DEFAULT_MODEL, REPO_ROOT
from tests.files import not_world_readable


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, target)
    return target


def _edit_manifest(model_dir: Path, **changes) -> None:
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_shipped_default_model_opens():
    checkpoint = open_checkpoint(DEFAULT_MODEL)
    assert checkpoint.manifest.prompt_format == "r2rank-grounded-v3"  # its evidence states the next-item rank
    assert checkpoint.manifest.stats_version == checkpoint.stats.version  # the statistics it was trained with
    assert checkpoint.sequence is not None and checkpoint.manifest.sequence_version == checkpoint.sequence.version
    assert checkpoint.model_version.rsplit("-", 1)[1] == content_hash(DEFAULT_MODEL)[:12]  # names its bytes
    size = sum(p.stat().st_size for p in DEFAULT_MODEL.rglob("*") if p.is_file())
    assert size <= 50 * 1024 * 1024


def test_other_prompt_format_refused(model_copy: Path):
    _edit_manifest(model_copy, prompt_format="someone-elses-v9")
    with pytest.raises(CheckpointError, match="someone-elses-v9.*not supported"):
        open_checkpoint(model_copy)


def test_statistics_must_be_there_and_be_the_manifests(model_copy: Path):
    _edit_manifest(model_copy, stats_version="0123456789abcdef")
    with pytest.raises(CheckpointError, match="evidence.json.gz.*not the manifest's stats_version"):
        open_checkpoint(model_copy)
    (model_copy / "evidence.json.gz").unlink()
    with pytest.raises(CheckpointError, match="evidence.json.gz: missing"):
        open_checkpoint(model_copy)


def test_answer_ids_must_match_tokenizer(model_copy: Path):
    _edit_manifest(model_copy, answer_token_ids={"yes": 1, "no": 2})
    with pytest.raises(CheckpointError, match="answer_token_ids"):
        open_checkpoint(model_copy)


def test_missing_and_malformed_manifest(model_copy: Path):
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json: not valid JSON"):
        read_manifest(model_copy)
    _edit_manifest_raw = {"prompt_format": "r2rank-pointwise-v1"}
    (model_copy / "manifest.json").write_text(json.dumps(_edit_manifest_raw))
    with pytest.raises(CheckpointError, match="model_version"):
        read_manifest(model_copy)
    (model_copy / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        read_manifest(model_copy)


def test_service_refuses_to_start_on_wrong_format(model_copy: Path):
    """The real CLI exits non-zero with the reason, before loading any engine."""
    _edit_manifest(model_copy, prompt_format="r2rank-pointwise-v0")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--model-path", str(model_copy), "--port", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "r2rank-pointwise-v0" in result.stderr and "not supported" in result.stderr


def test_export_keeps_the_prompt_limits_the_model_was_served_with(model_copy, tmp_path):
    """A copy of the weights reads requests as its source does: export keeps the manifest's limits and the
    candidate sources the weights were trained on, not defaults. A manifest from before the sources were recorded
    lists only the catalogue, which is what such a model was trained on."""
    from trainer.export import export_checkpoint

    raw = json.loads((model_copy / "manifest.json").read_text())
    raw.pop("candidate_sources", None)
    (model_copy / "manifest.json").write_text(json.dumps(raw))
    assert read_manifest(model_copy).candidate_sources == ["catalogue"]
    limits = {"max_history_items": 7, "max_history_tokens": 300, "max_title_tokens": 12, "max_rationale_tokens": 20}
    _edit_manifest(model_copy, **limits, candidate_sources=["catalogue", "retrieval"])
    exported = export_checkpoint(model_copy, tmp_path / "exported", {}, "r2rank-train export")
    assert exported.limit_settings() == limits
    assert exported.candidate_sources == ["catalogue", "retrieval"]
    _edit_manifest(model_copy, candidate_sources=["retriever"])
    with pytest.raises(CheckpointError, match="candidate_sources"):
        read_manifest(model_copy)
    _edit_manifest(model_copy, candidate_sources=["catalogue", "retrieval"])
    assert open_checkpoint(tmp_path / "exported").manifest.limits == read_manifest(model_copy).limits
    assert exported.model_version == read_manifest(model_copy).model_version


def test_export_under_a_strict_umask_ships_a_checkpoint_another_user_can_read(model_copy, tmp_path):
    """The service often runs as another user than the trainer: every exported file must be readable by it."""
    from trainer.export import export_checkpoint

    (model_copy / "sequence").chmod(0o700)  # a source copied with private modes
    previous = os.umask(0o077)
    try:
        export_checkpoint(model_copy, tmp_path / "exported", {}, "r2rank-train export")
    finally:
        os.umask(previous)
    assert not_world_readable(tmp_path / "exported") == []
    assert open_checkpoint(tmp_path / "exported").sequence is not None
