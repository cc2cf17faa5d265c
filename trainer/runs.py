"""What made a run: a stage resumes only what the same data, base checkpoint and settings started.

Every stage resumes an interrupted run from its output directory. Without a record of what made that run, a
rerun with other data would silently continue the old weights (and write the new tokenizer beside them). So
each stage writes ``run.fingerprint`` (JSON) when it starts: the dataset's fingerprint, the base checkpoint's
``model_version`` and the stage's settings (``stop_after`` left out: an interruption is not another run). A
rerun with a different fingerprint stops with a message naming what differs; ``--restart`` starts over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

FINGERPRINT = "run.fingerprint"  # JSON; no suffix a checkpoint hashes or exports (init-model writes into one)
FINISHED = "run.done"  # what a finished stage made, for a stage that keeps no state to resume from once done
DATA_SUFFIXES = frozenset({".jsonl", ".item", ".inter"})  # what trainer.data reads; retriever lists are apart
RESUME_NEUTRAL = frozenset({"stop_after"})


class RunMismatch(ValueError):
    """An output directory holds a run that other inputs made; the message names them."""


def data_fingerprint(source: Path) -> str:
    """SHA-256 over the dataset's files (names and bytes): the same files give the same fingerprint anywhere."""
    digest = hashlib.sha256()
    for path in sorted(Path(source).iterdir()):
        if path.is_file() and path.suffix in DATA_SUFFIXES:
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def run_fingerprint(data: Path, base: str | None, *configs: Any) -> dict[str, Any]:
    """What makes a run: the data, the base checkpoint's version and each config's settings."""
    settings: dict[str, Any] = {}
    for config in configs:
        fields = asdict(config) if is_dataclass(config) else dict(config)
        settings.update({k: v for k, v in fields.items() if k not in RESUME_NEUTRAL})
    return {"data": data_fingerprint(data), "base": base, "settings": json.loads(json.dumps(settings, default=str))}


def claim_run(out: Path, fingerprint: dict[str, Any], restart: bool = False) -> None:
    """Make ``out`` this run's: start over with ``restart``; else refuse if another run's record is there."""
    out = Path(out)
    if restart and out.exists():
        shutil.rmtree(out)
    path = out / FINGERPRINT
    if path.is_file():
        recorded = json.loads(path.read_text())
        differing = _differences(recorded, fingerprint)
        if differing:
            raise RunMismatch(f"{out} holds a run made with another {'; '.join(differing)}: rerun with --restart to "
                              "start over there, or give another output directory")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    if recorded.get("data") != current.get("data"):
        out.append(f"dataset (fingerprint {recorded.get('data')}, now {current.get('data')})")
    if recorded.get("base") != current.get("base"):
        out.append(f"base checkpoint ({recorded.get('base')}, now {current.get('base')})")
    old, new = recorded.get("settings", {}), current.get("settings", {})
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        out.append("settings (" + ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed) + ")")
    return out


def mark_finished(out: Path, model_version: str) -> None:
    """Record that the run in ``out`` has finished, having made ``model_version`` (``--restart`` removes it)."""
    (Path(out) / FINISHED).write_text(model_version + "\n")


def finished(out: Path) -> str | None:
    """The ``model_version`` a finished run in ``out`` made; None while it is unfinished or not started."""
    path = Path(out) / FINISHED
    return path.read_text().strip() if path.is_file() else None
