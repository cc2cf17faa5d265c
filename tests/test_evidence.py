"""Evidence: computed by one contract function from training counts, without a training example's own future,
rendered in the prompt, cited faithfully by the teacher, and checked by the faithfulness test."""

from __future__ import annotations

import random

import pytest

from contract.evidence import (
    EvidenceStats,
    Item,
    LeaveOut,
    compute_evidence,
    follow_pairs,
    unfaithful_citations,
    unstated_claims,
)
from trainer.data import DEFAULT_DATA, load_splits, sample_negatives
from trainer.teacher import BuiltinTeacher, EvidenceModel

TITLES = {
    "a": "Zelda Breath of the Wild",
    "b": "Mario Kart 8",
    "c": "Zelda Link's Awakening",
    "d": "Halo 3",
    "e": "Tetris",
    "f": "Kart Racer Deluxe",
}
SEQUENCES = [["a", "b", "c"], ["a", "c"], ["b", "c", "d"], ["d", "e"], ["a", "b", "c", "e"]]


@pytest.fixture(scope="module")
def stats() -> EvidenceStats:
    return EvidenceStats.from_sequences(
        SEQUENCES, TITLES, window=2, max_followers=8, stopword_share=0.5, co_bought=True
    )


def item(i: str) -> Item:
    return Item(i, TITLES[i])


def test_links_count_what_followed_each_recent_item(stats):
    # "c" followed "a" within 2 steps in 3 sequences and "b" in 3; the history's latest item is #1
    evidence = compute_evidence([item("a"), item("b")], item("c"), stats)
    assert [(link.ref, link.item_id, link.count) for link in evidence.links] == [(1, "b", 3), (2, "a", 3)]
    assert evidence.popularity == 4 and evidence.popularity_top_percent == 20  # the most popular of 5 items
    assert evidence.shared_word is not None and evidence.shared_word.word == "zelda"  # with "a" (#2)
    assert evidence.shared_word.ref == 2
    assert evidence.co_bought == 3 + 3  # users with a and c: 3; with b and c: 3
    assert evidence.text() == 'follows #1 3x, #2 3x; co-bought 6x; popularity 4 (top 20%); shares "zelda" with #2'


def test_unseen_items_and_no_links(stats):
    evidence = compute_evidence([item("e")], item("f"), stats)  # "f" never interacted with
    assert evidence.links == () and evidence.popularity_top_percent is None
    assert evidence.text() == "no links; co-bought 0x; popularity 0 (new)"


def test_items_outside_the_catalogue_are_never_looked_up_by_id(stats):
    """A rerank document's id is its position: "c" as an outside item is a new item with c's title, and an
    outside history item lends no links (its title still shares words, which depend on text alone)."""
    outside = Item("c", TITLES["c"], in_catalogue=False)
    evidence = compute_evidence([item("a"), item("b")], outside, stats)
    assert evidence.text() == 'no links; co-bought 0x; popularity 0 (new); shares "zelda" with #2'
    linked = compute_evidence([item("a"), Item("b", TITLES["b"], in_catalogue=False)], item("c"), stats)
    assert [(link.ref, link.item_id) for link in linked.links] == [(2, "a")]


def test_older_items_are_summed_past_the_recent_refs():
    sequences = [["x", *[f"h{i}" for i in range(6)], "y"]] * 2 + [["x", "y"]]
    titles = {k: k for k in ["x", "y", *[f"h{i}" for i in range(6)]]}
    stats = EvidenceStats.from_sequences(sequences, titles, window=10, max_followers=8)
    history = [Item(k, k) for k in ["x", "h0", "h1", "h2", "h3", "h4", "h5"]]  # x is #7: older than #5
    evidence = compute_evidence(history, Item("y", "y"), stats)
    assert [link.ref for link in evidence.links] == [1, 2, 3, 4, 5] and evidence.older_links == 3 + 2  # x: 3, h0: 2


def test_leave_out_subtracts_the_users_own_sequence(stats):
    own = LeaveOut.of_sequence(SEQUENCES[0], stats.window)  # a -> b -> c
    evidence = compute_evidence([item("a"), item("b")], item("c"), stats, own)
    assert [(link.ref, link.count) for link in evidence.links] == [(1, 2), (2, 2)]
    assert evidence.popularity == 3 and evidence.co_bought == 2 + 2  # the user had a, b and c
    negative = compute_evidence([item("a"), item("b")], item("d"), stats, own)  # d is not in the user's sequence
    assert negative.co_bought == compute_evidence([item("a"), item("b")], item("d"), stats).co_bought == 1
    assert follow_pairs(["a", "b", "c"], 2) == {("a", "b"): 1, ("a", "c"): 1, ("b", "c"): 1}


def test_pruning_keeps_the_top_followers(stats):
    pruned = EvidenceStats.from_sequences(SEQUENCES, TITLES, window=2, max_followers=1)
    assert pruned.follow_count("a", "c") == 3 and pruned.follow_count("a", "b") == 0  # a's top follower kept
    assert stats.follow_count("a", "b") == 2


def test_artifact_round_trip_and_version(tmp_path, stats):
    stats.save(tmp_path)
    loaded = EvidenceStats.load(tmp_path)
    assert loaded.version == stats.version and loaded.follow_count("b", "c") == 3
    assert loaded.co_bought_counts(["a", "b"], ["c", "d", "a"]).tolist() == [[3, 0, 0], [3, 1, 2]]
    other = EvidenceStats.from_sequences(SEQUENCES[:2], TITLES)
    assert other.version != stats.version  # other counts, another version (it keys the score cache)


def test_co_purchases_count_users_per_pair_of_distinct_items_across_whole_sequences():
    """Unlike links, co-purchases ignore order and distance: a user with x early and y much later counts once,
    a user who had x twice counts once, and a history item repeated in the prompt is summed once."""
    titles = {k: k for k in ["x", "y", "z", *[f"h{i}" for i in range(8)]]}
    sequences = [["x", *[f"h{i}" for i in range(8)], "y"], ["y", "x", "x"], ["z", "y"]]
    stats = EvidenceStats.from_sequences(sequences, titles, window=1, co_bought=True)
    assert stats.follow_count("x", "y") == 0 and stats.co_bought_counts(["x"], ["y"]).tolist() == [[2]]
    evidence = compute_evidence([Item("x", "x"), Item("z", "z"), Item("x", "x")], Item("y", "y"), stats)
    assert evidence.co_bought == 2 + 1 and "co-bought 3x" in evidence.text()


def test_statistics_without_co_purchases_keep_the_v3_line(stats):
    """A v3 checkpoint's statistics count no co-purchases: its evidence line is v3's, byte for byte, and they
    have their own version."""
    v3 = EvidenceStats.from_sequences(SEQUENCES, TITLES, window=2, max_followers=8, stopword_share=0.5)
    evidence = compute_evidence([item("a"), item("b")], item("c"), v3)
    assert evidence.co_bought is None and not v3.has_co_bought and v3.version != stats.version
    assert evidence.text() == 'follows #1 3x, #2 3x; popularity 4 (top 20%); shares "zelda" with #2'


def test_faithfulness_check_finds_unstated_citations(stats):
    evidence = compute_evidence([item("a"), item("b")], item("c"), stats)
    text = evidence.text()
    assert unfaithful_citations("Strong link: follows #1 3x; top 20% popular: likely.", text) == []
    assert unfaithful_citations("Follows #3 3x: likely.", text) == ["#3 3x", "#3"]  # #3 is not in the evidence
    assert unfaithful_citations("Follows #1 14x: likely.", text) == ["#1 14x", "14"]  # 14 is not a number it states
    # each number stated somewhere on the line, but not this claim: #2 followed 3 times, not 4 (stated: #1 3x, 4)
    assert unfaithful_citations("Weak link: follows #2 4x; top 20% popular: likely.", text) == ["#2 4x"]
    assert unfaithful_citations('Shares "zelda" with #1: likely.', text) == ['"zelda" with #1']  # it is #2's word
    # the word by its item only (TeacherConfig.shared_word "ref"): the item must be the one the line names
    assert unstated_claims("Shares a word with #2: likely.", text) == []
    assert unstated_claims("Shares a word with #1: likely.", text) == [("shared word", "Shares a word with #1")]
    assert unfaithful_citations("Co-bought 6x: likely.", text) == []
    assert unfaithful_citations("Co-bought 3x: likely.", text) == ["Co-bought 3x"]  # 3 is stated, as a link
    assert unstated_claims("Follows #3 3x; top 5% popular: likely.", text) == [
        ("link count", "#3 3x"), ("popularity", "top 5%"), ("history item", "#3"), ("number", "5")]  # fmt: skip
    assert unstated_claims("Next-item rank 7; co-bought 9x.", text) == [
        ("next-item rank", "rank 7"), ("co-purchases", "co-bought 9x"), ("number", "7"), ("number", "9")]  # fmt: skip


def test_teacher_rationales_cite_only_their_evidence():
    """Every built-in rationale is faithful, on real evidence of many pairs (co-purchases stated)."""
    catalogue, splits = load_splits(DEFAULT_DATA)
    stats = EvidenceStats.from_sequences((s.train for s in splits), catalogue.titles, co_bought=True)
    rng = random.Random(0)
    teachers = [BuiltinTeacher(EvidenceModel([1.0] * 5 + [0.5, 0.3, 0.5, 0.5, 0.5], -3.0), shared_word=clause)
                for clause in ("quote", "ref")]  # fmt: skip
    items, checked = sorted(catalogue.titles), 0
    for split in rng.sample(splits, 300):
        history = [Item(i, catalogue.title(i)) for i in split.test_history]
        for candidate in [split.test_target, *sample_negatives(rng, items, set(split.test_history), 4)]:
            evidence = compute_evidence(history, Item(candidate, catalogue.title(candidate)), stats)
            for teacher in teachers:
                rationale = teacher.rationale(evidence)
                assert unfaithful_citations(rationale, evidence.text()) == [], (rationale, evidence.text())
                checked += 1
    assert checked == 3000


def test_sft_positives_carry_links_as_often_as_validation_positives():
    """No skew: with the user's own sequence left out, the share of SFT positives (last training position) that
    carry a co-occurrence link, or any co-purchase, is within a few points of the validation positives' share;
    counting the user's own sequence, as the statistics did before, makes it every one of them. Co-purchases sum
    over the whole history, so the validation positive is read after as many history items as the SFT positive
    (its latest n - 1: with all n it carries one 4.5 points more often, 0.707 against 0.662)."""
    catalogue, splits = load_splits(DEFAULT_DATA)
    stats = EvidenceStats.from_sequences((s.train for s in splits), catalogue.titles, co_bought=True)
    rng = random.Random(1)
    shares = {"validation": [], "sft": [], "sft, own user counted": []}
    co_bought = {"validation": [], "sft": [], "sft, own user counted": []}
    for split in rng.sample([s for s in splits if len(s.train) >= 3], 3000):
        title = lambda i: Item(i, catalogue.title(i))  # noqa: E731
        valid = compute_evidence([title(i) for i in split.train], title(split.valid_target), stats)
        history, positive = [title(i) for i in split.train[:-1]], title(split.train[-1])
        own = LeaveOut.of_sequence(split.train, stats.window)
        shares["validation"].append(bool(valid.links or valid.older_links))
        left_out = compute_evidence(history, positive, stats, own)
        shares["sft"].append(bool(left_out.links or left_out.older_links))
        counted = compute_evidence(history, positive, stats)
        shares["sft, own user counted"].append(bool(counted.links or counted.older_links))
        same_length = compute_evidence([title(i) for i in split.train[1:]], title(split.valid_target), stats)
        for name, evidence in (
            ("validation", same_length),
            ("sft", left_out),
            ("sft, own user counted", counted),
        ):
            co_bought[name].append(evidence.co_bought > 0)
    for field, found in (("co-occurrence link", shares), ("co-purchase", co_bought)):
        mean = {k: sum(v) / len(v) for k, v in found.items()}
        print(f"{field} share of positives:", {k: round(v, 3) for k, v in mean.items()})
        assert abs(mean["sft"] - mean["validation"]) < 0.04, (field, mean)
        assert mean["sft, own user counted"] > 0.99, (field, mean)  # the skew the leave-out removes


def test_pretraining_never_reads_a_position_sft_targets(tmp_path):
    """LM pre-training renders each training prefix without its last ``holdout_last`` items: SFT's targets."""
    from contract.checkpoint import open_checkpoint, write_checkpoint_manifest
    from tests.toy_model import build_toy_model
    from trainer.data import Catalogue, UserSplit
    from trainer.pretrain import lm_sequences

    out = build_toy_model(tmp_path / "toy", list(TITLES.values()) * 20, vocab_size=512)
    write_checkpoint_manifest(out, "toy", {"stage": "test"})
    checkpoint = open_checkpoint(out)
    splits = [UserSplit("u", ["a", "b", "c", "d"], "e", "f"), UserSplit("v", ["a", "b"], "c", "d")]
    sequences = lm_sequences(checkpoint, Catalogue(dict(TITLES)), splits, holdout_last=2)
    assert sequences == [checkpoint.prompts.history_prefix([item("a"), item("b")]).ids]  # v has nothing left


def test_batched_lookups_equal_one_pair_at_a_time():
    """The vectorised follow counts (what the service computes per request) equal the one-pair binary search."""
    catalogue, splits = load_splits(DEFAULT_DATA)
    stats = EvidenceStats.from_sequences((s.train for s in splits[:5000]), catalogue.titles, max_followers=16)
    rng = random.Random(2)
    items = sorted(catalogue.titles)
    for split in rng.sample(splits[:5000], 50):
        history = split.test_history[-20:]
        candidates = [split.test_target, *sample_negatives(rng, items, set(history), 19), "never-seen-id"]
        matrix = stats.follow_counts([*history, "never-seen-id"], candidates)
        for r, previous in enumerate([*history, "never-seen-id"]):
            assert [stats.follow_count(previous, c) for c in candidates] == matrix[r].tolist()
