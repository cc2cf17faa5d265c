"""The next-item rank (``contract.sequence``): the NumPy forward pass the service runs agrees with the torch model
the trainer trains; the rank is the candidate's own (no other candidate moves it); unknown stays unknown; and
a checkpoint states it only when it ships the model it was trained with."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.catalogue import item_order
from contract.evidence import EvidenceStats, Item, compute_evidence_batch, unfaithful_citations
from contract.sequence import SEQUENCE_DIR
from trainer.config import SeqRecConfig
from trainer.seqrec import SequenceModel, train_seqrec

ITEMS = [f"i{n}" for n in range(40)]
SMALL = SeqRecConfig(hidden_size=16, layers=2, heads=2, inner_size=32, max_length=8, dropout=0.0, epochs=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small SASRec trained on a cyclic pattern (i -> i+1), saved as `r2rank-train seqrec` saves it."""
    rng = random.Random(0)
    sequences = []
    for _ in range(300):
        start = rng.randrange(len(ITEMS))
        sequences.append([ITEMS[(start + k) % len(ITEMS)] for k in range(rng.randint(3, 10))])
    out = tmp_path_factory.mktemp("seqrec")
    config = SeqRecConfig(**{**SMALL.__dict__, "epochs": 10, "batch_tokens": 64, "lr": 5e-3})
    train_seqrec(ITEMS, sequences, out, config)
    return out


def test_numpy_forward_equals_torch(trained):
    """The service's NumPy inference (GELU via an erf approximation) gives torch's logits, to float precision."""
    model = SequenceModel.load(trained)
    ranker = model.ranker()
    histories = [["i3", "i4", "i5"], ITEMS[:12], ["i7"]]
    torch_scores = model.score_batch(histories, [ITEMS] * len(histories))
    for history, expected in zip(histories, torch_scores, strict=True):
        assert np.allclose(ranker.scores(history, ITEMS), expected, atol=1e-4)
    with torch.no_grad():
        state = model.model(torch.tensor([model.encode(ITEMS[:12])]))[0, -1].numpy()
    assert np.allclose(ranker.state(model.encode(ITEMS[:12])), state, atol=1e-5)


def test_rank_is_the_candidates_own_and_learned(trained):
    ranker = SequenceModel.load(trained).ranker()
    history = ["i10", "i11", "i12"]
    alone = ranker.ranks(history, ["i13"])
    among = ranker.ranks(history, ["i30", "i13", "i2", "i31"])
    assert alone[0] == among[1] == ranker.ranks(history, list(reversed(["i30", "i13", "i2", "i31"])))[2]
    assert alone == [1]  # the pattern was learned: what follows i12 is its top pick
    # 1 + the items outside the history scored above it: never counts the history, never exceeds the rest
    logits = ranker.scores(history, ITEMS)
    for item, rank in zip(ITEMS, ranker.ranks(history, ITEMS), strict=True):
        above = sum(1 for other, s in zip(ITEMS, logits, strict=True)
                    if other not in history and other != item and s > logits[ITEMS.index(item)])  # fmt: skip
        assert rank == 1 + above


def test_unknown_candidates_and_histories_are_stated_unknown(trained):
    ranker = SequenceModel.load(trained).ranker()
    assert ranker.ranks(["i1", "i2"], ["never-seen", None, "i3"])[:2] == [None, None]
    assert ranker.ranks(["never-seen", None], ["i3", "i4"]) == [None, None]
    assert ranker.scores(["never-seen"], ["i3"]) == [-math.inf]
    stats = EvidenceStats.from_sequences([ITEMS[:5]], {i: f"Title {i}" for i in ITEMS})
    history = [Item("i1", "Title i1"), Item("i2", "Title i2")]
    candidates = [Item("i3", "Title i3"), Item("new", "A new item"), Item("i4", "doc", in_catalogue=False)]
    evidence = compute_evidence_batch(history, candidates, stats, sequence=ranker)
    assert evidence[0].text().startswith("next-item rank ") and evidence[0].next_item.rank is not None
    assert [e.next_item.rank for e in evidence[1:]] == [None, None]  # a rerank document's id is never looked up
    assert evidence[1].text().startswith("next-item rank unknown;")
    # without a sequence model the line is exactly v2's
    plain = compute_evidence_batch(history, candidates, stats)
    assert plain[0].next_item is None and plain[0].text() == evidence[0].text().split("; ", 1)[1]


def test_a_rationale_citing_another_rank_is_unfaithful(trained):
    line = "next-item rank 37; no links; popularity 4 (top 20%)"
    assert unfaithful_citations("Rank 37; no links: unlikely.", line) == []
    assert unfaithful_citations("Rank 3; no links: unlikely.", line) != []
    assert unfaithful_citations("Rank unknown; no links: unlikely.", line) != []
    assert unfaithful_citations("Rank unknown: unlikely.", "next-item rank unknown; no links") == []


def test_checkpoint_ships_states_and_versions_its_sequence_model(trained, tmp_path):
    """A checkpoint with ``sequence/`` is format v3 and states the rank; its model_version changes with the
    sequence model's bytes; a v3 manifest without the model, or a v2 one with it, is refused."""
    from contract import prompt
    from contract.checkpoint import CheckpointError, open_checkpoint, write_checkpoint_manifest
    from tests.toy_model import build_toy_model
    from trainer.statistics import ship_sequence_model

    titles = {i: f"Game {i}" for i in ITEMS}
    out = build_toy_model(tmp_path / "toy", list(titles.values()) * 20, vocab_size=512)
    EvidenceStats.from_sequences([ITEMS[:10]], titles).save(out)
    plain = write_checkpoint_manifest(out, "toy", {"stage": "test"})
    assert plain.prompt_format == prompt.PROMPT_FORMAT_V2 and plain.sequence_version is None
    ship_sequence_model(trained, out)
    shipped = write_checkpoint_manifest(out, "toy", {"stage": "test"})
    assert shipped.prompt_format == prompt.PROMPT_FORMAT_V3 and shipped.sequence_version
    assert shipped.model_version != plain.model_version  # the score cache can never mix them
    checkpoint = open_checkpoint(out)
    prompts = checkpoint.prompts.prompts([Item("i1", titles["i1"])], [Item("i2", titles["i2"])], "none")
    assert "Evidence: next-item rank " in prompts.segment_texts[0]
    shutil.rmtree(out / SEQUENCE_DIR)
    with pytest.raises(CheckpointError, match="needs a sequence model .* holds no sequence model"):
        open_checkpoint(out)
    ship_sequence_model(trained, out)
    (out / SEQUENCE_DIR / "seqrec.json").write_text((trained / "seqrec.json").read_text().replace('"i1"', '"x1"'))
    with pytest.raises(CheckpointError, match="sequence_version"):
        open_checkpoint(out)
    ship_sequence_model(trained, out)
    EvidenceStats.from_sequences([ITEMS[:10]], titles, co_bought=True).save(out)  # statistics for format v5
    v5 = write_checkpoint_manifest(out, "toy", {"stage": "test"})
    assert v5.prompt_format == prompt.PROMPT_FORMAT and v5.stats_version != shipped.stats_version
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "prompt_format": prompt.PROMPT_FORMAT_V3}))
    with pytest.raises(CheckpointError, match="without co-purchases; .* with co-purchases"):  # v3 never read them
        open_checkpoint(out)


def test_sft_positives_get_ranks_like_validation_positives_and_a_leaky_model_would_not(tmp_path):
    """No leak, no skew: SFT positives (the last training position), ranked by a model trained as `make
    seqrec-ranker` trains the examples' one (horizon sft), land in the sequence model's top 100 about as often
    as validation positives ranked by the shipped one (horizon valid, started from it); ranked by the shipped
    model, which trained on them, they would land there far more often. The models are small and trained to
    memorise (no dropout, many epochs over 2,000 users), so a leak shows plainly."""
    from trainer.data import DEFAULT_DATA, load_splits
    from trainer.seqrec import training_sequences

    catalogue, splits = load_splits(DEFAULT_DATA)
    users = random.Random(0).sample([s for s in splits if len(s.train) >= 3], 2000)
    items = item_order(catalogue.titles)
    config = SeqRecConfig(horizon="sft", held_out=2, epochs=12, dropout=0.0, lr=3e-3)
    train_seqrec(items, training_sequences(users, "sft", 2), tmp_path / "sft", config)
    examples = SequenceModel.load(tmp_path / "sft")
    shipped_config = SeqRecConfig(**{**config.__dict__, "horizon": "valid", "epochs": 4})
    train_seqrec(items, training_sequences(users, "valid"), tmp_path / "valid", shipped_config, init=examples)
    shipped = SequenceModel.load(tmp_path / "valid").ranker()

    def top100(ranker, pairs) -> float:
        ranks = [ranker.ranks(history, [target])[0] for history, target in pairs]
        return sum(r is not None and r <= 100 for r in ranks) / len(ranks)

    sft_positives = [(s.train[:-1], s.train[-1]) for s in users[:1500]]
    shares = {
        "sft positives, examples' model": top100(examples.ranker(), sft_positives),
        "validation positives, shipped model": top100(shipped, [(s.train, s.valid_target) for s in users[:1500]]),
        "sft positives, shipped model (leak)": top100(shipped, sft_positives),
    }
    print("share of positives in the sequence model's top 100:", {k: round(v, 3) for k, v in shares.items()})
    assert abs(shares["sft positives, examples' model"] - shares["validation positives, shipped model"]) < 0.04
    assert shares["sft positives, shipped model (leak)"] > shares["validation positives, shipped model"] + 0.2


def test_top_items_are_its_best_scored_outside_the_history_and_exclusions(trained):
    ranker = SequenceModel.load(trained).ranker()
    history = ["i10", "i11", "i12"]
    top = ranker.top_items(history, 5, exclude={"i14"})
    logits = dict(zip(ITEMS, ranker.scores(history, ITEMS), strict=True))
    allowed = sorted((i for i in ITEMS if i not in {*history, "i14"}), key=lambda i: -logits[i])
    assert top == allowed[:5] and top[0] == "i13"  # best first: the learned next item leads
    assert len(ranker.top_items(history, 1000)) == len(ITEMS) - len(history)  # never more than there are
    assert ranker.top_items(["never-seen"], 5) == []  # no judgement without a known item


def test_sft_hard_negatives_come_from_the_sequence_models_top_items_and_never_the_users(trained):
    """A hard negative is one of the examples' sequence model's top ``hard_pool`` items after the history, never
    the target or another item of the user's; without a sequence model SFT refuses to make them up."""
    from trainer.config import SFTConfig
    from trainer.data import DataError
    from trainer.sft import build_examples
    from trainer.teacher import Retrieval

    ranker = SequenceModel.load(trained).ranker()
    retrieval = Retrieval(ranker, pool=4)
    history, target = ["i10", "i11", "i12"], "i13"
    pool = ranker.top_items(history, 4, {target})
    drawn = [retrieval.negatives(random.Random(seed), history, {*history, target}, 2) for seed in range(30)]
    assert all(len(d) == 2 and len(set(d)) == 2 and set(d) <= set(pool) for d in drawn)
    assert {i for d in drawn for i in d} == set(pool)  # drawn across the pool, not always its head
    assert Retrieval(ranker).negatives(random.Random(0), ["never-seen"], {target}, 3) == []  # nothing to draw from
    hit = retrieval.hit_negatives(random.Random(0), history, target, {*history, target}, 3)
    assert hit is not None and target not in hit and set(hit) <= set(ranker.top_items(history, 4))
    assert retrieval.hit_negatives(random.Random(0), history, "i30", {*history, "i30"}, 3) is None  # not a hit
    for config in (SFTConfig(negatives=3, hard_negatives=2, hard_pool=4), SFTConfig(retrieval_share=0.3)):
        with pytest.raises(DataError, match="sequence model"):
            build_examples(None, None, [], None, config, sequence=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hard_negatives"):
        SFTConfig(negatives=3, hard_negatives=4)
    with pytest.raises(ValueError, match="retrieval_share"):
        SFTConfig(retrieval_share=1.5)


def test_sft_retrieved_examples_are_hits_beside_their_catalogue_example_and_have_their_own_verdicts(trained, tmp_path):
    """``--retrieval-share``: positions whose positive is among the examples' sequence model's top items (a
    retriever's list that found it) get a retrieved-candidates example beside their catalogue one. Its prompt
    carries the line that says so (the catalogue one's is unchanged), all its negatives are from the same top
    items, and its soft labels come from the teacher's verdict model for retrieved candidates; every position keeps
    its catalogue example, so what a good rank is worth there does not change. The teacher's second model is fitted
    on such hits too."""
    from contract import prompt
    from contract.checkpoint import open_checkpoint, write_checkpoint_manifest
    from tests.toy_model import build_toy_model
    from trainer.config import SFTConfig
    from trainer.data import Catalogue, UserSplit
    from trainer.sft import build_examples
    from trainer.statistics import ship_sequence_model
    from trainer.teacher import BuiltinTeacher, EvidenceModel, Retrieval, calibration_pairs

    titles = {i: f"Game {i}" for i in ITEMS}
    out = build_toy_model(tmp_path / "toy", list(titles.values()) * 20, vocab_size=512)
    EvidenceStats.from_sequences([ITEMS[:10]], titles).save(out)
    ship_sequence_model(trained, out)
    write_checkpoint_manifest(out, "toy", {"stage": "test"}, candidate_sources=("catalogue", "retrieval"))
    checkpoint = open_checkpoint(out)
    assert checkpoint.manifest.candidate_sources == ["catalogue", "retrieval"]
    ranker = checkpoint.sequence
    catalogue = Catalogue(titles)
    users = [UserSplit(f"u{n}", [ITEMS[(n + k) % 40] for k in range(4)], ITEMS[(n + 4) % 40], ITEMS[(n + 5) % 40])
             for n in range(40)]  # fmt: skip
    unlikely, likely = EvidenceModel(bias=-5.0), EvidenceModel(bias=5.0)
    config = SFTConfig(negatives=3, hard_pool=4, retrieval_share=0.5, targets_per_user=1, none_fraction=0.0)
    examples = build_examples(checkpoint, catalogue, users, BuiltinTeacher(unlikely, likely), config, ranker)
    decode = checkpoint.encoder.decode
    titled = {title: i for i, title in titles.items()}
    seen: dict[str, list[tuple[str, ...]]] = {"catalogue": [], "retrieval": []}
    for example in examples:
        prefix = decode(example.prefix)
        retrieved = prefix.endswith(prompt.RETRIEVAL_LINE)
        history = tuple(titled[line.split(" ", 1)[1]] for line in prefix.splitlines() if line.startswith("#"))
        shown = [titled[decode(ids).split("Candidate: ", 1)[1].split("\n", 1)[0]] for ids, _ in example.rows]
        positive, negatives = shown[0], shown[1:]  # the positive row is the first (shuffled only across examples)
        positive_share = example.answers[0].share
        seen["retrieval" if retrieved else "catalogue"].append((*history, positive))
        if retrieved:
            user = next(u for u in users if tuple(u.train[:-1]) == history)
            top = ranker.top_items(list(history), 4, {*user.train[:-1], user.valid_target, user.test_target})
            assert positive in top and set(negatives) <= set(top) - {positive}
            assert positive_share == pytest.approx(0.5 + 0.5 / (1 + math.exp(-5.0)))
        else:
            assert prompt.RETRIEVAL_LINE.strip() not in prefix
            assert positive_share == pytest.approx(0.5 + 0.5 / (1 + math.exp(5.0)))
    assert len(seen["catalogue"]) == len(users)  # every position keeps its catalogue example
    assert 5 < len(seen["retrieval"]) < len(users), {k: len(v) for k, v in seen.items()}
    assert set(seen["retrieval"]) <= set(seen["catalogue"])  # beside, not instead
    pairs = calibration_pairs(users, catalogue, 40, negatives=3, retrieval=Retrieval(ranker, 4))
    assert pairs and sum(pair.label for pair in pairs) * 4 == len(pairs)
    # as many hits as asked for fit the second verdict model; one fewer and there is none (trained on catalogue only)
    hits = len(pairs) // 4
    for min_hits, fitted in ((hits, True), (hits + 1, False)):
        teacher = BuiltinTeacher.calibrated(users, catalogue, checkpoint.stats, 40, sequence=ranker,
                                            retrieval=Retrieval(ranker, 4), min_hits=min_hits)  # fmt: skip
        assert (teacher.retrieval_model is not None) == fitted, (min_hits, hits)
    for pair in pairs:
        split = pair.split
        top = ranker.top_items(pair.history, 4, {*split.train[:-1], split.valid_target, split.test_target})
        assert pair.candidate in top and split.train[-1] in top


def test_eval_cases_can_take_a_sequence_models_top_items_as_negatives(trained):
    """``eval --retriever-model``: each case's negatives are the model's top items after the history of the
    split's position, never the user's own items, so any catalogue gets SASRec-hard negatives."""
    from trainer.data import Catalogue, UserSplit
    from trainer.evaluation.cases import SequenceModelLists, build_cases

    ranker = SequenceModel.load(trained).ranker()
    catalogue = Catalogue({i: f"Title {i}" for i in ITEMS})
    users = [UserSplit(f"u{n}", [ITEMS[n], ITEMS[n + 1]], ITEMS[n + 2], ITEMS[n + 3]) for n in range(20)]
    lists = SequenceModelLists(ranker, users, "test", count=4)
    cases = build_cases(users, catalogue, users=20, negatives=4, seed=0, retriever=lists, split="test")
    assert len(cases) == 20
    for case in cases:
        user = lists.users[case.user_id]
        own = {*user.train, user.valid_target, user.test_target}
        assert case.target == user.test_target and case.candidates[0] == user.test_target
        assert case.candidates[1:] == ranker.top_items(user.test_history, 4, own)
        assert not own & set(case.candidates[1:])
