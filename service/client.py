"""Typed Python clients for r2rank (sync and async), built on httpx.

    from service.client import R2RankClient
    with R2RankClient("http://127.0.0.1:8000") as client:
        client.put_items([{"item_id": "42", "title": "Mario Kart 8 Deluxe"}])
        client.add_event("u1", "42", event_id="order-123")
        ranked = client.rank(user_id="u1", candidates=["42", {"item_id": "7", "title": "Halo 3"}], top_k=10)
        print(ranked.items[0].item_id, ranked.items[0].score)

Responses are the service's own pydantic models (``service.protocol``). 429 and 503 answers are retried
(honouring ``Retry-After``, with exponential backoff otherwise); any other error raises ``R2RankError``
carrying the service's error body (``message``, ``type``, ``param``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)
from tenacity.wait import wait_base

from service.protocol import CatalogItem, EventOut, HistoryOut, ItemsUpserted, RankResponse

RETRY_STATUSES = frozenset({429, 503})
ItemLike = str | Mapping[str, Any]


class R2RankError(RuntimeError):
    """An error answer from the service (after retries, for 429/503)."""

    def __init__(self, status_code: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.status_code = status_code
        self.message: str = error.get("message", str(body))
        self.type: str | None = error.get("type")
        self.param: str | None = error.get("param")
        super().__init__(f"HTTP {status_code} {self.type or ''} {self.param or ''}: {self.message}".strip())


class _RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class _wait_retry_after(wait_base):
    """Wait what the server's Retry-After says; fall back to exponential backoff."""

    def __init__(self, fallback: wait_base, cap_s: float) -> None:
        self.fallback = fallback
        self.cap_s = cap_s

    def __call__(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _RetryableStatus):
            header = exc.response.headers.get("retry-after")
            if header is not None:
                try:
                    return min(float(header), self.cap_s)
                except ValueError:
                    pass
        return self.fallback(retry_state)


def _segment(value: str) -> str:
    """An id as ONE path segment: '/', '?', '#', '%' and the rest escaped, so no id can reach another route."""
    return quote(value, safe="")


def _item(value: ItemLike) -> dict[str, Any]:
    return {"item_id": value} if isinstance(value, str) else dict(value)


def rank_body(
    candidates: Sequence[ItemLike],
    user_id: str | None = None,
    history: Sequence[ItemLike] | None = None,
    top_k: int | None = None,
    include_rationales: bool = False,
    reasoning: str = "full",
    request_id: str | None = None,
    deadline_ms: int | None = None,
    include_evidence: bool = False,
    candidate_source: str = "catalogue",
) -> dict[str, Any]:
    """The JSON body of POST /rank (also used by the load test, which sends it with its own HTTP client)."""
    body: dict[str, Any] = {
        "candidates": [_item(c) for c in candidates],
        "include_rationales": include_rationales,
        "include_evidence": include_evidence,
        "reasoning": reasoning,
        "candidate_source": candidate_source,
    }
    optional = {"user_id": user_id, "top_k": top_k, "request_id": request_id, "deadline_ms": deadline_ms}
    body.update({k: v for k, v in optional.items() if v is not None})
    if history is not None:
        body["history"] = [_item(h) for h in history]
    return body


def _parse(response: httpx.Response, model: type | None):
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        raise R2RankError(response.status_code, body)
    if model is None:
        return None
    return model.model_validate(response.json())


class _Base:
    def __init__(
        self, base_url: str, timeout: float, max_retries: int, api_key: str | None, max_retry_wait_s: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retry_kwargs = {
            "retry": retry_if_exception(lambda e: isinstance(e, _RetryableStatus | httpx.TransportError)),
            "stop": stop_after_attempt(max_retries + 1),
            "wait": _wait_retry_after(wait_exponential(multiplier=0.2, max=max_retry_wait_s), max_retry_wait_s),
            "reraise": True,
        }


class R2RankClient(_Base):
    """Blocking client. Use as a context manager (or call ``close()``)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        timeout: float = 60.0,
        max_retries: int = 3,
        api_key: str | None = None,
        max_retry_wait_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout, max_retries, api_key, max_retry_wait_s)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=self.headers, transport=transport)

    def __enter__(self) -> R2RankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, model: type | None, **kwargs: Any):
        try:
            for attempt in Retrying(**self.retry_kwargs):
                with attempt:
                    response = self._http.request(method, path, **kwargs)
                    if response.status_code in RETRY_STATUSES:
                        raise _RetryableStatus(response)
        except _RetryableStatus as exc:
            response = exc.response
        return _parse(response, model)

    def rank(
        self,
        candidates: Sequence[ItemLike],
        user_id: str | None = None,
        history: Sequence[ItemLike] | None = None,
        top_k: int | None = None,
        include_rationales: bool = False,
        reasoning: str = "full",
        request_id: str | None = None,
        deadline_ms: int | None = None,
        include_evidence: bool = False,
        candidate_source: str = "catalogue",
    ) -> RankResponse:
        """Rank ``candidates`` (ids, or ``{"item_id", "title"}``) for a user (stored or inline history);
        with ``deadline_ms``, items not scored in time come back ranked by a fallback (``degraded``);
        ``candidate_source="retrieval"`` where they are a recommender's top picks (models trained on them)."""
        body = rank_body(candidates, user_id, history, top_k, include_rationales, reasoning, request_id,
                         deadline_ms, include_evidence, candidate_source)  # fmt: skip
        return self._request("POST", "/rank", RankResponse, json=body)

    def put_history(self, user_id: str, items: Iterable[str | Mapping[str, Any]]) -> HistoryOut:
        return self._request(
            "PUT", f"/users/{_segment(user_id)}/history", HistoryOut, json={"items": [_item(i) for i in items]}
        )

    def get_history(self, user_id: str) -> HistoryOut:
        return self._request("GET", f"/users/{_segment(user_id)}/history", HistoryOut)

    def delete_history(self, user_id: str) -> None:
        self._request("DELETE", f"/users/{_segment(user_id)}/history", None)

    def add_event(
        self, user_id: str, item_id: str, timestamp: float | None = None, event_id: str | None = None
    ) -> EventOut:
        """Append an interaction. Without ``event_id`` one is made here, before the first try, so the client's own
        retries (after a 503 or a lost reply) store the event once."""
        body = {"item_id": item_id, "timestamp": timestamp, "event_id": event_id or f"client-{uuid.uuid4().hex}"}
        body = {k: v for k, v in body.items() if v is not None}
        return self._request("POST", f"/users/{_segment(user_id)}/events", EventOut, json=body)

    def put_items(self, items: Iterable[Mapping[str, Any]]) -> ItemsUpserted:
        return self._request("PUT", "/items", ItemsUpserted, json=[dict(i) for i in items])

    def get_item(self, item_id: str) -> CatalogItem:
        return self._request("GET", f"/items/{_segment(item_id)}", CatalogItem)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until /readyz says ready (engine loaded and warmed up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self._http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"{self.base_url} not ready after {timeout_s}s")


class AsyncR2RankClient(_Base):
    """The same API for asyncio code."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        timeout: float = 60.0,
        max_retries: int = 3,
        api_key: str | None = None,
        max_retry_wait_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout, max_retries, api_key, max_retry_wait_s)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=self.headers, transport=transport
        )

    async def __aenter__(self) -> AsyncR2RankClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, model: type | None, **kwargs: Any):
        try:
            async for attempt in AsyncRetrying(**self.retry_kwargs):
                with attempt:
                    response = await self._http.request(method, path, **kwargs)
                    if response.status_code in RETRY_STATUSES:
                        raise _RetryableStatus(response)
        except _RetryableStatus as exc:
            response = exc.response
        return _parse(response, model)

    async def rank(
        self,
        candidates: Sequence[ItemLike],
        user_id: str | None = None,
        history: Sequence[ItemLike] | None = None,
        top_k: int | None = None,
        include_rationales: bool = False,
        reasoning: str = "full",
        request_id: str | None = None,
        deadline_ms: int | None = None,
        include_evidence: bool = False,
        candidate_source: str = "catalogue",
    ) -> RankResponse:
        body = rank_body(candidates, user_id, history, top_k, include_rationales, reasoning, request_id,
                         deadline_ms, include_evidence, candidate_source)  # fmt: skip
        return await self._request("POST", "/rank", RankResponse, json=body)

    async def put_history(self, user_id: str, items: Iterable[str | Mapping[str, Any]]) -> HistoryOut:
        body = {"items": [_item(i) for i in items]}
        return await self._request("PUT", f"/users/{_segment(user_id)}/history", HistoryOut, json=body)

    async def get_history(self, user_id: str) -> HistoryOut:
        return await self._request("GET", f"/users/{_segment(user_id)}/history", HistoryOut)

    async def delete_history(self, user_id: str) -> None:
        await self._request("DELETE", f"/users/{_segment(user_id)}/history", None)

    async def add_event(
        self, user_id: str, item_id: str, timestamp: float | None = None, event_id: str | None = None
    ) -> EventOut:
        body = {"item_id": item_id, "timestamp": timestamp, "event_id": event_id or f"client-{uuid.uuid4().hex}"}
        body = {k: v for k, v in body.items() if v is not None}
        return await self._request("POST", f"/users/{_segment(user_id)}/events", EventOut, json=body)

    async def put_items(self, items: Iterable[Mapping[str, Any]]) -> ItemsUpserted:
        return await self._request("PUT", "/items", ItemsUpserted, json=[dict(i) for i in items])

    async def get_item(self, item_id: str) -> CatalogItem:
        return await self._request("GET", f"/items/{_segment(item_id)}", CatalogItem)
