"""`r2rank-train check-data`: every problem of a catalogue with its file and line, and what the recipe gets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadtest.procs import REPO_ROOT
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
