"""The sequence-model baseline (SASRec): it learns a sequential pattern, never trains past its horizon, resumes to
the same weights, and scores unknown items and empty histories as unknown (never a made-up value)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from trainer.config import SeqRecConfig
from trainer.data import UserSplit
from trainer.fused_softmax import softmax_cross_entropy
from trainer.seqrec import SequenceModel, length_batches, sequence_loss, train_seqrec, training_sequences

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


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_fused_softmax_loss_and_gradients_equal_the_whole_logit_matrix(chunk):
    """The chunked loss the sequence models train with is the plain cross-entropy of every position's logits
    over every item, padding excluded, in value and in both gradients; chunks that do not divide the positions
    (7 of 50) and a chunk larger than them included."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=generator, requires_grad=True)
    weight = torch.randn(300, 16, generator=generator, requires_grad=True)
    targets = torch.randint(1, 300, (50,), generator=generator)

    logits = hidden @ weight.T
    plain = torch.nn.functional.cross_entropy(logits.masked_fill(torch.arange(300) == 0, -math.inf), targets)
    fused = softmax_cross_entropy(hidden, weight, targets, excluded=0, chunk=chunk)
    assert torch.allclose(fused, plain, rtol=1e-6, atol=1e-6)
    plain_grads = torch.autograd.grad(2.5 * plain, (hidden, weight))  # an upstream factor reaches both gradients
    fused_grads = torch.autograd.grad(2.5 * fused, (hidden, weight))
    for want, got in zip(plain_grads, fused_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    assert float(fused_grads[1][0].abs().max()) == 0.0  # the padding row gets no gradient from the output layer


def test_the_fused_sequence_loss_gives_every_parameter_the_plain_gradient():
    """SASRec's loss with the fused output layer against ``F.cross_entropy`` on the full logits, from the same
    weights and batch: the same loss and the same gradient for every parameter (the item embedding gets both its
    input and its output layer's share)."""
    config = SeqRecConfig(**SMALL)
    models = [SequenceModel(ITEMS, config) for _ in range(2)]
    models[1].model.load_state_dict(models[0].model.state_dict())
    ids = torch.tensor([[1, 2, 3, 4, 0], [7, 8, 9, 10, 11], [20, 21, 0, 0, 0]])
    losses = []
    for model, fused in zip(models, [True, False], strict=True):
        model.model.eval()  # no dropout draws, so the two forwards match
        loss = sequence_loss(model.model, ids, fused=fused)
        loss.backward()
        losses.append(float(loss))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    plain = dict(models[1].model.named_parameters())
    for name, parameter in models[0].model.named_parameters():
        assert torch.allclose(parameter.grad, plain[name].grad, rtol=1e-4, atol=1e-7), name
