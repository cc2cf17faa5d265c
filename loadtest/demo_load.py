"""The load test's users: the demo catalogue and user histories, put into the service before a run.

``loadtest.run`` loads them before it starts locust, so locust's ``--run-time`` clock counts traffic only:
a slow load can no longer eat a short run (the spawned users would then start after the run was stopped).
It hands the run's key to the locustfile in ``R2RANK_LT_RUN``; a bare ``locust -f`` run loads them itself.
"""

from __future__ import annotations

import logging
import os

from service.client import R2RankClient
from service.demo import DemoData

RUN_ENV = "R2RANK_LT_RUN"
"""The environment variable naming a run whose users are already loaded."""


def demo_user_count(demo: DemoData) -> int:
    """How many demo users a run uses: ``R2RANK_LT_USERS`` (default 300), at most the demo's."""
    return min(int(os.environ.get("R2RANK_LT_USERS", "300")), len(demo.users))


def user_key(run: str, user_id: str) -> str:
    """A run's own key for a demo user, so runs against one service never share a history."""
    return f"lt-{run}-{user_id}"


def load_demo(url: str, run: str, demo: DemoData, n_users: int) -> None:
    """Catalogue + the first ``n_users`` histories, so /rank by user_id and by item id works."""
    with R2RankClient(url, timeout=120) as client:
        client.wait_ready(timeout_s=600)
        client.put_items({"item_id": k, "title": v} for k, v in demo.titles.items())
        for user in demo.users[:n_users]:
            client.put_history(user_key(run, user.user_id), user.history)
    logging.info("loaded %d items and %d user histories", len(demo.titles), n_users)
