"""A few seconds of the real locustfile against the session's service (loopback only, bounded)."""

from __future__ import annotations

import csv

import pytest

from loadtest.run import main as run_loadtest

pytestmark = pytest.mark.engine


def test_locust_smoke_run(service, tmp_path):
    code = run_loadtest(["--url", service.url, "--users", "3", "--spawn-rate", "3", "--run-time", "8s",
                         "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    assert (tmp_path / "report.html").stat().st_size > 0
    with (tmp_path / "locust_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0
    assert any(name.startswith("/rank [") for name in rows)
