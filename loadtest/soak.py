"""Soak: a bounded locust run (default 10 minutes) with the service's memory before and after.

    python -m loadtest.soak [--run-time 10m] [--users 8]

Memory is the resident set of the service process plus its children (the vLLM engine processes), read
after warm-up, every --sample-s seconds during the run (to tell a plateau from a leak) and after it.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

from loadtest.procs import delete_prefix, start_service
from loadtest.run import main as run_loadtest


def rss_mib(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (process, *process.children(recursive=True))) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-time", default="10m")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=30.0, help="RSS sampling period")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="r2rank-soak-"))
    prefix = f"r2rsoak-{uuid.uuid4().hex[:6]}"
    server = start_service(out, env={"R2RANK_REDIS_PREFIX": prefix})
    try:
        server.wait_ready("/readyz")
        before = rss_mib(server.proc.pid)
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not done.wait(args.sample_s):
                samples.append((time.monotonic() - started, rss_mib(server.proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = run_loadtest(["--url", server.url, "--users", str(args.users), "--spawn-rate", "2",
                             "--run-time", args.run_time, "--out", str(out)])  # fmt: skip
        done.set()
        after = rss_mib(server.proc.pid)
        alive = server.proc.poll() is None
    finally:
        server.stop()
        delete_prefix(prefix)
    with (out / "locust_stats.csv").open() as handle:
        total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    print(f"\nsoak {args.run_time}, {args.users} users: exit code {code}, service alive at the end: {alive}")
    print("| requests | failures | median ms | p95 ms | p99 ms | RSS before MiB | RSS after MiB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {total['Request Count']} | {total['Failure Count']} | {total['50%']} | {total['95%']} | {total['99%']} "
          f"| {before:.0f} | {after:.0f} |")  # fmt: skip
    print("RSS over the run (s: MiB): " + ", ".join(f"{t:.0f}: {m:.0f}" for t, m in samples))
    print(f"report: {out / 'report.html'}")


if __name__ == "__main__":
    main()
