"""Score cache and event ingest, measured side by side in one run.

    python -m loadtest.bench_cache [--url http://127.0.0.1:8000] [--users 20] [--repeats 10]

1. The same /rank request (by user_id, 20 candidates by item id, reasoning=full) cold (engine) vs cached
   (score cache hit): p50/p95 client-side latency each way and the ratio.
2. Event ingest: POST /users/{id}/events from N concurrent clients → events/s.

Without --url it starts its own service on a random port (local engine, Redis at R2RANK_REDIS_URL or the
default) under a fresh key prefix, and deletes that prefix at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from service.demo import DemoData


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def cache_latency(url: str, demo: DemoData, users: int, repeats: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=300.0) as http:
        chosen = demo.users[200 : 200 + users]
        items = sorted({i for u in chosen for i in (*u.history, *u.candidates)})
        (await http.put("/items", json=[demo.item(i) for i in items])).raise_for_status()
        run = uuid.uuid4().hex[:6]
        cold, warm = [], []
        for user in chosen:
            user_id = f"bench-{run}-{user.user_id}"
            body = {"items": [{"item_id": i} for i in user.history]}
            (await http.put(f"/users/{user_id}/history", json=body)).raise_for_status()
            rank_body = {"user_id": user_id, "candidates": [{"item_id": i} for i in user.candidates]}
            started = time.perf_counter()
            first = await http.post("/rank", json=rank_body)
            cold.append(time.perf_counter() - started)
            assert first.json()["cache_hits"] == 0, "cold request hit the cache"
            for _ in range(repeats):
                started = time.perf_counter()
                again = await http.post("/rank", json=rank_body)
                warm.append(time.perf_counter() - started)
                assert again.json()["cache_hits"] == len(user.candidates)
    return {
        "cold_p50_ms": statistics.median(cold) * 1000,
        "cold_p95_ms": _pct(cold, 0.95) * 1000,
        "cached_p50_ms": statistics.median(warm) * 1000,
        "cached_p95_ms": _pct(warm, 0.95) * 1000,
        "cold_requests": len(cold),
        "cached_requests": len(warm),
    }


async def ingest(url: str, clients: int, events_per_client: int) -> float:
    """aiohttp, not httpx, drives this: httpx's async pool itself caps near 350 req/s at 32 connections
    here (measured: GET /healthz falls from 1,258 req/s at 8 clients to 363 at 32), which would hide the
    service's own figure."""
    import aiohttp

    run = uuid.uuid4().hex[:6]

    async def client(n: int, http: aiohttp.ClientSession) -> None:
        for i in range(events_per_client):
            body = {"item_id": str(i % 500), "event_id": f"{run}-{n}-{i}"}
            async with http.post(f"{url}/users/ingest-{run}-{n % 50}/events", json=body) as response:
                response.raise_for_status()

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(n, http) for n in range(clients)))
        return clients * events_per_client / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service; default: start one")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--events", type=int, default=2000, help="events per ingest configuration")
    args = parser.parse_args()

    server, prefix = None, f"r2rbench-{uuid.uuid4().hex[:6]}"
    url = args.url
    if url is None:
        from loadtest.procs import start_service

        server = start_service(Path(tempfile.mkdtemp(prefix="r2rank-bench-")), env={"R2RANK_REDIS_PREFIX": prefix})
        server.wait_ready("/readyz")
        url = server.url
    try:
        demo = DemoData()
        latency = asyncio.run(cache_latency(url, demo, args.users, args.repeats))
        rates = {c: asyncio.run(ingest(url, c, max(1, args.events // c))) for c in (1, 8, 32)}
    finally:
        if server is not None:
            server.stop()
            from loadtest.procs import delete_prefix

            delete_prefix(prefix)

    print(f"\n/rank, 20 candidates by id, reasoning=full: {latency['cold_requests']} cold, "
          f"{latency['cached_requests']} cached requests\n")  # fmt: skip
    print("| | p50 ms | p95 ms |\n|---|---|---|")
    print(f"| cold (engine) | {latency['cold_p50_ms']:.1f} | {latency['cold_p95_ms']:.1f} |")
    print(f"| cached (score cache) | {latency['cached_p50_ms']:.2f} | {latency['cached_p95_ms']:.2f} |")
    print(f"\ncold/cached p50 ratio: {latency['cold_p50_ms'] / latency['cached_p50_ms']:.0f}x\n")
    print("| concurrent clients | events/s |\n|---|---|")
    for clients, rate in rates.items():
        print(f"| {clients} | {rate:.0f} |")


if __name__ == "__main__":
    main()
