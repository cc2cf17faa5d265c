"""`r2rank-train check-data`: every problem of a catalogue with its file and line, and what the recipe gets; every
stage sized to a small catalogue by the recipe's own defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract.checkpoint import open_checkpoint
from loadtest.procs import REPO_ROOT
from tests.trainer_cli import train
from trainer.check_data import check_dataset
from trainer.data import parse_timestamp


def _write(directory: Path) -> None:
    items = [{"item_id": f"i{i}", "title": f"Item {i}", "brand": f"b{i % 3}"} for i in range(30)]
    lines = [json.dumps(row) for row in items]
    lines += [json.dumps({"item_id": "i1", "title": "again"}), '{"item_id": "x"', json.dumps({"item_id": "y"})]
    (directory / "items.jsonl").write_text("\n".join(lines) + "\n")
    events = [{"user_id": f"u{u}", "item_id": f"i{(u + k) % 30}", "timestamp": 1000 + k}
              for u in range(50) for k in range(5)]  # fmt: skip
    events += [{"user_id": "u1", "item_id": "nope", "timestamp": 1},
               {"user_id": "u2", "item_id": "i3", "timestamp": "2018-03-04T10:00:00"},
               {"user_id": "u3", "item_id": "i3", "timestamp": "yesterday"},
               {"user_id": "u4", "item_id": "i4"},
               {"user_id": "short", "item_id": "i3", "timestamp": 5}]  # fmt: skip
    (directory / "interactions.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")


def test_every_problem_is_reported_with_its_line(tmp_path):
    _write(tmp_path)
    report = check_dataset(tmp_path)
    found = {(p.severity, p.kind, p.where) for p in report.problems}
    assert {("error", "invalid JSON", "items.jsonl:32"), ("error", "missing field", "items.jsonl:33"),
            ("warning", "duplicate item id", "items.jsonl:31"), ("error", "unknown item", "interactions.jsonl:251"),
            ("warning", "timestamp without a zone", "interactions.jsonl:252"),
            ("error", "bad timestamp", "interactions.jsonl:253"), ("error", "missing field", "interactions.jsonl:254"),
            ("warning", "too few interactions", "interactions.jsonl")} <= found  # fmt: skip
    assert (
        report.figures["users that split leave-one-out"] == 50 and report.figures["items with attribute 'brand'"] == 30
    )
    assert report.figures["SFT users (recipe)"] > 0 and report.figures["teacher calibration users (recipe)"] > 0
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "check-data", str(tmp_path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and "items.jsonl:32" in result.stdout and "5 errors" in result.stdout


def test_a_clean_catalogue_is_ready(tmp_path):
    items = [{"item_id": f"i{i}", "title": f"Item {i}"} for i in range(30)]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for row in items))
    events = [{"user_id": f"u{u}", "item_id": f"i{(u + k) % 30}", "timestamp": f"2020-01-0{k + 1}T00:00:00Z"}
              for u in range(50) for k in range(4)]  # fmt: skip
    (tmp_path / "interactions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in events))
    report = check_dataset(tmp_path)
    assert report.problems == [] and report.render().endswith("ready to train (0 warnings)")


def test_a_timestamp_without_a_zone_is_utc_on_every_machine():
    assert parse_timestamp("2018-03-04T10:00:00") == parse_timestamp("2018-03-04T10:00:00Z") == 1520157600.0
    assert parse_timestamp("2018-03-04") == 1520121600.0 and parse_timestamp(1520121600) == 1520121600.0


def _generated(directory: Path, users: int, items: int = 400) -> Path:
    """A catalogue of ``users`` users with 4-8 interactions each (a seeded mix of popular and random items)."""
    import random

    rng = random.Random(users)
    (directory / "items.jsonl").write_text("".join(json.dumps({"item_id": f"i{i}", "title": f"Item number {i}"}) + "\n"
                                                   for i in range(items)))  # fmt: skip
    rows = [{"user_id": f"u{u}", "item_id": f"i{int(rng.paretovariate(1.2)) % items}", "timestamp": 1_600_000_000 + k}
            for u in range(users) for k in range(rng.randint(4, 8))]  # fmt: skip
    (directory / "interactions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


@pytest.mark.parametrize("users", [2000, 300])
def test_every_stage_finds_users_of_its_own_on_a_small_catalogue_with_the_default_options(tmp_path, users):
    """The recipe's user counts are caps: on a catalogue smaller than they ask for, selection, SFT, the teacher's
    calibration and RL each still get users, and the pools that must be apart are."""
    from trainer.config import RLConfig, SFTConfig, TeacherConfig
    from trainer.data import load_splits, selection_users
    from trainer.evaluation.cases import build_cases
    from trainer.rl import rl_cases
    from trainer.sft import sft_users
    from trainer.teacher import calibration_pool

    catalogue, splits = load_splits(_generated(tmp_path, users))
    selection = {s.user_id for s in selection_users(splits)}
    sft = {s.user_id for s in sft_users(splits, SFTConfig(), reserve=TeacherConfig().calibration_users)}
    calibration = {s.user_id for s in calibration_pool(splits, exclude=sft)}
    rl = rl_cases(splits, catalogue, RLConfig().users, RLConfig().negatives, RLConfig().seed, selection)
    assert selection and sft and calibration and rl, (len(selection), len(sft), len(calibration), len(rl))
    assert len(rl) == min(RLConfig().users, len(splits) - len(selection))
    assert not sft & calibration
    report = check_dataset(tmp_path)
    assert report.errors == [] and report.figures["SFT users (recipe)"] == len(sft)
    assert report.figures["teacher calibration users (recipe)"] == min(TeacherConfig().calibration_users,
                                                                       len(calibration))  # fmt: skip
    for split in ("selection", "test"):
        assert build_cases(splits, catalogue, 6000, 19, seed=0, split=split)


def test_a_catalogue_too_small_for_the_recipe_is_refused_naming_the_option(tmp_path):
    from trainer.config import SFTConfig, TeacherConfig
    from trainer.data import DataError, load_splits
    from trainer.sft import sft_users

    _, splits = load_splits(_generated(tmp_path, 1))
    with pytest.raises(DataError, match="--teacher-calibration-users"):
        sft_users(splits, SFTConfig(), reserve=TeacherConfig().calibration_users)
    assert any(p.kind == "too small for SFT" for p in check_dataset(tmp_path).problems)


@pytest.mark.parametrize("users", [2000, 300])
def test_every_stage_trains_on_a_small_catalogue_with_the_recipes_pool_sizes(tmp_path, users):
    """`make train`, `make eval` and `make ship`'s commands, in their order, on a generated catalogue, with every
    pool option (users, calibration users, held-out positions, selection users) left at the recipe's default.
    Only how long each stage runs and the LLM's width are cut (steps, epochs, sizes): no pool depends on them."""
    (tmp_path / "data").mkdir()
    data, run = _generated(tmp_path / "data", users), tmp_path / "run"
    one_epoch = ["--data", str(data), "--epochs", "1"]
    train("seqrec", *one_epoch, "--out", str(run / "seqrec-sft"), "--horizon", "sft")
    train("seqrec", *one_epoch, "--out", str(run / "seqrec-valid"), "--horizon", "valid",
          "--init", str(run / "seqrec-sft"))  # fmt: skip
    train("seqrec", *one_epoch, "--out", str(run / "seqrec"))
    train("init-model", "--data", str(data), "--out", str(run / "init"), "--vocab-size", "1024", "--hidden-size",
          "64", "--intermediate-size", "128", "--layers", "2", "--heads", "2", "--kv-heads", "1")  # fmt: skip
    train("sft", "--data", str(data), "--base", str(run / "init"), "--out", str(run / "sft"), "--steps", "2",
          "--sequence-model", str(run / "seqrec-valid"),
          "--example-sequence-model", str(run / "seqrec-sft"))  # fmt: skip
    train("rl", "--data", str(data), "--base", str(run / "sft" / "model"), "--out", str(run / "rl"), "--steps", "1",
          "--served-users-per-step", "1")  # fmt: skip
    sft = open_checkpoint(run / "sft" / "model")
    assert sft.sequence is not None and open_checkpoint(run / "rl" / "model").model_version.startswith("rl-")
    if users > 300:
        return  # what follows sizes its pools as above: one catalogue covers it
    # the selection report's users and baselines (scoring the models there would add engine starts, not sizes)
    train("eval", "--data", str(data), "--split", "selection", "--seqrec", str(run / "seqrec-valid"),
          "--users", "1000", "--out", str(run / "eval-selection"))  # fmt: skip
    train("refresh", "--model", str(run / "sft" / "model"), "--sequence-model", str(run / "seqrec"),
          "--data", str(data), "--out", str(run / "shipped"))  # fmt: skip
    train("eval", "--data", str(data), "--model", str(run / "shipped"), "--seqrec", str(run / "seqrec"),
          "--users", "20", "--out", str(run / "eval"))  # fmt: skip
    train("export", "--model", str(run / "shipped"), "--out", str(tmp_path / "models" / "default"),
          "--report", str(run / "eval" / "eval.json"))  # fmt: skip
    selected = json.loads((run / "eval-selection" / "eval.json").read_text())
    assert selected["title"].startswith(f"{users // 5} selection users")  # a fifth of a small catalogue
    exported = open_checkpoint(tmp_path / "models" / "default")
    assert exported.manifest.metrics["ndcg@10"] == json.loads((run / "eval" / "eval.json").read_text())["results"][
        f"{exported.model_version} (full)"]["ndcg@10"]["mean"]  # fmt: skip
