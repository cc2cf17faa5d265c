"""Fairness between clients: per-key token buckets for requests and candidate items per second.

A key's entry (``r2rank-serve keys add --requests-per-s N --items-per-s M``) carries its rates. The buckets
live in Redis (one atomic script per take, refilled by Redis's clock), so a key gets its rate across the whole
fleet, not once per pod; while Redis is unreachable each pod falls back to its own in-memory bucket (the rate
then holds per pod). A request over its key's rate gets a 429 with the seconds until it would pass as
``Retry-After``, before any work. Keys without rates (and requests without keys) are limited only by the
in-flight budget.

Why not the ``limits`` library: its strategies are windows (fixed, moving, sliding) with one size for the rate
and the burst; the item rate needs a token bucket whose burst (one full request) is larger than its rate per
second, so a large request is delayed, never refused forever. The script is the same atomic pattern as the
store's other writes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from service.exceptions import Overloaded, StoreUnavailable

logger = logging.getLogger(__name__)


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    capacity: float
    tokens: float
    updated: float

    def take(self, n: float, now: float) -> float:
        """Take ``n`` tokens if there are; returns 0.0, or the seconds until there would be (nothing taken)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class KeyRates:
    def __init__(self, max_items_per_request: int, metrics=None, store=None) -> None:
        self.max_items = max_items_per_request
        self.metrics = metrics
        self.store = store  # RedisStore: fleet-wide buckets; None: this pod's own
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, digest: str, kind: str, rate: float, capacity: float) -> TokenBucket:
        bucket = self._buckets.get((digest, kind))
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[(digest, kind)] = TokenBucket(rate, capacity, capacity, time.monotonic())
        return bucket

    async def _wait(self, digest: str, kind: str, rate: float, n: float, capacity: float) -> float:
        if self.store is not None:
            try:
                return await self.store.take_tokens(f"{digest}:{kind}", rate, capacity, n)
            except StoreUnavailable as exc:
                logger.warning("rate of key %s… held by this pod alone while Redis is unreachable: %s", digest[:8],
                               exc.detail or exc)  # fmt: skip
        return self._bucket(digest, kind, rate, capacity).take(n, time.monotonic())

    async def _take(self, digest: str, kind: str, rate: float | None, n: float, capacity: float, unit: str) -> None:
        if not rate:
            return
        wait = await self._wait(digest, kind, rate, n, capacity)
        if wait > 0:
            if self.metrics is not None:
                self.metrics.rejected.labels("rate_limited").inc()
            raise Overloaded(f"rate: this API key may send {rate:g} {unit} per second; retry after Retry-After "
                             "seconds", retry_after_s=max(1.0, math.ceil(wait)))  # fmt: skip

    async def take_request(self, digest: str, entry) -> None:
        rate = entry.requests_per_s
        await self._take(digest, "requests", rate, 1, max(1.0, rate or 1.0), "requests")

    async def take_items(self, digest: str, entry, items: int) -> None:
        """A burst of one full request is always allowed (so a large request is delayed, never refused forever)."""
        rate = entry.items_per_s
        await self._take(digest, "items", rate, items, max(float(self.max_items), rate or 0.0), "candidate items")
