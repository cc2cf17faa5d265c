"""API keys with scopes. Off by default for the local demo; the deploy manifests turn it on.

Keys are never stored or configured in clear: settings and Redis hold ``sha256(key)`` hex digests mapped to
scopes (``R2RANK_API_KEYS='{"<sha256>": ["rank"]}'`` or ``r2rank-serve add-key``). A request presents its key
as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Scopes:

- ``rank``: POST /rank, /v1|v2/rerank, and reading histories and items;
- ``admin``: everything ``rank`` may, plus writes (histories, events, catalogue) and model administration.

Missing or unknown key → 401; known key without the scope → 403. Health and metrics stay open.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal

from fastapi import Request

from service.exceptions import Forbidden, StoreUnavailable, Unauthenticated
from service.store import RedisStore

Scope = Literal["rank", "admin"]
SCOPES: tuple[Scope, ...] = ("rank", "admin")
KEY_PREFIX = "r2r_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None


class KeyStore:
    """Resolves a presented key to its scopes: configured hashes first, then Redis (``P:apikeys``)."""

    def __init__(self, configured: dict[str, list[str]], store: RedisStore | None) -> None:
        self.configured = {digest.lower(): set(scopes) for digest, scopes in configured.items()}
        self.store = store

    async def scopes(self, key: str) -> set[str] | None:
        digest = hash_key(key)
        for known, scopes in self.configured.items():
            if hmac.compare_digest(known, digest):
                return scopes
        if self.store is None:
            return None
        stored = await self.store.get_api_key_scopes(digest)
        return set(stored) if stored is not None else None

    async def add(self, scopes: list[str]) -> str:
        """Create a key in Redis; returns it (the only time it is ever seen in clear)."""
        if self.store is None:
            raise RuntimeError("no Redis store configured")
        key = new_key()
        await self.store.put_api_key(hash_key(key), scopes)
        return key


def require(scope: Scope):
    """FastAPI dependency: the request carries a key with ``scope`` (admin implies every scope)."""

    async def check(request: Request) -> None:
        state = request.app.state.r2rank
        if not state.settings.auth_enabled:
            return
        key = _presented_key(request)
        if key is None:
            state.metrics.rejected.labels("unauthenticated").inc()
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        try:
            scopes = await state.keys.scopes(key)
        except StoreUnavailable as exc:
            raise StoreUnavailable("cannot verify API key right now: the key store is unreachable") from exc
        if scopes is None:
            state.metrics.rejected.labels("unauthenticated").inc()
            raise Unauthenticated("unknown API key")
        if scope not in scopes and "admin" not in scopes:
            state.metrics.rejected.labels("forbidden").inc()
            raise Forbidden(f"this API key lacks the {scope!r} scope")

    return check
