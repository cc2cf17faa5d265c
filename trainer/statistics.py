"""The evidence statistics of a checkpoint, counted on training interactions only.

``init-model`` writes them beside the weights (``evidence.json.gz``, versioned in the manifest); every later
stage carries the same file forward (and the sequence model, ``sequence/``, from the stage that adds it), so a
model is always served with the statistics it was trained on.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from contract.evidence import EVIDENCE_FILE, EvidenceStats
from contract.sequence import SEQUENCE_DIR, SEQUENCE_META, SEQUENCE_WEIGHTS
from trainer.config import EvidenceConfig
from trainer.data import Catalogue, UserSplit

ATTRIBUTE_MIN_SHARE = 0.1  # an attribute evidence uses is on at least 10% of items...
ATTRIBUTE_MAX_VALUE_SHARE = 0.5  # ...and no value of it covers more than half of them


def evidence_attributes(catalogue: Catalogue) -> dict[str, dict[str, str]]:
    """The catalogue's attributes worth comparing: common enough to matter, varied enough to tell items apart."""
    names = Counter(name for attributes in catalogue.attributes.values() for name in attributes)
    kept = set()
    for name, items in names.items():
        values = Counter(a[name] for a in catalogue.attributes.values() if name in a)
        if (
            items >= ATTRIBUTE_MIN_SHARE * len(catalogue)
            and values.most_common(1)[0][1] <= ATTRIBUTE_MAX_VALUE_SHARE * items
        ):
            kept.add(name)
    return {item: {n: v for n, v in a.items() if n in kept} for item, a in catalogue.attributes.items()
            if any(n in kept for n in a)}  # fmt: skip


def build_stats(
    catalogue: Catalogue,
    splits: Sequence[UserSplit],
    config: EvidenceConfig,
    sequences: Sequence[Sequence[str]] | None = None,
) -> EvidenceStats:
    """Popularity, followers and co-purchases from the training prefixes (no validation or test item is counted),
    or from ``sequences`` (a refresh counts a sequence model's horizon: ``trainer.refresh``)."""
    counted = sequences if sequences is not None else [split.train for split in splits]
    return EvidenceStats.from_sequences(counted, catalogue.titles, config.window,
                                        config.max_followers, config.stopword_share,
                                        evidence_attributes(catalogue), config.co_bought)  # fmt: skip


def carry_stats(source_dir: Path, target_dir: Path) -> None:
    """A stage's output model keeps the statistics (and the sequence model) of the checkpoint it started from."""
    target_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(source_dir) / EVIDENCE_FILE, Path(target_dir) / EVIDENCE_FILE)
    if (Path(source_dir) / SEQUENCE_DIR).is_dir():
        ship_sequence_model(Path(source_dir) / SEQUENCE_DIR, target_dir)


def ship_sequence_model(seqrec_dir: Path, model_dir: Path) -> None:
    """Put a trained sequence model into a checkpoint (``sequence/``): its evidence then states the next-item rank."""
    target = Path(model_dir) / SEQUENCE_DIR
    if target.resolve() == Path(seqrec_dir).resolve():
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in (SEQUENCE_WEIGHTS, SEQUENCE_META):
        shutil.copy2(Path(seqrec_dir) / name, target / name)
