"""Refresh a checkpoint's collaborative state: the same LLM, reading statistics and a sequence model that have
seen later interactions.

The LLM learns how to read its evidence (links, popularity, the sequence model's next-item rank); what the
evidence says about a user's next item comes from the statistics and the SASRec shipped beside the weights.
Those go stale as interactions arrive, while the LLM does not need retraining to read fresher ones: SFT taught it
on ranks from a model trained up to just before each user's SFT targets, so a model that has seen everything
before the request is what it was trained to read, and a stale one is not. ``refresh`` writes a new checkpoint (a new
``model_version``, so no score-cache entry carries over) with the same weights and tokenizer, the given
sequence model, and statistics recounted on exactly the positions that model trained on (its horizon).

A refreshed checkpoint has seen what its horizon has seen: one refreshed to ``test`` has the validation targets
in its statistics and its SASRec, so the selection split and RL (both at validation positions) refuse it
(``refuse_seen_targets``) and only the test report scores it, as it scores the report's SASRec; one refreshed to
``all`` (every interaction: what a product serves) has seen every target, and no report scores it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from contract.checkpoint import (
    REFRESH_PROVENANCE,
    Checkpoint,
    Manifest,
    open_checkpoint,
    write_checkpoint_manifest,
)
from contract.sequence import SEQUENCE_META, SequenceRanker
from trainer.config import EvidenceConfig
from trainer.data import Catalogue, UserSplit
from trainer.export import replace_with_staged, stage_llm_files
from trainer.seqrec import training_sequences
from trainer.statistics import build_stats, ship_sequence_model


def last_measured(base: Manifest) -> dict:
    """The last report's metrics for these weights and which checkpoint it measured: ``base``'s own, or those its
    refresh record carries. The service's gate holds the next publish to them while a refresh no report can
    score is serving."""
    if base.metrics:
        return {"measured_model_version": base.model_version, "measured_metrics": base.metrics}
    earlier = base.provenance.get(REFRESH_PROVENANCE) or {}
    return {key: earlier[key] for key in ("measured_model_version", "measured_metrics") if key in earlier}


class RefreshError(ValueError):
    """The sequence model cannot be paired with this checkpoint or data; the message names the option."""


SEEN_TARGETS = {"test": ("validation",), "all": ("validation", "test")}  # by horizon: whose targets it counted


def refuse_seen_targets(checkpoint: Checkpoint, targets: str, use: str) -> None:
    """Refuse a checkpoint whose evidence has seen the ``targets`` ("validation" or "test") that ``use`` scores or
    trains on."""
    horizon = checkpoint.evidence_horizon
    if horizon is not None and targets in SEEN_TARGETS.get(horizon, ()):
        raise RefreshError(f"{checkpoint.path}: refreshed to horizon {horizon!r} (its statistics and sequence model "
                           f"have seen the {targets} targets), so it cannot be used for {use}; use the checkpoint it "
                           "was refreshed from")  # fmt: skip


def _check_pairing(base: Checkpoint, sequence_dir: Path, data_fingerprint: str) -> None:
    if base.sequence is None:
        raise RefreshError(f"--model {base.path}: its evidence states no next-item rank (prompt format "
                           f"{base.manifest.prompt_format}); only a checkpoint trained with a sequence model "
                           "can read a refreshed one")  # fmt: skip
    meta = json.loads((sequence_dir / SEQUENCE_META).read_text()).get("provenance", {})
    if meta.get("data_fingerprint") not in (None, data_fingerprint):
        raise RefreshError(f"--sequence-model {sequence_dir}: trained on data {meta['data_fingerprint']}, not "
                           f"--data ({data_fingerprint})")  # fmt: skip


def refresh_checkpoint(
    model: Path,
    sequence_dir: Path,
    catalogue: Catalogue,
    splits: Sequence[UserSplit],
    out: Path,
    data_fingerprint: str,
    command: str,
) -> Manifest:
    """Write ``out``: ``model``'s weights and tokenizer with the sequence model in ``sequence_dir`` and statistics
    recounted at its horizon. ``out`` is replaced whole, never left half-written."""
    base = open_checkpoint(model)
    if not SequenceRanker.exists(sequence_dir):
        raise RefreshError(f"--sequence-model {sequence_dir}: no sequence model there (r2rank-train seqrec)")
    sequence = SequenceRanker.load(sequence_dir)
    _check_pairing(base, sequence_dir, data_fingerprint)
    horizon, held_out = str(sequence.config["horizon"]), int(sequence.config.get("held_out", 0))
    evidence = EvidenceConfig(
        window=base.stats.window, max_followers=base.stats.max_followers, co_bought=base.stats.has_co_bought
    )  # its format's fields, no more
    stats = build_stats(catalogue, splits, evidence, training_sequences(splits, horizon, held_out))
    same_items = stats.item_ids == base.stats.item_ids  # a grown catalogue changes title statistics by itself
    if same_items and (stats.stopwords != base.stats.stopwords or stats.attributes != base.stats.attributes):
        raise RefreshError(f"--model {model}: its statistics were built with other title or attribute options than "
                           "the defaults; recounting them would change more than the interactions")  # fmt: skip
    staging = stage_llm_files(model, out)
    stats.save(staging)
    ship_sequence_model(sequence_dir, staging)
    provenance = {
        **base.manifest.provenance,
        REFRESH_PROVENANCE: {
            "from": str(model),
            "from_model_version": base.model_version,
            "llm_model_version": base.manifest.weights_version,
            **last_measured(base.manifest),
            "sequence_model": str(sequence_dir),
            "data_fingerprint": data_fingerprint,
            "horizon": horizon,
            "held_out": held_out if horizon == "sft" else 0,
            "statistics": {"stats_version": stats.version, "follower_pairs": len(stats.followers)},
            "command": command,
        },
    }
    name = base.model_version.rsplit("-", 1)[0]
    manifest = write_checkpoint_manifest(staging, name, provenance, **base.manifest.copy_settings())
    replace_with_staged(staging, out)
    return manifest
