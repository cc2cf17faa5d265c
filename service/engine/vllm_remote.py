"""Remote backend: a vLLM OpenAI-compatible server (``vllm serve MODEL``) reached over HTTP.

Lets the GPU engines scale separately from the stateless API replicas. The service tokenizes locally with
the checkpoint's own tokenizer (it has the checkpoint directory for the manifest anyway) and sends token-id
prompts to ``/v1/completions``, so the server sees exactly the ids the contract defines — including the
shared history prefix its prefix cache keys on. Answer log-probs come back via vLLM's
``logprob_token_ids`` extension, keyed ``token_id:<id>`` thanks to ``return_tokens_as_token_ids``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from contract.checkpoint import Checkpoint
from contract.prompt import RATIONALE_STOP
from service.engine.base import EngineError, ReasoningEngine

logger = logging.getLogger(__name__)


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
    ) -> None:
        super().__init__(checkpoint, max_rationale_tokens)
        self.base_url = base_url.rstrip("/")
        self.served_model_name = served_model_name
        self.timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s), pool=None)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client: httpx.AsyncClient | None = None
        self._stop_ids: list[int] = []

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
        try:
            response = await self._http().get("/health", timeout=5.0)
        except httpx.HTTPError as exc:
            raise EngineError("remote engine unreachable", detail=f"{self.base_url}: {exc!r}") from exc
        if response.status_code != 200:
            raise EngineError(f"remote engine unhealthy: HTTP {response.status_code}", detail=self.base_url)
        if self.served_model_name is None:
            await self._discover_model()

    async def _discover_model(self) -> None:
        models = (await self._post_or_get("GET", "/v1/models")).get("data", [])
        if not models:
            raise EngineError("remote engine serves no model", detail=self.base_url)
        self.served_model_name = models[0]["id"]

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineError("remote engine client not started")
        return self._client

    async def _post_or_get(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await self._http().request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise EngineError(
                f"remote engine call failed: {type(exc).__name__}", detail=f"{self.base_url}{path}: {exc!r}"
            ) from exc
        if response.status_code != 200:
            raise EngineError(f"remote engine answered HTTP {response.status_code}",
                              detail=f"{self.base_url}{path}: {response.text[:300]}")  # fmt: skip
        return response.json()

    async def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.served_model_name is None:
            await self._discover_model()
        payload = await self._post_or_get("POST", "/v1/completions", {"model": self.served_model_name, **body})
        choices = payload.get("choices") or []
        if not choices:
            raise EngineError("remote engine returned no choices")
        return {"choice": choices[0], "usage": payload.get("usage") or {}}

    async def _generate_rationale(self, prompt_ids: list[int], request_id: str) -> tuple[str, int]:
        result = await self._completion(
            {
                "prompt": prompt_ids,
                "max_tokens": self.max_rationale_tokens,
                "temperature": 0.0,
                "stop": [RATIONALE_STOP],
                "stop_token_ids": self._stop_ids,
                "skip_special_tokens": True,
                "request_id": request_id,
            }
        )
        return result["choice"].get("text", ""), int(result["usage"].get("completion_tokens", 0))

    async def _answer_logprobs(self, prompt_ids: list[int], request_id: str) -> tuple[float, float]:
        result = await self._completion(
            {
                "prompt": prompt_ids,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": 2,
                "logprob_token_ids": [self.yes_id, self.no_id],
                "return_tokens_as_token_ids": True,
                "request_id": request_id,
            }
        )
        logprobs = result["choice"].get("logprobs") or {}
        top = (logprobs.get("top_logprobs") or [None])[0] or {}
        try:
            return float(top[f"token_id:{self.yes_id}"]), float(top[f"token_id:{self.no_id}"])
        except KeyError as exc:
            raise EngineError(f"remote engine omitted answer token {exc} from logprobs") from exc
