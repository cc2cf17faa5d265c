"""API keys with scopes and rates. Off by default for the local demo; the deploy manifests turn it on.

Keys are never stored or configured in clear: settings and Redis hold ``sha256(key)`` hex digests. Two sources:

- ``R2RANK_API_KEYS='{"<sha256>": ["rank"]}'``: configured, trusted as given;
- Redis (``P:apikeys``), written by ``r2rank-serve keys add``: each entry carries an HMAC over its digest,
  scopes and rates, made with the server secret ``R2RANK_KEY_SECRET``. An entry whose MAC does not verify is
  not honoured, so write access to Redis is not admin access; without the secret no Redis key is honoured.

A request presents its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Scopes:

- ``rank``: POST /rank, /v1|v2/rerank, and reading histories and items;
- ``ingest``: writing histories, events and the catalogue (an ingestion job needs no more);
- ``admin``: everything, model administration included.

Redis is asked on every request (a revocation holds from the next request on); a key it verified is also
remembered, and while Redis is unreachable it keeps working for up to ``KEY_CACHE_STALE_S`` after it was last
verified, so ranking with Redis-issued keys survives a Redis outage as inline ranking does.

Missing or unknown key → 401; known key without the scope → 403; over its rate → 429. Health and metrics stay
open. Routes built with ``AuthenticatedRoute`` check the key before their body is read: an unauthenticated
caller cannot make the service parse a JSON body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.exceptions import Forbidden, StoreUnavailable, Unauthenticated
from service.store import RedisStore

logger = logging.getLogger(__name__)

Scope = Literal["rank", "ingest", "admin"]
SCOPES: tuple[Scope, ...] = ("rank", "ingest", "admin")
KEY_CACHE_STALE_S = 600.0
KEY_CACHE_SIZE = 10_000
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


@dataclass(frozen=True)
class KeyEntry:
    """What a key may do: its scopes, and its rates (None: unlimited, requests and candidate items per second)."""

    scopes: frozenset[str]
    name: str | None = None
    requests_per_s: float | None = None
    items_per_s: float | None = None
    created: float = field(default_factory=time.time)

    def payload(self, digest: str) -> dict[str, Any]:
        return {"digest": digest, "scopes": sorted(self.scopes), "name": self.name,
                "requests_per_s": self.requests_per_s, "items_per_s": self.items_per_s,
                "created": self.created}  # fmt: skip


def sign(secret: str, digest: str, entry: KeyEntry) -> str:
    message = json.dumps(entry.payload(digest), sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def encode_entry(secret: str, digest: str, entry: KeyEntry) -> str:
    return json.dumps({**entry.payload(digest), "mac": sign(secret, digest, entry)}, sort_keys=True)


def decode_entry(secret: str | None, digest: str, raw: str) -> KeyEntry | None:
    """The entry, if it was written with ``secret`` for this digest; None for anything else (forged, edited,
    moved to another digest, written before keys were signed, or no secret configured)."""
    if not secret:
        return None
    try:
        data = json.loads(raw)
        entry = KeyEntry(frozenset(data["scopes"]), data.get("name"), data.get("requests_per_s"),
                         data.get("items_per_s"), float(data["created"]))  # fmt: skip
        mac = str(data["mac"])
    except (ValueError, KeyError, TypeError):
        return None
    # bytes: compare_digest raises on a str with non-ASCII characters, and the stored mac is untrusted
    if data.get("digest") != digest or not hmac.compare_digest(mac.encode(), sign(secret, digest, entry).encode()):
        return None
    if not entry.scopes <= set(SCOPES):
        return None
    return entry


class KeyStore:
    """Resolves a presented key to its entry: configured hashes first, then signed entries in Redis."""

    def __init__(self, configured: dict[str, list[str]], store: RedisStore | None, secret: str | None = None) -> None:
        self.configured = {digest.lower(): KeyEntry(frozenset(scopes), created=0.0)
                           for digest, scopes in configured.items()}  # fmt: skip
        self.store = store
        self.secret = secret
        self._verified: OrderedDict[str, tuple[KeyEntry, float]] = OrderedDict()  # digest -> (entry, when)

    async def entry(self, key: str) -> KeyEntry | None:
        digest = hash_key(key)
        for known, entry in self.configured.items():
            if hmac.compare_digest(known, digest):
                return entry
        if self.store is None or not self.secret:
            return None
        try:
            raw = await self.store.get_api_key(digest)
        except StoreUnavailable:
            cached = self._verified.get(digest)
            if cached and time.monotonic() - cached[1] < KEY_CACHE_STALE_S:
                return cached[0]  # verified before Redis went away: an outage does not unmake the key
            raise
        entry = decode_entry(self.secret, digest, raw) if raw is not None else None
        if raw is not None and entry is None:
            logger.warning("an API key entry in Redis failed its signature check; not honoured (digest %s...)",
                           digest[:8])  # fmt: skip
        self._remember(digest, entry)
        return entry

    def _remember(self, digest: str, entry: KeyEntry | None) -> None:
        self._verified.pop(digest, None)
        if entry is not None:
            self._verified[digest] = (entry, time.monotonic())
            while len(self._verified) > KEY_CACHE_SIZE:
                self._verified.popitem(last=False)

    async def scopes(self, key: str) -> set[str] | None:
        entry = await self.entry(key)
        return set(entry.scopes) if entry is not None else None

    def _require_store(self) -> RedisStore:
        if self.store is None:
            raise RuntimeError("no Redis store configured (R2RANK_REDIS_URL)")
        if not self.secret:
            raise RuntimeError("R2RANK_KEY_SECRET is not set: keys in Redis must be signed with the server secret")
        return self.store

    async def add(
        self, scopes: list[str], name: str | None = None, requests_per_s: float | None = None,
        items_per_s: float | None = None,
    ) -> str:  # fmt: skip
        """Create a key in Redis; returns it (the only time it is ever seen in clear)."""
        store = self._require_store()
        key = new_key()
        digest = hash_key(key)
        entry = KeyEntry(frozenset(scopes), name, requests_per_s, items_per_s)
        await store.put_api_key(digest, encode_entry(self.secret or "", digest, entry))
        return key

    async def list(self) -> dict[str, KeyEntry | None]:
        """Every key entry in Redis by digest (None: an entry whose signature does not verify)."""
        store = self._require_store()
        return {digest: decode_entry(self.secret, digest, raw) for digest, raw in (await store.api_keys()).items()}

    async def revoke(self, digest_prefix: str) -> list[str]:
        """Delete the Redis entries whose digest starts with ``digest_prefix`` (at least 8 characters)."""
        if len(digest_prefix) < 8:
            raise ValueError("give at least 8 characters of the key's sha256 (r2rank-serve keys list shows them)")
        store = self._require_store()
        matches = [d for d in await store.api_keys() if d.startswith(digest_prefix.lower())]
        for digest in matches:
            await store.delete_api_key(digest)
        return matches


def require(scope: Scope):
    """FastAPI dependency: the request carries a key with ``scope`` (admin implies every scope), within its
    rate; the key's entry is left on ``request.state.api_key`` for the item-rate check."""

    async def check(request: Request) -> None:
        state = request.app.state.r2rank
        if not state.settings.auth_enabled or getattr(request.state, "key_checked", False):
            return
        key = _presented_key(request)
        if key is None:
            state.metrics.rejected.labels("unauthenticated").inc()
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        try:
            entry = await state.keys.entry(key)
        except StoreUnavailable as exc:
            raise StoreUnavailable("cannot verify API key right now: the key store is unreachable") from exc
        if entry is None:
            state.metrics.rejected.labels("unauthenticated").inc()
            raise Unauthenticated("unknown API key")
        if scope not in entry.scopes and "admin" not in entry.scopes:  # admin may do everything
            state.metrics.rejected.labels("forbidden").inc()
            raise Forbidden(f"this API key lacks the {scope!r} scope")
        request.state.api_key = (hash_key(key), entry)
        request.state.key_checked = True  # once per request: the route ran it before the body, not again after
        await state.rates.take_request(hash_key(key), entry)

    check.auth_scope = scope  # type: ignore[attr-defined]  # what AuthenticatedRoute looks for
    return check


class AuthenticatedRoute(APIRoute):
    """A route that runs its ``require`` checks before FastAPI reads and parses the request body (FastAPI
    parses the body first, then resolves dependencies): a request without a valid key costs no JSON parse and
    learns nothing about the schema. The checks stay dependencies too (OpenAPI, and routes built otherwise)."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        gates = [d.call for d in self.dependant.dependencies if getattr(d.call, "auth_scope", None)]
        if not gates:
            return handler

        async def authenticated_first(request: Request) -> Response:
            for gate in gates:
                await gate(request)
            return await handler(request)

        return authenticated_first
