"""A fault under load, for the fault-injection tests: clients rank in rounds while something is killed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx


def statuses_under_fault(
    url: str, bodies: list[dict], seconds: float, fault_after_s: float, fault: Callable[[], object],
    timeout_s: float = 60.0,
) -> list[int]:  # fmt: skip
    """POST every body of ``bodies`` to ``/rank`` at once, round after round for ``seconds``; call ``fault``
    ``fault_after_s`` into it. Returns every reply's status, in order."""
    assert bodies, "no request to send"

    async def load() -> list[int]:
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as http:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                batch = await asyncio.gather(*(http.post("/rank", json=body) for body in bodies))
                statuses += [r.status_code for r in batch]
        return statuses

    async def scenario() -> list[int]:
        task = asyncio.create_task(load())
        await asyncio.sleep(fault_after_s)
        fault()
        return await task

    return asyncio.run(scenario())
