"""How /rank scales with concurrent clients and with request size; writes tables and PNG plots.

    python -m loadtest.bench_scaling [--url URL] [--reasoning full] [--plots docs/img]

6. concurrency: 1, 2, 4, 8, 16 clients, 20-candidate requests → items/s, p50, p95, p99 latency;
7. request size: 10, 20, 50, 100, 200 candidates, one client → latency and items/s.
The service runs with the score cache off (each request is real engine work) on distinct demo users per
level, so the prefix cache only helps within a request, as it would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from loadtest.procs import start_service
from service.demo import DemoData

CONCURRENCY = (1, 2, 4, 8, 16)
SIZES = (10, 20, 50, 100, 200)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _body(demo: DemoData, user_index: int, size: int, reasoning: str, rng: random.Random) -> dict:
    user = demo.users[user_index % len(demo.users)]
    candidates = list(user.candidates)
    pool = [i for i in demo.titles if i not in set(candidates) | set(user.history)]
    candidates += rng.sample(pool, max(0, size - len(candidates)))
    return demo.rank_request(user, reasoning=reasoning) | {"candidates": [demo.item(i) for i in candidates[:size]]}


async def _run(url: str, bodies: list[dict], clients: int) -> tuple[float, list[float]]:
    queue = list(bodies)
    latencies: list[float] = []
    items = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal items
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            response = await http.post("/rank", json=body)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            items += len(body["candidates"])

    async with httpx.AsyncClient(base_url=url, timeout=600.0) as http:
        await http.post("/rank", json=bodies[0])  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        return items / (time.perf_counter() - started), latencies


def concurrency_scaling(url: str, demo: DemoData, reasoning: str, per_client: int) -> list[dict]:
    rng = random.Random(0)
    rows, offset = [], 0
    for clients in CONCURRENCY:
        n = max(8, clients * per_client)
        bodies = [_body(demo, offset + i, 20, reasoning, rng) for i in range(n)]
        offset += n
        rate, lat = asyncio.run(_run(url, bodies, clients))
        rows.append({"clients": clients, "requests": n, "items_per_s": rate, "p50_ms": _pct(lat, 0.5) * 1000,
                     "p95_ms": _pct(lat, 0.95) * 1000, "p99_ms": _pct(lat, 0.99) * 1000})  # fmt: skip
        print(f"  {clients} clients: {rate:.1f} items/s, p50 {rows[-1]['p50_ms']:.0f} ms", flush=True)
    return rows


def size_scaling(url: str, demo: DemoData, reasoning: str, repeats: int) -> list[dict]:
    rng = random.Random(1)
    rows, offset = [], 150
    for size in SIZES:
        bodies = [_body(demo, offset + i, size, reasoning, rng) for i in range(repeats)]
        offset += repeats
        rate, lat = asyncio.run(_run(url, bodies, 1))
        rows.append({"candidates": size, "requests": repeats, "items_per_s": rate,
                     "p50_ms": statistics.median(lat) * 1000, "max_ms": max(lat) * 1000})  # fmt: skip
        print(f"  {size} candidates: p50 {rows[-1]['p50_ms']:.0f} ms", flush=True)
    return rows


def plot(concurrency: list[dict], sizes: list[dict], out_dir: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax1 = plt.subplots(figsize=(7, 4))
    xs = [r["clients"] for r in concurrency]
    ax1.plot(xs, [r["items_per_s"] for r in concurrency], "o-", color="tab:blue", label="items/s")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(xs, [str(x) for x in xs])
    ax1.set_xlabel("concurrent clients (20 candidates each)")
    ax1.set_ylabel("items/s", color="tab:blue")
    ax2 = ax1.twinx()
    for key, style in (("p50_ms", "s--"), ("p95_ms", "^--"), ("p99_ms", "v--")):
        ax2.plot(xs, [r[key] for r in concurrency], style, label=key.replace("_ms", ""), alpha=0.7)
    ax2.set_ylabel("latency ms")
    ax2.legend(loc="upper left")
    ax1.set_title(f"/rank concurrency scaling — {title}")
    fig.tight_layout()
    fig.savefig(out_dir / "concurrency.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["candidates"] for r in sizes]
    ax.plot(xs, [r["p50_ms"] for r in sizes], "o-", label="p50 latency (1 client)")
    ax.set_xlabel("candidates per request")
    ax.set_ylabel("latency ms")
    ax.set_title(f"/rank latency vs request size — {title}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "request_size.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service started with R2RANK_SCORE_CACHE=false")
    parser.add_argument("--reasoning", default="full", choices=["full", "none"])
    parser.add_argument("--per-client", type=int, default=3, help="requests per client per concurrency level")
    parser.add_argument("--repeats", type=int, default=3, help="requests per request size")
    parser.add_argument("--plots", type=Path, default=Path("docs/img"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    demo, server, url = DemoData(), None, args.url
    if url is None:
        server = start_service(Path(tempfile.mkdtemp(prefix="r2rank-bench-")), env={"R2RANK_SCORE_CACHE": "false"})
        server.wait_ready("/readyz")
        url = server.url
    try:
        print("concurrency scaling", flush=True)
        conc = concurrency_scaling(url, demo, args.reasoning, args.per_client)
        print("request size scaling", flush=True)
        sizes = size_scaling(url, demo, args.reasoning, args.repeats)
    finally:
        if server is not None:
            server.stop()

    print(f"\n6. concurrency (20 candidates, reasoning={args.reasoning})\n")
    print("| clients | requests | items/s | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|---|---|")
    for r in conc:
        print(f"| {r['clients']} | {r['requests']} | {r['items_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} "
              f"| {r['p99_ms']:.0f} |")  # fmt: skip
    print(f"\n7. request size (1 client, reasoning={args.reasoning})\n")
    print("| candidates | requests | p50 ms | max ms | items/s |\n|---|---|---|---|---|")
    for r in sizes:
        print(
            f"| {r['candidates']} | {r['requests']} | {r['p50_ms']:.0f} | {r['max_ms']:.0f} | {r['items_per_s']:.1f} |"
        )
    plot(conc, sizes, args.plots, f"reasoning={args.reasoning}, 2-core CPU")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"concurrency": conc, "request_size": sizes}, indent=2))


if __name__ == "__main__":
    main()
