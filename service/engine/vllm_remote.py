"""Remote backend: a vLLM OpenAI-compatible server (``vllm serve MODEL``) reached over HTTP.

Lets the GPU engines scale separately from the stateless API replicas. The service tokenizes locally with
the checkpoint's own tokenizer (it has the checkpoint directory for the manifest anyway) and sends token-id
prompts to ``/v1/completions``, so the server sees exactly the ids the contract defines — including the
shared history prefix its prefix cache keys on. Answer log-probs come back via vLLM's
``logprob_token_ids`` extension, keyed ``token_id:<id>`` thanks to ``return_tokens_as_token_ids``.

A request's items go out as two calls (``/v1/completions`` takes a list of prompts): every rationale, then
every answer read, instead of two calls per item; ``batched=False`` keeps the per-item calls (the benchmark's
baseline). Every call carries the user's routing key as ``X-User-ID``, the header ``vllm-router``'s
``consistent_hash`` policy keys on, so all of a user's prompts meet the same engine's prefix cache.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from contract.checkpoint import Checkpoint
from contract.prompt import RATIONALE_STOP
from service.engine.base import EngineError, ItemRejected, ReasoningEngine

logger = logging.getLogger(__name__)

ROUTING_HEADER = "X-User-ID"  # second in vllm-router's consistent_hash key order, after X-Session-ID
RETRIED_STATUSES = frozenset({502, 503, 504})  # a router whose worker just died, an engine restarting
ROUTER_READINESS = "/readiness"  # vllm-router: 200 while at least one engine is healthy
CALL_ATTEMPTS = 4  # greedy calls are idempotent; 0.5 + 1 + 2 s of backoff outlasts the router ejecting a dead engine


class TransientEngineError(EngineError):
    """A refused connection or a 502/503/504: worth another try (the deadline still bounds every try)."""


class RemoteVLLMEngine(ReasoningEngine):
    name = "vllm-remote"

    def __init__(
        self,
        checkpoint: Checkpoint,
        base_url: str,
        served_model_name: str | None = None,
        timeout_s: float = 60.0,
        api_key: str | None = None,
        max_connections: int = 512,
        max_rationale_tokens: int | None = None,
        batched: bool = True,
    ) -> None:
        super().__init__(checkpoint, max_rationale_tokens)
        self.batched = batched
        self.base_url = base_url.rstrip("/")
        # the name the server must serve this checkpoint under: its model_version (`--served-model-name`), so scores
        # from a server on another checkpoint are never labelled with this one's version
        self.served_model_name = served_model_name or checkpoint.model_version
        self.timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s), pool=None)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client: httpx.AsyncClient | None = None
        self._stop_ids: list[int] = []
        self._health_path = ROUTER_READINESS

    async def start(self) -> None:
        self._stop_ids = await asyncio.to_thread(lambda: self.prompts.stop_ids)
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, limits=self.limits, headers=self.headers
        )
        logger.info("remote vLLM engine at %s (model %s)", self.base_url, self.served_model_name)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def check_health(self) -> None:
        """Healthy = able to serve. Behind vllm-router that is its ``/readiness`` (at least one healthy engine):
        its ``/health`` is 503 while any one engine is down, which would take the whole API out with it. A plain
        vLLM server has no ``/readiness`` (404), so its ``/health`` is asked instead."""
        try:
            response = await self._http().get(self._health_path, timeout=5.0)
            if response.status_code == 404 and self._health_path == ROUTER_READINESS:
                self._health_path = "/health"
                response = await self._http().get(self._health_path, timeout=5.0)
        except httpx.HTTPError as exc:
            raise EngineError("remote engine unreachable", detail=f"{self.base_url}: {exc!r}") from exc
        if response.status_code != 200:
            raise EngineError(f"remote engine unhealthy: HTTP {response.status_code}", detail=self.base_url)
        await self._check_served_model()

    async def _check_served_model(self) -> None:
        """The server must serve this API's checkpoint: a rolled or mis-copied engine on other weights makes the
        API unready rather than label its scores with this checkpoint's version."""
        served = [m.get("id") for m in (await self._post_or_get("GET", "/v1/models")).get("data", [])]
        if self.served_model_name not in served:
            raise EngineError(
                f"remote engine serves {served}, not this API's checkpoint {self.served_model_name}: start vLLM on "
                "the same checkpoint with --served-model-name <its model_version> (deploy/ does)",
                detail=self.base_url,
            )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineError("remote engine client not started")
        return self._client

    async def _post_or_get(
        self, method: str, path: str, body: dict[str, Any] | None = None, routing_key: str = ""
    ) -> dict[str, Any]:
        """One engine call, tried up to ``CALL_ATTEMPTS`` times on a transient failure. A read timeout is not
        retried: the engine is working, and a second try would only wait as long again."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientEngineError),
            stop=stop_after_attempt(CALL_ATTEMPTS),
            wait=wait_exponential(multiplier=0.5, max=2.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._call(method, path, body, routing_key)
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def _call(self, method: str, path: str, body: dict[str, Any] | None, routing_key: str) -> dict[str, Any]:
        headers = {ROUTING_HEADER: routing_key} if routing_key else None
        try:
            response = await self._http().request(method, path, json=body, headers=headers)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise TransientEngineError(f"remote engine call failed: {type(exc).__name__}",
                                       detail=f"{self.base_url}{path}: {exc!r}") from exc  # fmt: skip
        except httpx.HTTPError as exc:
            raise EngineError(
                f"remote engine call failed: {type(exc).__name__}", detail=f"{self.base_url}{path}: {exc!r}"
            ) from exc
        if response.status_code == 400:  # vLLM's answer to a prompt it will not take (too long, bad ids)
            raise ItemRejected("remote engine rejected the prompt", detail=f"{path}: {response.text[:300]}")
        if response.status_code != 200:
            error = TransientEngineError if response.status_code in RETRIED_STATUSES else EngineError
            raise error(f"remote engine answered HTTP {response.status_code}",
                        detail=f"{self.base_url}{path}: {response.text[:300]}")  # fmt: skip
        return response.json()

    async def _completions(
        self, prompts: list[list[int]], body: dict[str, Any], request_id: str, routing_key: str
    ) -> list[dict[str, Any] | None]:
        """One ``/v1/completions`` call for ``prompts``; its choices in prompt order. The API rejects the whole
        list when one prompt is bad, so a rejected batch is retried item by item and only the bad items are
        ``None``."""
        if not prompts:
            return []
        request = {"model": self.served_model_name, "prompt": prompts, "request_id": request_id, **body}
        try:
            payload = await self._post_or_get("POST", "/v1/completions", request, routing_key)
        except ItemRejected:
            if len(prompts) == 1:
                raise
            return await self._each(self._one_choice(body), prompts, request_id, routing_key)
        choices = sorted(payload.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise EngineError(f"remote engine returned {len(choices)} choices for {len(prompts)} prompts")
        return choices

    def _one_choice(self, body: dict[str, Any]):
        async def one(prompt_ids: list[int], request_id: str, routing_key: str) -> dict[str, Any]:
            (choice,) = await self._completions([prompt_ids], body, request_id, routing_key)
            return choice

        return one

    def _rationale_body(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_rationale_tokens,
            "temperature": 0.0,
            "stop": [RATIONALE_STOP],
            "stop_token_ids": self._stop_ids,
            "skip_special_tokens": True,
            "return_token_ids": True,
        }

    def _answer_body(self) -> dict[str, Any]:
        return {
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 2,
            "logprob_token_ids": [self.yes_id, self.no_id],
            "return_tokens_as_token_ids": True,
        }

    @staticmethod
    def _rationale(choice: dict[str, Any]) -> tuple[str, int]:
        return choice.get("text", ""), len(choice.get("token_ids") or [])

    def _answer(self, choice: dict[str, Any]) -> tuple[float, float]:
        logprobs = choice.get("logprobs") or {}
        top = (logprobs.get("top_logprobs") or [None])[0] or {}
        try:
            return float(top[f"token_id:{self.yes_id}"]), float(top[f"token_id:{self.no_id}"])
        except KeyError as exc:
            raise EngineError(f"remote engine omitted answer token {exc} from logprobs") from exc

    async def _generate_rationale(self, prompt_ids: list[int], request_id: str, routing_key: str) -> tuple[str, int]:
        (choice,) = await self._completions([prompt_ids], self._rationale_body(), request_id, routing_key)
        return self._rationale(choice)

    async def _answer_logprobs(self, prompt_ids: list[int], request_id: str, routing_key: str) -> tuple[float, float]:
        (choice,) = await self._completions([prompt_ids], self._answer_body(), request_id, routing_key)
        return self._answer(choice)

    async def _generate_rationales(
        self, prompts: list[list[int]], request_id: str, routing_key: str
    ) -> list[tuple[str, int] | None]:
        choices = await self._completions(prompts, self._rationale_body(), request_id, routing_key)
        return [None if c is None else self._rationale(c) for c in choices]

    async def _answer_logprobs_many(
        self, prompts: list[list[int]], request_id: str, routing_key: str
    ) -> list[tuple[float, float] | None]:
        choices = await self._completions(prompts, self._answer_body(), request_id, routing_key)
        return [None if c is None else self._answer(c) for c in choices]
