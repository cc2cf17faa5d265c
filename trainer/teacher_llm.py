"""A teacher behind any OpenAI-compatible endpoint (a vLLM server with a large model, or a hosted API).

It writes the same kind of rationale as the built-in teacher — one line that weighs the evidence about how the
candidate relates to the history, label-blind — but with a large model's world knowledge. It sees the same
numbered history and the same ``Evidence:`` line as the ranker's prompt, and is asked to cite only those.
Requests run concurrently (bounded) and every answer is appended to a JSONL cache keyed by a hash of
(model, prompt), so a rerun, a resumed SFT or a second stage costs no requests. The SFT stage calls
``rationales`` once for all pairs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from contract.prompt import DEFAULT_MAX_HISTORY_ITEMS, clean_rationale
from trainer.data import Catalogue
from trainer.progress import Progress
from trainer.teacher import TeacherInput

logger = logging.getLogger(__name__)

Api = Literal["chat", "completions"]

SYSTEM = (
    "You explain recommendations. Given a user's history (#1 is the latest item) and one candidate item with "
    "evidence from other users, write ONE short sentence (at most 25 words) that weighs the evidence for or "
    "against the user choosing the candidate next: which link is strongest and how recent, a shared series, "
    "genre or brand, how much popularity should count. Cite history items as #k and only numbers the evidence "
    "states. End with likely, possible or unlikely."
)


def teacher_prompt(history: Sequence[str], candidate: str, evidence: str) -> str:
    """``history`` oldest first, as the ranker's prompt numbers it (the last is #1)."""
    shown = list(history[-DEFAULT_MAX_HISTORY_ITEMS:])
    lines = "\n".join(f"#{len(shown) - i} {title}" for i, title in enumerate(shown)) or "(no history)"
    return f"History (oldest first):\n{lines}\nCandidate: {candidate}\nEvidence: {evidence}\nReasoning:"


class LLMTeacher:
    def __init__(
        self,
        catalogue: Catalogue,
        base_url: str,
        model: str,
        cache_path: Path,
        api: Api = "chat",
        api_key: str = "EMPTY",
        concurrency: int = 16,
        max_tokens: int = 48,
        timeout_s: float = 120.0,
    ) -> None:
        self.catalogue = catalogue
        self.model = model
        self.api = api
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.cache_path = cache_path
        self.requests_sent = 0
        self._client_args = {"base_url": base_url.rstrip("/") + "/v1", "api_key": api_key, "timeout": timeout_s,
                             "max_retries": 5}  # fmt: skip
        self._cache: dict[str, str] = {}
        if cache_path.is_file():
            with cache_path.open(encoding="utf-8") as handle:
                for lineno, line in enumerate(handle, start=1):
                    try:
                        row = json.loads(line)
                        self._cache[row["key"]] = row["rationale"]
                    except (json.JSONDecodeError, KeyError) as exc:  # a torn last line after a crash is harmless
                        logger.warning("%s:%d: skipping unreadable cache line (%s)", cache_path, lineno, exc)

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.api}\0{self.model}\0{SYSTEM}\0{prompt}".encode()).hexdigest()

    async def _ask(self, client, prompt: str) -> str:
        self.requests_sent += 1
        if self.api == "chat":
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
            response = await client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=0.0
            )
            return response.choices[0].message.content or ""
        response = await client.completions.create(
            model=self.model, prompt=f"{SYSTEM}\n\n{prompt}", max_tokens=self.max_tokens, temperature=0.0
        )
        return response.choices[0].text

    async def _fetch_missing(self, prompts: dict[str, str]) -> None:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(**self._client_args)
        gate = asyncio.Semaphore(self.concurrency)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        progress = Progress("teacher", len(prompts), every=max(1, len(prompts) // 50), unit="rationales")
        done = 0
        with self.cache_path.open("a", encoding="utf-8") as cache:

            async def one(key: str, prompt: str) -> None:
                nonlocal done
                async with gate:
                    text = clean_rationale(await self._ask(client, prompt))
                self._cache[key] = text
                cache.write(json.dumps({"key": key, "prompt": prompt, "rationale": text}) + "\n")
                cache.flush()  # every answer is kept even if the run dies half-way
                done += 1
                progress.update(done)  # N/M with the rate and an ETA, every 2%

            try:
                await asyncio.gather(*(one(k, p) for k, p in prompts.items()))
            finally:
                await client.close()

    def rationales(self, pairs: Sequence[TeacherInput]) -> list[str]:
        """Rationales for the pairs as the ranker's prompt shows them; only uncached prompts are requested."""
        prompts = [
            teacher_prompt([item.title for item in pair.history], pair.candidate.title, pair.evidence.text())
            for pair in pairs
        ]
        keys = [self._key(p) for p in prompts]
        missing = {k: p for k, p in zip(keys, prompts, strict=True) if k not in self._cache}
        if missing:
            logger.info("teacher: %d cached, requesting %d from %s", len(keys) - len(missing), len(missing),
                        self._client_args["base_url"])  # fmt: skip
            asyncio.run(self._fetch_missing(missing))
        return [self._cache[k] for k in keys]
