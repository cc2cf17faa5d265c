"""Redis state: user histories, the item catalogue, the score cache, keys, the published model, the engine budget.

Key layout (one configurable prefix ``P``, default ``r2r``; a user's keys share one hash tag, made from a
digest of the user id, so no id can break the key's shape and the multi-key scripts below touch one slot):

    P:{u:<sha256(user_id)[:24]>}:hist  ZSET  member "<seq:012d>|<item_id>", score = event timestamp (s)
                                  -> history ordered by (timestamp, arrival); the same item may recur
    P:{u:<sha256(user_id)[:24]>}:ev    ZSET  event_id -> seq, the last EVENT_IDS_KEPT ids: idempotent appends
    P:{u:<sha256(user_id)[:24]>}:seq   STRING arrival counter
    P:items                 HASH  item_id -> JSON {"title", ...extra fields}
    P:pop                   ZSET  item_id -> interactions seen (events and stored histories), best effort:
                                  the cheap fallback signal when a ranking misses its deadline
    P:sc:{<fingerprint>}    HASH  "<item_id>|<segment hash>" -> JSON {"s": score, "r": rationale|null,
                                  "w": 1 when the rationale was withheld}
                                  fingerprint = sha256(model_version, prompt_format, stats_version, reasoning,
                                  rationale cap, the exact history prefix text); the field hashes the
                                  candidate's whole segment (title and evidence); every key has a TTL
    P:apikeys               HASH  sha256(API key) -> JSON entry (scopes, rates, name, created) with an HMAC
                                  by the server secret (``r2rank-serve keys add``; unsigned entries refused)
    P:model:published       STRING the fleet's published-model record, signed (``service.published``)
    P:{engine}:leases       ZSET  lease id -> expiry (Unix s): the engine budget shared by every API pod
    P:{engine}:lease-items  HASH  lease id -> items the lease holds
    P:rate:{<key digest>:<kind>}  HASH  tokens, updated (Redis time): a key's request or item rate, shared by
                                  every API pod; expires when idle

This class owns every key: nothing else in the service builds a key or calls the Redis client. Every write
is one atomic script or MULTI, so a 2xx means the whole write is in Redis. Failures raise
``StoreUnavailable`` (the API answers 503); reads for the score cache degrade to misses instead.

Calls are retried (twice, with backoff) only where a repeat cannot change the result: reads, replacements,
upserts, deletes, and event appends, which always carry an event id (one is made before the first try when
the caller sent none), so a retry after a lost reply finds the event already stored. The popularity counts,
which a repeat would double, are sent once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from service.exceptions import StoreUnavailable

__all__ = ["CachedScore", "HistoryEntry", "RedisStore", "StoreUnavailable"]

logger = logging.getLogger(__name__)

EVENT_IDS_KEPT = 1000
ITEM_BATCH = 1000

_APPEND_EVENT = """
-- KEYS: hist, ev, seq   ARGV: item_id, timestamp ('' = Redis server time), event_id ('' = none),
--                             history_max, ttl_s (0 = none), event_ids_kept
if ARGV[3] ~= '' and redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  return {0, redis.call('ZCARD', KEYS[1])}
end
local ts = ARGV[2]
if ts == '' then
  local now = redis.call('TIME')
  ts = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], ts, string.format('%012d', seq) .. '|' .. ARGV[1])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], seq, ARGV[3])
  local extra_ev = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
  if extra_ev > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra_ev - 1) end
end
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1) end
if tonumber(ARGV[5]) > 0 then
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
end
return {1, redis.call('ZCARD', KEYS[1])}
"""

_REPLACE_HISTORY = """
-- KEYS: hist, ev, seq   ARGV: history_max, ttl_s, then pairs (timestamp, item_id) oldest first
redis.call('DEL', KEYS[1], KEYS[2])
local n = (#ARGV - 2) / 2
for i = 0, n - 1 do
  local seq = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[1], ARGV[3 + 2 * i], string.format('%012d', seq) .. '|' .. ARGV[4 + 2 * i])
end
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1) end
if tonumber(ARGV[2]) > 0 then
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
end
return redis.call('ZCARD', KEYS[1])
"""


_TAKE_TOKENS = """
-- KEYS: bucket (HASH tokens, updated)   ARGV: rate per s, capacity, tokens wanted
-- A token bucket shared by every API pod: refilled by the Redis clock, so pods' clocks never disagree.
-- Returns 0 when the tokens were taken, else the milliseconds until they would be (nothing taken).
local rate, capacity, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or capacity
local updated = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= wanted then tokens = tokens - wanted else wait = math.ceil((wanted - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return wait
"""


_ADMIT_ENGINE_ITEMS = """
-- KEYS: leases (ZSET lease -> expiry), items (HASH lease -> items)   ARGV: lease, items, limit, now, expiry
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
for _, lease in ipairs(expired) do redis.call('HDEL', KEYS[2], lease) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
  return 1
end
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(v) end
if total + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class HistoryEntry:
    item_id: str
    timestamp: float


@dataclass(frozen=True)
class CachedScore:
    score: float
    rationale: str | None
    rationale_withheld: bool = False


def score_cache_fingerprint(
    model_version: str,
    prompt_format: str,
    stats_version: str,
    reasoning: str,
    max_rationale_tokens: int,
    prefix_text: str,
    sequence_version: str | None = None,
) -> str:
    """Identifies everything the model saw before the candidate: a new event changes ``prefix_text``, a new
    checkpoint changes ``model_version``, new statistics ``stats_version``, a new sequence model
    ``sequence_version`` (whose next-item rank the candidate's evidence states); any of them gives a new key, so
    a stale score is never served."""
    digest = hashlib.sha256()
    parts = (model_version, prompt_format, stats_version, reasoning, str(max_rationale_tokens), prefix_text)
    for part in (*parts, sequence_version or ""):
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def score_cache_field(item_id: str, candidate_segment: str) -> str:
    """The candidate's part of the prompt (its title and evidence) is part of its cache field."""
    return f"{item_id}|{hashlib.sha256(candidate_segment.encode()).hexdigest()[:16]}"


def _decoded_item(raw: str) -> dict[str, Any] | None:
    """A catalogue entry as ``put_items`` writes it (a JSON object with a string title), else None."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    ok = isinstance(data, dict) and isinstance(data.get("title"), str) and "item_id" not in data
    return data if ok else None


def _decoded_score(raw: str) -> CachedScore | None:
    """A score cache entry as ``put_scores`` writes it (a finite score, a string rationale or none), else None."""
    try:
        data = json.loads(raw)
        score = float(data["s"])
    except (ValueError, KeyError, TypeError):
        return None
    rationale = data.get("r")
    if not math.isfinite(score) or not (rationale is None or isinstance(rationale, str)):
        return None
    return CachedScore(score, rationale, bool(data.get("w")))


class RedisStore:
    def __init__(
        self,
        url: str,
        prefix: str = "r2r",
        history_max: int = 50,
        user_ttl_s: int | None = None,
        score_ttl_s: int = 86400,
        timeout_s: float = 0.5,
    ) -> None:
        self.prefix = prefix
        self.history_max = history_max
        self.user_ttl_s = user_ttl_s or 0
        self.score_ttl_s = score_ttl_s
        self.client = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
            retry_on_timeout=True,
            health_check_interval=15,
        )
        self._once = Redis.from_url(  # for the writes a repeat would change: never retried
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(), retries=0), retry_on_timeout=False,
        )  # fmt: skip
        self._append = self.client.register_script(_APPEND_EVENT)
        self._replace = self.client.register_script(_REPLACE_HISTORY)
        self._admit_engine = self.client.register_script(_ADMIT_ENGINE_ITEMS)  # idempotent by lease: retried
        self._take_tokens = self._once.register_script(_TAKE_TOKENS)  # a repeat would take twice: never retried

    # --- keys -------------------------------------------------------------------------------------------
    def _user_keys(self, user_id: str) -> list[str]:
        tag = f"{self.prefix}:{{u:{hashlib.sha256(user_id.encode()).hexdigest()[:24]}}}"
        return [f"{tag}:hist", f"{tag}:ev", f"{tag}:seq"]

    @property
    def _items_key(self) -> str:
        return f"{self.prefix}:items"

    @property
    def _popularity_key(self) -> str:
        return f"{self.prefix}:pop"

    def _score_key(self, fingerprint: str) -> str:
        return f"{self.prefix}:sc:{{{fingerprint}}}"

    @property
    def _api_keys_key(self) -> str:
        return f"{self.prefix}:apikeys"

    @property
    def _published_model_key(self) -> str:
        return f"{self.prefix}:model:published"

    # --- lifecycle ----------------------------------------------------------------------------------------
    async def ping(self) -> None:
        await self._call(self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
        await self._once.aclose()

    async def _call(self, awaitable, write: str | None = None):
        """Await a Redis call; a failure becomes ``StoreUnavailable`` (for a write: saying nothing was stored)."""
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}"  # may name the host: logged, never replied
            if write is not None:  # a lost or late reply: the write may have happened; a repeat is harmless
                raise StoreUnavailable(f"redis did not confirm {write}; retrying the same request is safe",
                                       detail=detail) from exc  # fmt: skip
            raise StoreUnavailable("redis unavailable", detail=detail) from exc

    # --- rates --------------------------------------------------------------------------------------------
    async def take_tokens(self, bucket: str, rate: float, capacity: float, wanted: float) -> float:
        """Take ``wanted`` tokens from the fleet-wide bucket ``bucket``: 0.0, or the seconds until they would be
        there (nothing taken)."""
        key = f"{self.prefix}:rate:{{{bucket}}}"
        wait_ms = await self._call(self._take_tokens(keys=[key], args=[rate, capacity, wanted]))
        return int(wait_ms) / 1000.0

    # --- histories --------------------------------------------------------------------------------------
    async def get_history(self, user_id: str) -> list[HistoryEntry]:
        rows = await self._call(self.client.zrange(self._user_keys(user_id)[0], 0, -1, withscores=True))
        return [HistoryEntry(member.split("|", 1)[1], float(score)) for member, score in rows]

    async def replace_history(
        self, user_id: str, entries: Sequence[tuple[str, float]], count_popularity: bool = True
    ) -> int:
        """``count_popularity=False``: the caller sets the counts itself (a bulk load, which must be idempotent)."""
        args: list[Any] = [self.history_max, self.user_ttl_s]
        for item_id, timestamp in entries:
            args += [repr(float(timestamp)), item_id]
        length = int(await self._call(self._replace(keys=self._user_keys(user_id), args=args), "replacing the history"))
        if count_popularity:
            kept = sorted(range(len(entries)), key=lambda i: (float(entries[i][1]), i))[-self.history_max :]
            await self._count_interactions([entries[i][0] for i in sorted(kept)])  # only what the history keeps
        return length

    async def set_popularity(self, counts: Mapping[str, int]) -> None:
        """Set (not add to) the popularity counts of these items: a rerun of the same bulk load changes nothing."""
        rows = list(counts.items())
        for start in range(0, len(rows), ITEM_BATCH):
            mapping = {item: float(count) for item, count in rows[start : start + ITEM_BATCH]}
            await self._call(self.client.zadd(self._popularity_key, mapping), "setting popularity counts")

    async def append_event(
        self, user_id: str, item_id: str, timestamp: float | None, event_id: str | None
    ) -> tuple[bool, int]:
        """Returns (stored, history length); ``stored`` is False for an event id seen before. An event without an
        id gets one here, before the first try, so a retry of this call stores it once."""
        made_here = event_id is None
        event_id = event_id or f"auto-{uuid.uuid4().hex}"
        args = [
            item_id, "" if timestamp is None else repr(float(timestamp)), event_id or "",
            self.history_max, self.user_ttl_s, EVENT_IDS_KEPT,
        ]  # fmt: skip
        stored, length = await self._call(self._append(keys=self._user_keys(user_id), args=args), "appending the event")
        stored = stored or made_here  # an id made here can only have been stored by this call's earlier try
        if stored:
            await self._count_interactions([item_id])
        return bool(stored), int(length)

    async def _count_interactions(self, item_ids: Sequence[str]) -> None:
        """Popularity counts for the deadline fallback. Best effort and outside the per-user script: it lives
        on another cluster slot, and a failure here must not turn a stored write into an error."""
        if not item_ids:
            return
        try:
            async with self._once.pipeline(transaction=False) as pipe:
                for item_id in item_ids:
                    pipe.zincrby(self._popularity_key, 1, item_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.warning("popularity count skipped: %s", exc)

    async def delete_history(self, user_id: str) -> bool:
        return bool(await self._call(self.client.delete(*self._user_keys(user_id)), "deleting the history"))

    # --- catalogue ----------------------------------------------------------------------------------------
    async def upsert_items(self, items: Iterable[dict[str, Any]]) -> int:
        """One MULTI for the whole call: either every item is stored or the call fails."""
        rows = {str(item["item_id"]): json.dumps({k: v for k, v in item.items() if k != "item_id"}) for item in items}
        if not rows:
            return 0
        async with self.client.pipeline(transaction=True) as pipe:
            fields = list(rows.items())
            for start in range(0, len(fields), ITEM_BATCH):
                pipe.hset(self._items_key, mapping=dict(fields[start : start + ITEM_BATCH]))
            await self._call(pipe.execute(), "storing the items")
        return len(rows)

    async def count_items(self) -> int:
        return int(await self._call(self.client.hlen(self._items_key)))

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored items among ``item_ids``; an entry that is not an item's JSON (corrupt, or written by
        something else) counts as missing and is logged, never a 500."""
        if not item_ids:
            return {}
        values = await self._call(self.client.hmget(self._items_key, list(item_ids)))
        found = {}
        for item_id, raw in zip(item_ids, values, strict=True):
            if raw is not None and (item := _decoded_item(raw)) is not None:
                found[item_id] = item
            elif raw is not None:
                logger.warning("catalogue entry %r in Redis is not an item; treated as missing", item_id)
        return found

    async def get_popularity(self, item_ids: Sequence[str]) -> dict[str, float]:
        """Interaction counts of these items (0 for unseen), one ZMSCORE."""
        if not item_ids:
            return {}
        counts = await self._call(self.client.zmscore(self._popularity_key, list(item_ids)))
        return {item_id: float(c or 0.0) for item_id, c in zip(item_ids, counts, strict=True)}

    # --- the published model (every API replica serves it) -------------------------------------------------
    async def get_published_model(self) -> str | None:
        """The record as stored (``service.published`` checks its signature and shape)."""
        return await self._call(self.client.get(self._published_model_key))

    async def set_published_model(self, sealed: str) -> None:
        await self._call(self._once.set(self._published_model_key, sealed), "publishing the model")

    # --- score cache --------------------------------------------------------------------------------------
    async def get_scores(self, fingerprint: str, fields: Sequence[str]) -> dict[str, CachedScore]:
        values = await self._call(self.client.hmget(self._score_key(fingerprint), list(fields)))
        found = {}
        for field, raw in zip(fields, values, strict=True):
            if raw is not None and (cached := _decoded_score(raw)) is not None:
                found[field] = cached
            elif raw is not None:
                logger.warning("score cache entry %r is not a score; treated as a miss", field[:64])
        return found

    async def put_scores(self, fingerprint: str, scores: dict[str, CachedScore]) -> None:
        if not scores:
            return
        key = self._score_key(fingerprint)
        mapping = {
            field: json.dumps({"s": s.score, "r": s.rationale, **({"w": 1} if s.rationale_withheld else {})})
            for field, s in scores.items()
        }
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.score_ttl_s)
            await self._call(pipe.execute())

    # --- API keys (entries are signed by service.auth; the store only keeps them) ---------------------------
    async def get_api_key(self, key_digest: str) -> str | None:
        """The entry stored for a key's sha256 digest, or None for an unknown key."""
        return await self._call(self.client.hget(self._api_keys_key, key_digest))

    async def put_api_key(self, key_digest: str, entry: str) -> None:
        await self._call(self.client.hset(self._api_keys_key, key_digest, entry), "storing the key")

    async def api_keys(self) -> dict[str, str]:
        return await self._call(self.client.hgetall(self._api_keys_key))

    async def delete_api_key(self, key_digest: str) -> bool:
        return bool(await self._call(self.client.hdel(self._api_keys_key, key_digest), "revoking the key"))

    # --- the engine budget shared by every API pod (remote engines) -------------------------------------
    # One lease per admitted request, with an expiry: a lease whose release is lost (a dropped reply, a pod
    # that died or stalled) frees its items when it expires, and admitting or releasing one lease twice (a
    # retry after a lost reply) changes nothing, so the budget cannot leak or go negative.
    @property
    def _engine_keys(self) -> list[str]:
        return [f"{self.prefix}:{{engine}}:leases", f"{self.prefix}:{{engine}}:lease-items"]

    async def admit_engine_items(self, lease: str, items: int, limit: int, now: float, expires: float) -> bool:
        """Take ``items`` of the global engine budget under ``lease`` until ``expires`` (Unix seconds) if the
        live leases' total stays within ``limit``; expired leases are dropped first. Idempotent by lease."""
        args = [lease, items, limit, now, expires]
        return bool(await self._call(self._admit_engine(keys=self._engine_keys, args=args), "admitting work"))

    async def release_engine_items(self, lease: str) -> None:
        """Give a lease's items back (idempotent: a retried or repeated release is harmless)."""
        leases, lease_items = self._engine_keys
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(leases, lease)
            pipe.hdel(lease_items, lease)
            await self._call(pipe.execute(), "releasing work")

    async def engine_items_in_flight(self, now: float) -> int:
        """Items held by leases that have not expired (what the next admission counts)."""
        leases, lease_items = self._engine_keys
        live = await self._call(self.client.zrangebyscore(leases, now, "+inf"))
        values = await self._call(self.client.hmget(lease_items, live)) if live else []
        return sum(int(v) for v in values if v is not None)

    # --- maintenance --------------------------------------------------------------------------------------
    async def delete_prefix(self, keep_api_keys: bool = True) -> int:
        """Delete every key under the prefix (tests and demo resets); the API keys stay unless asked otherwise."""
        deleted = 0
        async for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
            if keep_api_keys and key == self._api_keys_key:
                continue
            deleted += await self.client.delete(key)
        return deleted
