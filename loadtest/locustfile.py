"""A realistic r2rank load: mostly /rank by user_id, some with rationales, some without reasoning, events
between rankings, candidate sets of 20, 50 and 100 — on the shipped demo users and items.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 2 -t 60s

Knobs (environment):
    R2RANK_LT_CANDIDATES   candidate-set sizes to draw from (default "20,50,100")
    R2RANK_LT_USERS        how many demo users to load and use (default 300)
    R2RANK_LT_FAIL_RATIO   exit non-zero above this failure ratio (default 0.01)
    R2RANK_LT_RUN          a run whose users ``loadtest.run`` already loaded (see loadtest.demo_load)
Without R2RANK_LT_RUN the catalogue and the users' histories are loaded at test start, with the typed
client, inside the --run-time clock. The run's exit code is 1 when the failure ratio exceeds the threshold.
"""

from __future__ import annotations

import logging
import os
import random
import uuid

from locust import FastHttpUser, between, events, task

from loadtest.demo_load import RUN_ENV, demo_user_count, load_demo
from loadtest.demo_load import user_key as run_user_key
from service.client import rank_body
from service.demo import DemoData

DEMO = DemoData()
SIZES = [int(s) for s in os.environ.get("R2RANK_LT_CANDIDATES", "20,50,100").split(",")]
N_USERS = demo_user_count(DEMO)
FAIL_RATIO = float(os.environ.get("R2RANK_LT_FAIL_RATIO", "0.01"))
PRELOADED_RUN = os.environ.get(RUN_ENV)
RUN = PRELOADED_RUN or uuid.uuid4().hex[:6]
ALL_ITEMS = sorted(DEMO.titles)


def user_key(index: int) -> str:
    return run_user_key(RUN, DEMO.users[index].user_id)


@events.test_start.add_listener
def load_demo_unless_preloaded(environment, **_kwargs) -> None:
    if PRELOADED_RUN is None:
        load_demo(environment.host, RUN, DEMO, N_USERS)


@events.quitting.add_listener
def exit_code_from_failures(environment, **_kwargs) -> None:
    ratio = environment.stats.total.fail_ratio
    if ratio > FAIL_RATIO:
        logging.error("failure ratio %.2f%% is above %.2f%%", ratio * 100, FAIL_RATIO * 100)
        environment.process_exit_code = 1
    else:
        environment.process_exit_code = 0


class RankingBackend(FastHttpUser):
    """One product backend: ranks pages for random demo users and reports their interactions."""

    wait_time = between(0.05, 0.3)

    def _candidates(self, index: int) -> list[str]:
        own = list(DEMO.users[index].candidates)
        size = random.choice(SIZES)
        extra = [i for i in random.sample(ALL_ITEMS, size + 20) if i not in own]
        return (own + extra)[:size]

    def _rank(self, name: str, **options) -> None:
        index = random.randrange(N_USERS)
        candidates = self._candidates(index)
        body = rank_body(candidates, user_key(index), None, options.get("top_k", 10),
                         options.get("include_rationales", False), options.get("reasoning", "full"), None)  # fmt: skip
        with self.client.post("/rank", json=body, name=f"/rank [{name}, {len(candidates)}]",
                              catch_response=True) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()["items"]) != min(10, len(candidates)):
                response.failure("wrong number of items")

    @task(10)
    def rank_by_user(self) -> None:
        self._rank("full")

    @task(2)
    def rank_with_rationales(self) -> None:
        self._rank("rationales", include_rationales=True)

    @task(3)
    def rank_without_reasoning(self) -> None:
        self._rank("none", reasoning="none")

    @task(5)
    def add_event(self) -> None:
        index = random.randrange(N_USERS)
        body = {"item_id": random.choice(ALL_ITEMS), "event_id": uuid.uuid4().hex}
        self.client.post(f"/users/{user_key(index)}/events", json=body, name="/users/[id]/events")
