"""What the app holds while it runs: the checkpoint, the engine, the ranker, readiness."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from service.auth import KeyStore
from service.config import Settings
from service.engine.base import EngineError, ReasoningEngine
from service.metrics import Metrics
from service.model_manager import ModelManager
from service.ranking import Ranker, warm_up_engine
from service.rates import KeyRates
from service.store import RedisStore, StoreUnavailable

logger = logging.getLogger(__name__)

HEALTH_CHECK_INTERVAL_S = 2.0
HEALTH_CHECK_TIMEOUT_S = 5.0  # an engine (or router) that takes longer to answer its health check is unhealthy
STORE_CHECK_INTERVAL_S = 2.0


@dataclass
class ServiceState:
    settings: Settings
    engine: ReasoningEngine
    metrics: Metrics
    ranker: Ranker
    store: RedisStore | None = None
    keys: KeyStore | None = None
    rates: KeyRates | None = None
    models: ModelManager | None = None
    ready: bool = False
    not_ready_reason: str | None = "starting"
    _warmup_task: asyncio.Task | None = field(default=None, repr=False)
    _store_task: asyncio.Task | None = field(default=None, repr=False)
    _follow_task: asyncio.Task | None = field(default=None, repr=False)
    _store_ok: bool | None = field(default=None, repr=False)  # None: not checked yet

    @classmethod
    def create(cls, settings: Settings, engine: ReasoningEngine) -> ServiceState:
        metrics = Metrics()
        store = build_store(settings)
        ranker = Ranker(engine, settings, metrics, store)
        secret = settings.key_secret.get_secret_value() if settings.key_secret else None
        keys = KeyStore(settings.api_keys, store, secret)
        rates = KeyRates(settings.max_candidates, metrics, store)
        state = cls(settings=settings, engine=engine, metrics=metrics, ranker=ranker, store=store, keys=keys,
                    rates=rates)  # fmt: skip
        models_root = settings.models_root or Path(settings.model_path).resolve().parent
        state.models = ModelManager(state, settings, metrics, models_root, store=store)
        state._publish_model_info()
        metrics.engine_inflight.set_function(lambda: state.engine.inflight_items)
        return state

    def _publish_model_info(self) -> None:
        checkpoint = self.engine.checkpoint
        self.metrics.model.info(
            {
                "model_version": checkpoint.model_version,
                "prompt_format": checkpoint.manifest.prompt_format,
                "engine": self.engine.name,
            }
        )

    def swap_engine(self, engine: ReasoningEngine) -> None:
        """Point the service at another (started, warmed-up) engine; requests already running keep theirs."""
        self.engine = engine
        self.ranker.engine = engine
        self._publish_model_info()

    def store_status(self) -> dict[str, object]:
        """Redis reachability as the background check last saw it, reported apart from the engine (inline /rank
        works without Redis). Read without waiting: a slow Redis cannot make a readiness probe time out."""
        if self.store is None:
            return {"configured": False, "ok": False, "detail": "no store configured"}
        if self._store_ok is None:
            return {"configured": True, "ok": False, "detail": "not checked yet"}
        return {"configured": True, "ok": self._store_ok, "detail": None if self._store_ok else "unreachable"}

    async def _watch_store(self) -> None:
        """Ping Redis every few seconds; failures are logged with their cause, which replies never carry."""
        while True:
            try:
                await self.store.ping()
                if self._store_ok is False:
                    logger.info("redis reachable again")
                self._store_ok = True
            except StoreUnavailable as exc:
                if self._store_ok is not False:
                    logger.warning("redis unreachable: %s", exc.detail or exc)
                self._store_ok = False
            await asyncio.sleep(STORE_CHECK_INTERVAL_S)

    async def start(self) -> None:
        """Start the engine (blocking: a local engine that cannot load should stop the process), then warm up
        and supervise in the background, so a remote engine that is still booting does not keep the API from
        starting and a failed engine is brought back without a process restart. The engine started is the
        fleet's published model where Redis records one (a replica the autoscaler adds boots what is served)."""
        booted = await self.models.engine_to_boot(self.engine)
        if booted is not self.engine:
            self.swap_engine(booted)  # the configured engine was never started: nothing to close
        await self.engine.start()
        self._warmup_task = asyncio.create_task(self._supervise())
        if self.store is not None:
            self._store_task = asyncio.create_task(self._watch_store())
        if self.models.fleet_wide and self.settings.model_sync_interval_s > 0:
            self._follow_task = asyncio.create_task(self._follow_published())

    async def _follow_published(self) -> None:
        """Every few seconds, once ready: serve the fleet's published model if this replica does not yet."""
        while True:
            await asyncio.sleep(self.settings.model_sync_interval_s)
            if self.ready:
                await self.models.follow()

    def _set_ready(self, ready: bool, reason: str | None) -> None:
        if self.ready and not ready:
            logger.warning("not ready: %s", reason)
        self.ready, self.not_ready_reason = ready, reason
        self.metrics.ready.set(1 if ready else 0)

    async def _supervise(self) -> None:
        """Warm up; then health-check every few seconds, each check bounded in time. On failure or a stall: not
        ready, restart (local engine) or reconnect (remote) with exponential backoff, warm up again, ready
        again. ``/readyz`` reads what this loop last saw and never waits on the engine itself."""
        while True:
            await self._warm_up()
            while True:
                await asyncio.sleep(HEALTH_CHECK_INTERVAL_S)
                try:
                    await self._check_health()
                except EngineError as exc:
                    self._set_ready(False, f"engine unhealthy: {exc}")
                    break

    async def _check_health(self) -> None:
        """The engine's health check, bounded in time: a stalled engine or router is an unhealthy one."""
        try:
            await asyncio.wait_for(self.engine.check_health(), HEALTH_CHECK_TIMEOUT_S)
        except TimeoutError as exc:
            raise EngineError(f"no health answer within {HEALTH_CHECK_TIMEOUT_S:g} s") from exc

    async def _warm_up(self) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(EngineError), wait=wait_exponential(multiplier=0.5, max=10), reraise=True
        ):
            with attempt:
                try:
                    if self.engine.needs_restart() and self.settings.engine_restart:
                        logger.warning("restarting the %s engine", self.engine.name)
                        self.metrics.engine_restarts.inc()
                        await self.engine.restart()
                    await self._check_health()
                    await warm_up_engine(self.engine, self.settings, self.metrics)
                except EngineError as exc:
                    self._set_ready(False, f"warm-up failed: {exc}")
                    logger.warning("warm-up failed (will retry): %s", exc)
                    raise
        self._set_ready(True, None)
        logger.info("ready: model_version=%s", self.engine.model_version)

    async def stop(self) -> None:
        self._set_ready(False, "shutting down")
        for task in (self._warmup_task, self._store_task, self._follow_task):
            if task is not None and not task.done():
                task.cancel()
        await self.engine.close()
        if self.store is not None:
            await self.store.close()


def build_store(settings: Settings) -> RedisStore | None:
    if not settings.redis_url:
        return None
    return RedisStore(
        settings.redis_url,
        prefix=settings.redis_prefix,
        history_max=settings.history_max,
        user_ttl_s=settings.user_ttl_s,
        score_ttl_s=settings.score_cache_ttl_s,
        timeout_s=settings.redis_timeout_s,
    )
