"""Prometheus metrics, in a registry per app so several apps (tests) can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "r2rank_requests_total", "HTTP requests by route and status.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "r2rank_request_latency_seconds",
            "HTTP latency by route.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.items_scored = Counter(
            "r2rank_items_scored_total", "Candidate items scored by the engine.", ["reasoning"], registry=r
        )
        self.rationale_tokens = Counter("r2rank_rationale_tokens_total", "Rationale tokens generated.", registry=r)
        self.rationales_withheld = Counter(
            "r2rank_rationales_withheld_total",
            "Rationales that cited what their evidence does not state: not shown, the item scored from its evidence.",
            registry=r,
        )
        self.unstated_claims = Counter(
            "r2rank_unstated_claims_total",
            "Withheld rationales by what they cited that their evidence does not state (a link's count, the "
            "popularity, the next-item rank, a history item, ...): each rationale once per kind.",
            ["claim"],
            registry=r,
        )
        self.engine_inflight = Gauge(
            "r2rank_engine_inflight_items", "Items submitted to the engine and not finished.", registry=r
        )
        self.engine_latency = Histogram(
            "r2rank_engine_seconds",
            "Engine time per /rank request.",
            ["reasoning"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "r2rank_score_cache_total", "Score cache lookups per item: hit, miss, or error.", ["result"], registry=r
        )
        self.store_errors = Counter(
            "r2rank_store_errors_total", "Redis operations that failed, by operation.", ["operation"], registry=r
        )
        self.degraded = Counter(
            "r2rank_degraded_responses_total", "Rankings answered with fallbacks after a deadline.", registry=r
        )
        self.fallback_items = Counter(
            "r2rank_fallback_items_total", "Items given a fallback instead of a model score.", ["source"], registry=r
        )
        self.rejected = Counter(
            "r2rank_rejected_total", "Requests refused before any work, by reason.", ["reason"], registry=r
        )
        self.engine_restarts = Counter("r2rank_engine_restarts_total", "Engine restarts after a failure.", registry=r)
        self.model = Info("r2rank_model", "The checkpoint being served.", registry=r)
        self.ready = Gauge("r2rank_ready", "1 when the engine is loaded and warmed up.", registry=r)
