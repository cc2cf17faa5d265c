"""Per-key rates hold across the fleet: two API pods on one Redis give a key its rate once, not once per pod;
while Redis is unreachable each pod falls back to its own bucket."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from loadtest.procs import REPO_ROOT, delete_prefix, free_port, start_service
from service.exceptions import Overloaded, StoreUnavailable
from service.rates import KeyRates
from tests.conftest import REDIS_URL

RATE = 5.0


def test_two_pods_share_one_keys_rate(log_dir):
    prefix, secret = f"r2rtest-rates-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    env = {"R2RANK_AUTH_ENABLED": "true", "R2RANK_REDIS_URL": REDIS_URL, "R2RANK_REDIS_PREFIX": prefix,
           "R2RANK_KEY_SECRET": secret, "R2RANK_ENGINE": "remote",  # no engine needed to read items
           "R2RANK_ENGINE_URL": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    add = [sys.executable, "-m", "service.cli", "keys", "add", "--requests-per-s", str(RATE)]
    made = subprocess.run(add, cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    pods = [start_service(log_dir, env=env) for _ in range(2)]
    try:
        for pod in pods:
            pod.wait_ready("/healthz", timeout=120)

        async def hammer(seconds: float) -> dict[tuple[int, int], int]:
            counts: dict[tuple[int, int], int] = {}
            async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {key}"}) as http:

                async def one(pod: int) -> None:
                    while time.monotonic() < end:
                        status = (await http.get(f"{pods[pod].url}/items/none")).status_code
                        counts[(pod, status)] = counts.get((pod, status), 0) + 1
                        await asyncio.sleep(0.02)

                end = time.monotonic() + seconds
                await asyncio.gather(*(one(pod) for pod in (0, 1) for _ in range(2)))
            return counts

        seconds = 4.0
        counts = asyncio.run(hammer(seconds))
        passed = sum(n for (_, status), n in counts.items() if status == 404)  # past the rate: the item is unknown
        assert {status for _, status in counts} <= {404, 429}, counts
        assert all(counts.get((pod, 429), 0) > 0 for pod in (0, 1)), counts  # both pods refuse beyond the rate
        allowed = RATE * seconds + RATE  # the rate over the run, plus one burst
        print(f"passed {passed} of {sum(counts.values())} in {seconds} s (one key's budget: {allowed:.0f})")
        assert 0.6 * RATE * seconds <= passed <= allowed + 3  # per pod buckets would let through about twice
    finally:
        for pod in pods:
            pod.stop()
        delete_prefix(prefix)


class _UnreachableStore:
    async def take_tokens(self, *args) -> float:
        raise StoreUnavailable("redis unavailable")


class _Entry:
    requests_per_s, items_per_s = 1.0, None


def test_while_redis_is_down_a_pod_holds_the_rate_itself():
    rates = KeyRates(max_items_per_request=200, store=_UnreachableStore())

    async def burst() -> None:
        await rates.take_request("digest", _Entry())
        with pytest.raises(Overloaded):
            await rates.take_request("digest", _Entry())

    asyncio.run(burst())
