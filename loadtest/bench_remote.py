"""In-process engine vs remote engine, per-item calls vs batched calls, and what vllm-router adds.

    python -m loadtest.bench_remote [--users 24] [--concurrency 8] [--modes full,none]

Side by side in one run, on the same timed users (each configuration with a fresh engine, warmed up on other
users, so no prefix-cache entry from an earlier configuration flatters a later one):
  (a) the service with the in-process vLLM engine (R2RANK_ENGINE=local);
  (b) the service with a remote `vllm serve` and two HTTP calls per item (R2RANK_ENGINE_BATCH=false);
  (c) the same with a request's prompts in two list-valued calls (R2RANK_ENGINE_BATCH=true, the default).
It prints items/s of each and the ratios (b)/(a), (c)/(a). Then, on (c)'s engine, the latency `vllm-router`
adds: p50 of the same small requests through a second service that reaches the engine via the router, taken
alternately with the direct one, after a pass that put them in the prefix cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from loadtest.bench_engine import WARMUP_USERS, _drive, _requests
from loadtest.procs import DEFAULT_MODEL, ServerProcess, start_router, start_service, start_vllm_server
from service.demo import DemoData

ENGINE_KEY = "bench-engine-key"


def _measure(service: ServerProcess, phases: dict[str, list[dict]], concurrency: int) -> float:
    service.wait_ready("/readyz")
    asyncio.run(_drive(service.url, phases["warmup"], concurrency))
    return asyncio.run(_drive(service.url, phases["timed"], concurrency))


def _remote_env(url: str, batched: bool) -> dict[str, str]:
    return {"R2RANK_ENGINE": "remote", "R2RANK_ENGINE_URL": url, "R2RANK_ENGINE_API_KEY": ENGINE_KEY,
            "R2RANK_ENGINE_BATCH": str(batched).lower(), "R2RANK_SCORE_CACHE": "false"}  # fmt: skip


def _router_latency(log_dir: Path, engine: ServerProcess, direct: ServerProcess, bodies: list[dict]) -> dict:
    """p50 ms of the same requests, direct and through vllm-router, interleaved (cache-warm for both)."""
    router = start_router(log_dir, [engine.url], api_key=ENGINE_KEY)
    routed = start_service(log_dir, env=_remote_env(router.url, batched=True))
    try:
        router.wait_ready("/health")
        routed.wait_ready("/readyz")
        times: dict[str, list[float]] = {"direct": [], "router": []}
        with httpx.Client(timeout=120) as http:
            for body in bodies:  # the warm pass: both paths hit the same engine's prefix cache afterwards
                http.post(f"{direct.url}/rank", json=body).raise_for_status()
            for _ in range(3):
                for body in bodies:
                    for name, service in (("direct", direct), ("router", routed)):
                        started = time.perf_counter()
                        http.post(f"{service.url}/rank", json=body).raise_for_status()
                        times[name].append((time.perf_counter() - started) * 1000)
        p50 = {name: statistics.median(values) for name, values in times.items()}
        return {"direct_p50_ms": p50["direct"], "router_p50_ms": p50["router"], "requests": len(times["direct"])}
    finally:
        routed.stop()
        router.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=24, help="timed requests (one user each) per configuration")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--modes", default="full,none")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    demo = DemoData()
    log_dir = Path(tempfile.mkdtemp(prefix="r2rank-bench-remote-"))
    results = []
    latency: dict | None = None
    for reasoning in args.modes.split(","):
        phases = {"warmup": _requests(demo, WARMUP_USERS, 0, reasoning, args.candidates),
                  "timed": _requests(demo, args.users, 100, reasoning, args.candidates)}  # fmt: skip
        row: dict[str, float | str] = {"reasoning": reasoning}
        local = start_service(log_dir, env={"R2RANK_MODEL_PATH": str(args.model), "R2RANK_SCORE_CACHE": "false"})
        try:
            row["in_process"] = _measure(local, phases, args.concurrency)
        finally:
            local.stop()
        for name, batched in (("remote_per_item", False), ("remote_batched", True)):
            engine = start_vllm_server(log_dir, args.model, None, "--api-key", ENGINE_KEY)
            try:
                engine.wait_ready("/health")
                service = start_service(log_dir, env=_remote_env(engine.url, batched))
                try:
                    row[name] = _measure(service, phases, args.concurrency)
                    if batched and latency is None:
                        small = _requests(demo, 10, 250, "none", 5)
                        latency = _router_latency(log_dir, engine, service, small)
                finally:
                    service.stop()
            finally:
                engine.stop()
        results.append(row)

    print(f"\n{args.users} requests x {args.candidates} candidates per configuration, "
          f"{args.concurrency} concurrent HTTP clients, CPUs: {os.cpu_count()}\n")  # fmt: skip
    print("| reasoning | (a) in-process items/s | (b) remote per-item | (c) remote batched | (b)/(a) | (c)/(a) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        a, b, c = r["in_process"], r["remote_per_item"], r["remote_batched"]
        print(f"| {r['reasoning']} | {a:.1f} | {b:.1f} | {c:.1f} | {b / a:.2f} | {c / a:.2f} |")
    if latency:
        print(f"\nvllm-router on loopback, {latency['requests']} cache-warm 5-candidate requests each: "
              f"p50 direct {latency['direct_p50_ms']:.1f} ms, through the router {latency['router_p50_ms']:.1f} ms "
              f"(+{latency['router_p50_ms'] - latency['direct_p50_ms']:.1f} ms)")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"throughput": results, "router_latency": latency}, indent=2))


if __name__ == "__main__":
    main()
