"""One command for a bounded load test: ``make loadtest`` (or ``python -m loadtest.run``).

Starts the service on a free loopback port unless ``--url`` is given and loads the demo users into it. Then
it runs locust headless for a fixed time of traffic (the load is outside that clock), writes CSV + an HTML
report under ``results/loadtest-<time>/`` and exits non-zero when the failure ratio exceeds 1% (the
locustfile sets the exit code). Traffic goes to loopback only; the run stops by itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from loadtest.demo_load import RUN_ENV, demo_user_count, load_demo
from loadtest.procs import REPO_ROOT, delete_prefix, start_service
from service.demo import DemoData


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("R2RANK_URL"), help="a running service (default: start one)")
    parser.add_argument("--users", type=int, default=int(os.environ.get("USERS", "8")), help="concurrent users")
    parser.add_argument("--spawn-rate", type=float, default=float(os.environ.get("SPAWN_RATE", "2")))
    parser.add_argument("--run-time", default=os.environ.get("RUN_TIME", "60s"), help="e.g. 30s, 5m")
    parser.add_argument("--out", type=Path, help="results folder (default results/loadtest-<time>)")
    args = parser.parse_args(argv)

    out = args.out or REPO_ROOT / "results" / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    server, prefix = None, f"r2rlt-{uuid.uuid4().hex[:6]}"
    url = args.url
    if url is None:
        server = start_service(out, env={"R2RANK_REDIS_PREFIX": prefix})
        server.wait_ready("/readyz")
        url = server.url
    try:
        run, demo = uuid.uuid4().hex[:6], DemoData()
        load_demo(url, run, demo, demo_user_count(demo))
        command = [
            sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtest" / "locustfile.py"),
            "--host", url, "--headless", "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
            "--run-time", args.run_time, "--stop-timeout", "60", "--csv", str(out / "locust"),
            "--html", str(out / "report.html"), "--only-summary",
        ]  # fmt: skip
        locust_env = {**os.environ, RUN_ENV: run}
        code = subprocess.run(command, cwd=REPO_ROOT, env=locust_env, check=False).returncode
    finally:
        if server is not None:
            server.stop()
            delete_prefix(prefix)
    print(f"locust exit code {code}; report: {out / 'report.html'}, CSV: {out}/locust_stats.csv")
    return code


if __name__ == "__main__":
    sys.exit(main())
