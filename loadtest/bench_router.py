"""Several engines behind vllm-router: where each user's prompts land and how often the prefix cache hits.

    python -m loadtest.bench_router [--users 12] [--requests 2] [--candidates 8]

Two `vllm serve` CPU engines on the shipped model, `vllm-router` in front of them and the service with
R2RANK_ENGINE=remote pointed at the router. The same request mix (each user's requests, one at a time, each
with other candidates so nothing comes from the score cache) runs once per router policy, with the engines'
prefix caches emptied in between. Everything is read from the engines' own Prometheus counters: which
engines' finished-request counts moved during each /rank (vLLM counts each prompt of a list-valued call, so
this is the share of a user's prompts that landed on the engine that took most of them), and prefix-cache
hits / queries (tokens) over the whole mix.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest.procs import DEFAULT_MODEL, ServerProcess, start_router, start_service, start_vllm_server
from service.demo import DemoData

ENGINE_KEY = "router-bench-engine-key"
COUNTERS = ("vllm:request_success", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits")


@dataclass
class PolicyResult:
    policy: str
    requests: int
    prefix_cache_hit_rate: float  # hit tokens / queried tokens, both engines, the whole mix
    users_on_one_engine: float  # share of users all of whose prompts landed on one engine
    mean_share_on_main_engine: float  # per user: prompts on the engine that took most of them / all their prompts


def engine_counters(url: str) -> dict[str, float]:
    """The engine's counters in ``COUNTERS``, summed over their labels."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return totals


def start_engines(log_dir: Path, count: int, model: Path = DEFAULT_MODEL) -> list[ServerProcess]:
    """``count`` engines with their Prometheus counters on (no --disable-log-stats) and the dev endpoint that
    empties the prefix cache; started together, ready when this returns."""
    engines = [start_vllm_server(log_dir, model, None, "--api-key", ENGINE_KEY, stats=True) for _ in range(count)]
    for engine in engines:
        engine.wait_ready("/health")
    return engines


def reset_prefix_caches(engines: list[ServerProcess]) -> None:
    for engine in engines:
        httpx.post(f"{engine.url}/reset_prefix_cache", headers={"Authorization": f"Bearer {ENGINE_KEY}"},
                   timeout=30).raise_for_status()  # fmt: skip


@contextmanager
def routed_service(
    log_dir: Path, engines: list[ServerProcess], policy: str, env: dict[str, str] | None = None
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The router with ``policy`` in front of ``engines`` and a service (score cache off) behind it."""
    router = start_router(log_dir, [e.url for e in engines], policy=policy, api_key=ENGINE_KEY)
    service = None
    try:
        router.wait_ready("/health")
        service = start_service(log_dir, env={"R2RANK_ENGINE": "remote", "R2RANK_ENGINE_URL": router.url,
                                              "R2RANK_ENGINE_API_KEY": ENGINE_KEY, "R2RANK_SCORE_CACHE": "false",
                                              "R2RANK_REDIS_URL": "", **(env or {})})  # fmt: skip
        service.wait_ready("/readyz")
        yield router, service
    finally:
        if service is not None:
            service.stop()
        router.stop()


def request_mix(demo: DemoData, users: int, requests: int, candidates: int, offset: int = 200) -> list[list[dict]]:
    """Per user, ``requests`` full-reasoning bodies, each with the next ``candidates`` of the user's items."""
    mix = []
    for user in demo.users[offset : offset + users]:
        body = demo.rank_request(user, reasoning="full")
        mix.append([{**body, "candidates": body["candidates"][k * candidates : (k + 1) * candidates]}
                    for k in range(requests)])  # fmt: skip
    return mix


def run_mix(service: ServerProcess, engines: list[ServerProcess], mix: list[list[dict]], policy: str) -> PolicyResult:
    before_all = [engine_counters(e.url) for e in engines]
    shares, requests = [], 0
    with httpx.Client(base_url=service.url, timeout=300) as http:
        for bodies in mix:
            calls = [0.0] * len(engines)
            for body in bodies:
                before = [engine_counters(e.url)["vllm:request_success"] for e in engines]
                response = http.post("/rank", json=body)
                response.raise_for_status()
                requests += 1
                after = [engine_counters(e.url)["vllm:request_success"] for e in engines]
                calls = [c + a - b for c, a, b in zip(calls, after, before, strict=True)]
            shares.append(max(calls) / sum(calls))
    after_all = [engine_counters(e.url) for e in engines]
    moved = [{name: a[name] - b[name] for name in COUNTERS} for a, b in zip(after_all, before_all, strict=True)]
    hits = sum(m["vllm:prefix_cache_hits"] for m in moved)
    queries = sum(m["vllm:prefix_cache_queries"] for m in moved)
    return PolicyResult(policy, requests, hits / queries if queries else 0.0,
                        sum(s == 1.0 for s in shares) / len(shares), statistics.fmean(shares))  # fmt: skip


def compare_policies(
    log_dir: Path, engines: list[ServerProcess], mix: list[list[dict]], policies: tuple[str, ...]
) -> list[PolicyResult]:
    results = []
    for policy in policies:
        reset_prefix_caches(engines)
        with routed_service(log_dir, engines, policy) as (_, service):
            results.append(run_mix(service, engines, mix, policy))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--requests", type=int, default=2, help="requests per user (other candidates each)")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    log_dir = Path(tempfile.mkdtemp(prefix="r2rank-bench-router-"))
    mix = request_mix(DemoData(), args.users, args.requests, args.candidates)
    engines = start_engines(log_dir, 2)
    try:
        results = compare_policies(log_dir, engines, mix, ("consistent_hash", "round_robin"))
    finally:
        for engine in engines:
            engine.stop()
    print(f"\n2 engines, {args.users} users x {args.requests} requests x {args.candidates} candidates (full)\n")
    print("| policy | prefix-cache hit rate | users all on one engine | mean share on the user's main engine |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r.policy} | {r.prefix_cache_hit_rate:.1%} | {r.users_on_one_engine:.0%} "
              f"| {r.mean_share_on_main_engine:.1%} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
