"""The sequence-model baseline (SASRec): it learns a sequential pattern, never trains past its horizon, resumes to
the same weights, and scores unknown items and empty histories as unknown (never a made-up value)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from trainer.config import SeqRecConfig
from trainer.data import UserSplit
from trainer.seqrec import SequenceModel, length_batches, train_seqrec, training_sequences

ITEMS = [str(i) for i in range(40)]
SMALL = {"hidden_size": 32, "layers": 1, "heads": 2, "inner_size": 64, "dropout": 0.0, "batch_tokens": 256,
         "lr": 5e-3}  # fmt: skip


def _chains(users: int, seed: int = 0) -> list[list[str]]:
    """Every user walks the catalogue in steps of one: after item k comes item k + 1."""
    rng = random.Random(seed)
    out = []
    for _ in range(users):
        start, length = rng.randrange(30), rng.randrange(4, 9)
        out.append([str(start + i) for i in range(length) if start + i < 40])
    return [s for s in out if len(s) >= 2]


def test_it_learns_what_comes_next(tmp_path):
    config = SeqRecConfig(epochs=8, **SMALL)
    summary = train_seqrec(ITEMS, _chains(300), tmp_path, config)
    assert summary["curve"][-1]["loss"] < 0.5 * summary["curve"][0]["loss"], summary["curve"]
    model = SequenceModel.load(tmp_path)
    histories = [["3", "4", "5"], ["20", "21"], ["10"]]
    candidates = [["30", "6", "12", "0"], ["22", "5", "35", "21"], ["2", "9", "11", "39"]]
    scored = model.score_batch(histories, candidates)
    for scores, row, wanted in zip(scored, candidates, ["6", "22", "11"], strict=True):
        assert max(scores) == scores[row.index(wanted)], (row, scores)


def test_unknown_items_and_empty_histories_score_minus_infinity(tmp_path):
    train_seqrec(ITEMS, _chains(50), tmp_path, SeqRecConfig(epochs=1, **SMALL))
    model = SequenceModel.load(tmp_path)
    known, unknown_history = model.score_batch([["1", "2"], ["not-an-item"]], [["3", "new-item"], ["3", "4"]])
    assert math.isfinite(known[0]) and known[1] == -math.inf
    assert unknown_history == [-math.inf, -math.inf]


def test_save_and_load_score_alike(tmp_path):
    summary = train_seqrec(ITEMS, _chains(50), tmp_path, SeqRecConfig(epochs=1, **SMALL), provenance={"data": "x"})
    loaded = SequenceModel.load(tmp_path)
    assert loaded.provenance["data"] == "x" and loaded.provenance["curve"] == summary["curve"]
    assert loaded.config == SeqRecConfig(epochs=1, **SMALL)
    again = SequenceModel.load(tmp_path)
    assert loaded.score_batch([["1", "2"]], [["3", "9"]]) == again.score_batch([["1", "2"]], [["3", "9"]])


def test_resume_gives_the_same_weights(tmp_path):
    """Dropout on: the random draws after a resume are those of the uninterrupted run."""
    sequences = _chains(120)
    config = {**SMALL, "dropout": 0.3}
    train_seqrec(ITEMS, sequences, tmp_path / "straight", SeqRecConfig(epochs=3, **config))
    train_seqrec(ITEMS, sequences, tmp_path / "resumed", SeqRecConfig(epochs=1, **config))  # interrupted after 1
    train_seqrec(ITEMS, sequences, tmp_path / "resumed", SeqRecConfig(epochs=3, **config))  # continues
    straight, resumed = SequenceModel.load(tmp_path / "straight"), SequenceModel.load(tmp_path / "resumed")
    for name, weight in straight.model.state_dict().items():
        assert torch.allclose(weight, resumed.model.state_dict()[name], atol=1e-6), name
    assert [row["epoch"] for row in resumed.provenance["curve"]] == [1, 2, 3]


def test_the_horizon_never_reaches_a_target():
    splits = [UserSplit("u", ["a", "b", "c"], "v", "t")]
    assert training_sequences(splits, "test") == [["a", "b", "c", "v"]]  # never the test target
    assert training_sequences(splits, "valid") == [["a", "b", "c"]]  # never the validation target either
    assert training_sequences(splits, "sft", held_out=1) == [["a", "b"]]
    assert training_sequences(splits, "all") == [["a", "b", "c", "v", "t"]]  # to serve: no report scores it


def test_length_batches_cover_every_sequence_once_within_the_budget():
    lengths = [random.Random(i).randrange(2, 50) for i in range(500)]
    batches = length_batches(lengths, 400, random.Random(0))
    assert sorted(i for batch in batches for i in batch) == list(range(500))
    assert all(max(lengths[i] for i in batch) * len(batch) <= 400 for batch in batches)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="horizon"):
        SeqRecConfig(horizon="future")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of heads"):
        SeqRecConfig(hidden_size=30, heads=4)
