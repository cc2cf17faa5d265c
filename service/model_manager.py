"""Model refresh without downtime: load a new checkpoint beside the serving one, warm it up, swap atomically,
drain and free the old one. Rollback is the same operation towards the previous checkpoint.

A gate compares the eval metric recorded in both manifests (``metrics[GATE_METRIC]``, written by the
trainer's eval/export) and refuses a worse checkpoint unless forced. Checkpoints must live under
``R2RANK_MODELS_ROOT``: the admin endpoint reads server paths, so it is confined to one directory.

With Redis and a key secret, a publish (or rollback) is fleet-wide: the replica that takes it loads and warms
the model, then records it in Redis (signed, ``service.published``), then swaps; every other replica follows
the record (``follow``, polled by the service state) and a replica that boots later boots what is recorded
(``engine_to_boot``). The record names a path, so every replica must see the same checkpoints at the same
path (a shared volume, see docs/deploy.md), and its ``model_version`` must match what a follower finds there.
A follower that cannot load it keeps serving what it has and tries again later; the gate ran once, on the
replica that took the publish. A rollback on any replica goes to the record's previous model. A record that
is unsigned, forged or malformed is logged once and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from contract.checkpoint import REFRESH_PROVENANCE, Checkpoint, CheckpointError, open_checkpoint
from service.config import Settings
from service.engine.base import ReasoningEngine
from service.engine.factory import build_engine
from service.exceptions import Conflict, EngineError, InvalidRequest, StoreUnavailable
from service.metrics import Metrics
from service.published import PublishedRecord, seal, unseal
from service.ranking import warm_up_engine
from service.store import RedisStore

logger = logging.getLogger(__name__)

GATE_METRIC = "ndcg@10"
DRAIN_TIMEOUT_S = 120.0
FOLLOW_RETRY_S = 60.0  # a record this replica failed to load is tried again after this long

EngineFactory = Callable[[Settings, Checkpoint], ReasoningEngine]


class EngineHolder(Protocol):
    """Whoever serves with an engine (the app's state): what is served now, and how to point it elsewhere."""

    engine: ReasoningEngine

    def swap_engine(self, engine: ReasoningEngine) -> None: ...


def describe(checkpoint: Checkpoint) -> dict[str, Any]:
    manifest = checkpoint.manifest
    return {
        "model_version": manifest.model_version,
        "path": str(checkpoint.path),
        "prompt_format": manifest.prompt_format,
        "metrics": manifest.metrics,
    }


def gate_score(checkpoint: Checkpoint) -> float | None:
    """The checkpoint's recorded gate metric, or None when it has none or it is not a finite number."""
    return _finite_metric(checkpoint.manifest.metrics)


def serving_gate_score(serving: Checkpoint) -> tuple[float | None, str]:
    """The score a new checkpoint must reach to replace ``serving``, and whose it is. A refresh no report can
    score (``evidence_refresh_of``) has none of its own; it is held to the last report on its weights, which
    ``r2rank-train refresh`` records, so publishing daily refreshes does not switch the gate off."""
    own = gate_score(serving)
    refresh = serving.manifest.provenance.get(REFRESH_PROVENANCE) or {}
    if own is not None or not isinstance(refresh.get("measured_metrics"), dict):
        return own, serving.model_version
    measured = refresh.get("measured_model_version", "its weights")
    return _finite_metric(refresh["measured_metrics"]), f"{serving.model_version}, as measured on {measured}"


def _finite_metric(metrics: dict[str, Any]) -> float | None:
    value = metrics.get(GATE_METRIC)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def evidence_refresh_of(serving: Checkpoint, new: Checkpoint) -> bool:
    """Whether ``new`` is the serving LLM's weights reading evidence refreshed on every interaction
    (``r2rank-train refresh`` with a ``--horizon all`` sequence model): what a product publishes as data arrives.
    Every target is in its evidence, so no report can score it; what changed is evidence that has seen more,
    which the refresh measurements in docs/training.md find worth having, not the model the gate measured."""
    refreshed = REFRESH_PROVENANCE in new.manifest.provenance
    same_weights = new.manifest.weights_version == serving.manifest.weights_version
    return refreshed and new.evidence_horizon == "all" and same_weights


def gate_refusal(serving: Checkpoint, new: Checkpoint) -> str | None:
    """Why ``new`` may not replace ``serving`` without force, or None. Scores are compared only on the same
    dataset (``data_fingerprint`` in both provenances, where recorded): another catalogue's NDCG@10 says nothing
    about this one, so a first publish of a new catalogue is a forced one. A checkpoint with no eval metrics
    (exported without ``--report``) cannot pass a gate the serving model's metrics set, unless it is the serving
    LLM refreshed on every interaction (``evidence_refresh_of``): no report can score that one."""
    (old_score, serving_name), new_score = serving_gate_score(serving), gate_score(new)
    old_data = serving.manifest.provenance.get("data_fingerprint")
    new_data = new.manifest.provenance.get("data_fingerprint")
    if old_data and new_data and old_data != new_data:
        return (
            f"{new.model_version} was trained on another dataset (fingerprint {new_data}, the serving "
            f"{serving.model_version}'s is {old_data}): their {GATE_METRIC} cannot be compared"
        )
    if old_score is None:
        return None
    if new_score is None:
        if evidence_refresh_of(serving, new):
            return None
        return (
            f"{new.model_version} has no {GATE_METRIC} in its manifest (export it with --report) and the "
            f"serving {serving_name} has {old_score}"
        )
    if new_score < old_score:
        return f"{new.model_version} has {GATE_METRIC}={new_score}, worse than the serving {serving_name} ({old_score})"
    return None


class ModelManager:
    def __init__(
        self,
        holder: EngineHolder,
        settings: Settings,
        metrics: Metrics,
        models_root: Path,
        engine_factory: EngineFactory = build_engine,
        store: RedisStore | None = None,
    ) -> None:
        self.holder = holder
        self.settings = settings
        self.metrics = metrics
        self.models_root = models_root.resolve()
        self.engine_factory = engine_factory
        self.store = store
        self.previous: Checkpoint | None = None
        self.published: PublishedRecord | None = None  # the fleet's record, as this replica last read it
        self._ignored: str | None = None  # the last unusable record seen, so it is logged once, not every poll
        self._lock = asyncio.Lock()  # one swap at a time
        self._failed: tuple[str, float] | None = None  # (model_version, when) of a record that failed to load

    def status(self) -> dict[str, Any]:
        return {
            "current": describe(self.holder.engine.checkpoint),
            "previous": describe(self.previous) if self.previous else None,
            "published": self.published.model_dump() if self.published else None,
            "models_root": str(self.models_root),
        }

    @property
    def fleet_wide(self) -> bool:
        """Publishes go through Redis (local engines only: remote engines are rolled as their own deploy), signed
        with the key secret: without one no record is written or followed."""
        return self.store is not None and self.settings.engine == "local" and self._secret is not None

    @property
    def _secret(self) -> str | None:
        secret = self.settings.key_secret
        return secret.get_secret_value() or None if secret is not None else None

    def _open(self, path: str) -> Checkpoint:
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.models_root):
            raise InvalidRequest(f"path: {resolved} is outside R2RANK_MODELS_ROOT ({self.models_root})", "path")
        try:
            return open_checkpoint(resolved)
        except CheckpointError as exc:
            raise InvalidRequest(f"path: {exc}", "path") from exc

    def _gate(self, new: Checkpoint, force: bool) -> None:
        refusal = None if force else gate_refusal(self.holder.engine.checkpoint, new)
        if refusal is not None:
            raise Conflict(f"{refusal}; publish with force=true to override", "force", "eval_gate")

    async def publish(self, path: str, force: bool = False) -> dict[str, Any]:
        if self.settings.engine != "local":
            raise Conflict("hot reload swaps in-process engines; with R2RANK_ENGINE=remote, roll the vLLM "
                           "servers and restart the API pods", "path", "unsupported")  # fmt: skip
        async with self._lock:
            checkpoint = self._open(path)
            self._gate(checkpoint, force)
            return await self._swap_to(checkpoint, record=True)

    async def rollback(self) -> dict[str, Any]:
        """Back to what the fleet served before its last publish (the record's previous model), or, without a
        fleet record, to what this replica served before its last swap."""
        async with self._lock:
            target = self.previous.path if self.previous is not None else None
            if self.fleet_wide:
                record = await self._read_record()
                if record is not None and record.previous_path is not None:
                    target = Path(record.previous_path)
            if target is None:
                raise Conflict("no previous model to roll back to", type_="no_previous_model")
            return await self._swap_to(self._open(str(target)), record=True)

    async def engine_to_boot(self, configured: ReasoningEngine) -> ReasoningEngine:
        """At start-up, before any engine runs: an engine for the published checkpoint when Redis records one
        other than ``configured``'s (which is then never started); else ``configured``. Redis unreachable or
        the record unusable: ``configured``, and ``follow`` adopts the record later."""
        if not self.fleet_wide:
            return configured
        try:
            checkpoint = await self._published_checkpoint(configured.checkpoint)
        except (StoreUnavailable, InvalidRequest) as exc:
            logger.warning("booting the configured model, not the published one: %s", exc)
            return configured
        if checkpoint is None:
            return configured
        logger.info("booting the published model %s instead of the configured %s", checkpoint.model_version,
                    configured.model_version)  # fmt: skip
        return self.engine_factory(self.settings.model_copy(update={"model_path": checkpoint.path}), checkpoint)

    async def follow(self) -> None:
        """Adopt the fleet's published model if it is not what this replica serves (called every few seconds)."""
        if not self.fleet_wide or self._lock.locked():
            return
        try:
            checkpoint = await self._published_checkpoint(self.holder.engine.checkpoint)
        except StoreUnavailable:
            return  # the store watcher reports Redis; serving goes on with what is loaded
        except InvalidRequest as exc:
            logger.warning("not following the published model: %s", exc)
            return
        if checkpoint is None:
            return
        failed = self._failed
        if failed and failed[0] == checkpoint.model_version and time.monotonic() - failed[1] < FOLLOW_RETRY_S:
            return
        async with self._lock:
            try:
                result = await self._swap_to(checkpoint, record=False)
            except EngineError as exc:
                self._failed = (checkpoint.model_version, time.monotonic())
                logger.error("could not follow the published model %s: %s", checkpoint.model_version, exc)
                return
        self._failed = None
        logger.info("followed the published model: %s", result)

    async def _published_checkpoint(self, serving: Checkpoint) -> Checkpoint | None:
        """The checkpoint Redis records as published (confined to the models root, its version verified), or
        None when nothing is recorded or the record names ``serving``. That is checked on the path before
        opening anything: this runs every few seconds, and opening a checkpoint loads its tokenizer."""
        record = await self._read_record()
        if record is None:
            return None
        path, claimed = record.path, record.model_version
        if path == str(serving.path):  # records hold resolved paths, as publishes write them
            return None
        checkpoint = await asyncio.to_thread(self._open, path)  # off the event loop: disk and tokenizer load
        if checkpoint.path == serving.path:
            return None
        if checkpoint.model_version != claimed:
            raise InvalidRequest(f"path: {checkpoint.path} holds {checkpoint.model_version}, the record says "
                                 f"{claimed}: replicas do not see the same checkpoints", "path")  # fmt: skip
        return checkpoint

    async def _read_record(self) -> PublishedRecord | None:
        """The fleet's record if Redis holds one signed with this fleet's secret; anything else is ignored, and
        logged once (it is read every few seconds)."""
        raw = await self.store.get_published_model()
        record = unseal(self._secret, raw) if raw and self._secret else None
        if raw and record is None and raw != self._ignored:
            logger.warning("ignoring the published-model record in Redis: not signed with this fleet's "
                           "R2RANK_KEY_SECRET, or not of the record's shape")  # fmt: skip
        self._ignored = raw if record is None else None
        self.published = record
        return record

    async def _load(self, checkpoint: Checkpoint) -> ReasoningEngine:
        """A started, healthy, warmed-up engine for ``checkpoint``; whatever fails, nothing is left running."""
        settings = self.settings.model_copy(update={"model_path": checkpoint.path})
        new_engine = self.engine_factory(settings, checkpoint)
        try:
            await new_engine.start()
            await new_engine.check_health()
            await warm_up_engine(new_engine, settings, self.metrics)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the new engine must not keep running
            await new_engine.close()
            raise EngineError(f"new model failed to start, still serving the old one: {exc}") from exc
        return new_engine

    async def _swap_to(self, checkpoint: Checkpoint, record: bool) -> dict[str, Any]:
        """Load, then (``record``: fleet-wide) write the record, then swap. A record that cannot be written
        leaves this replica on its old model too, so the fleet never splits."""
        started = time.monotonic()
        new_engine = await self._load(checkpoint)
        old_engine = self.holder.engine
        if record and self.fleet_wide:
            entry = PublishedRecord(
                path=str(checkpoint.path),
                model_version=checkpoint.model_version,
                previous_path=str(old_engine.checkpoint.path),
                previous_model_version=old_engine.model_version,
                published_at=time.time(),
            )
            try:
                await self.store.set_published_model(seal(self._secret, entry))
            except StoreUnavailable:
                await new_engine.close()
                raise
            self.published = entry
        self.holder.swap_engine(new_engine)  # atomic for the event loop: the next request sees the new engine
        self.previous = old_engine.checkpoint
        logger.info("model swapped: %s -> %s", old_engine.model_version, new_engine.model_version)
        asyncio.create_task(self._drain_and_close(old_engine))
        return {
            "model_version": new_engine.model_version,
            "previous_model_version": old_engine.model_version,
            "load_seconds": round(time.monotonic() - started, 2),
            "fleet_wide": bool(record and self.fleet_wide),
        }

    async def _drain_and_close(self, engine: ReasoningEngine) -> None:
        """In-flight requests finish on the old engine; then its memory is freed."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        # polling two counters that many code paths decrement is simpler than an Event; 10 Hz costs nothing
        while (engine.active_requests or engine.inflight_items) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await engine.close()
        logger.info("old engine %s drained and closed", engine.model_version)
