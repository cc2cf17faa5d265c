"""This tree's service against a pinned git revision's (its own code and its own models/default), side by side.

    python -m loadtest.bench_revision --rev dbe9ab4 [--users 24] [--rounds 2] [--reasoning full] [--cached 10]

For each of ``--rounds`` rounds the two arms run one after the other on the same machine (alternating, so
drift hits both alike): a service is started on a free port with the score cache off and no Redis (cold
ranking: every item goes to the engine), warmed up on other users, then sent the same ``--users`` 20-candidate
demo requests one at a time, and stopped. With ``--cached N`` the service runs on the local Redis with the
score cache on: each request is sent once to fill the cache, then N more times, and only those cached
replies are timed (the path a repeated ranking takes: no engine work). The revision runs from a
``git worktree`` with this checkout's virtual environment. Prints each arm's p50 and mean latency per
request and items/s, and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from loadtest.procs import REPO_ROOT, VLLM_CPU_ENV, delete_prefix, free_port
from service.demo import DemoData

WARMUP_USERS = 3
REDIS_URL = os.environ.get("R2RANK_REDIS_URL") or "redis://127.0.0.1:6379/0"  # for --cached


def worktree(revision: str) -> Path:
    """A detached worktree of ``revision`` (made once per revision, reused)."""
    sha = subprocess.run(["git", "rev-parse", "--short", revision], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    path = Path(tempfile.gettempdir()) / f"r2rank-rev-{sha}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=REPO_ROOT, check=True,
                       capture_output=True)  # fmt: skip
    return path


def run_arm(root: Path, bodies: list[dict], warmup: list[dict], cached: int = 0) -> list[float]:
    """Seconds per request for ``bodies``, one at a time, on a fresh service from ``root``; with ``cached`` > 0,
    of the ``cached`` repeats of each body that follow a first, cache-filling one."""
    port = free_port()
    prefix = f"r2rbench-rev-{uuid.uuid4().hex[:8]}"
    store = {"R2RANK_REDIS_URL": REDIS_URL, "R2RANK_REDIS_PREFIX": prefix} if cached else {"R2RANK_REDIS_URL": ""}
    env = {**os.environ, **VLLM_CPU_ENV, **store, "R2RANK_SCORE_CACHE": "true" if cached else "false",
           "R2RANK_LOG_LEVEL": "warning", "PYTHONPATH": str(root)}  # fmt: skip
    log = (Path(tempfile.gettempdir()) / f"r2rank-bench-revision-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=root, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the service in {root} exited; see {log.name}")
            time.sleep(1)
        with httpx.Client(base_url=url, timeout=600) as client:
            for body in warmup:
                client.post("/rank", json=body).raise_for_status()
            seconds = []
            for body in bodies:
                if cached:
                    client.post("/rank", json=body).raise_for_status()
                for _ in range(max(1, cached)):
                    started = time.perf_counter()
                    client.post("/rank", json=body).raise_for_status()
                    seconds.append(time.perf_counter() - started)
        return seconds
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)
        if cached:
            delete_prefix(prefix, REDIS_URL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="the pinned revision to compare against (e.g. a commit)")
    parser.add_argument("--users", type=int, default=24, help="timed 20-candidate requests per arm and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the two arms, alternating")
    parser.add_argument("--reasoning", choices=("full", "none"), default="full")
    parser.add_argument("--cached", type=int, default=0, help="time N score-cache hits per request instead")
    args = parser.parse_args()

    demo = DemoData()
    bodies = [demo.rank_request(u, reasoning=args.reasoning) for u in demo.users[: args.users]]
    warmup = [demo.rank_request(u, reasoning=args.reasoning) for u in demo.users[-WARMUP_USERS:]]
    arms = {f"revision {args.rev}": worktree(args.rev), "this tree": REPO_ROOT}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, root in arms.items():
            seconds[name] += run_arm(root, bodies, warmup, args.cached)
    items = sum(len(b["candidates"]) for b in bodies) * args.rounds * max(1, args.cached)
    kind = "cached" if args.cached else "cold"
    p50 = {}
    for name, values in seconds.items():
        p50[name] = statistics.median(values)
        print(
            f"{name:>20}: p50 {p50[name] * 1000:.0f} ms, mean {statistics.mean(values) * 1000:.0f} ms per request, "
            f"{items / sum(values):.1f} items/s ({len(values)} {kind} {args.reasoning} requests, one at a time)"
        )
    old, new = p50.values()
    print(f"this tree / revision {args.rev}: {new / old:.2f}x p50 latency")


if __name__ == "__main__":
    main()
