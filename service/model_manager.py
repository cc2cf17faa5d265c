"""Model refresh without downtime: load a new checkpoint beside the serving one, warm it up, swap atomically,
drain and free the old one. Rollback is the same operation towards the previous checkpoint.

A gate compares the eval metric recorded in both manifests (``metrics[GATE_METRIC]``, written by the
trainer's eval/export) and refuses a worse checkpoint unless forced. Checkpoints must live under
``R2RANK_MODELS_ROOT``: the admin endpoint reads server paths, so it is confined to one directory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from service.engine.base import EngineError, ReasoningEngine
from service.errors import ApiError

if TYPE_CHECKING:
    from service.state import ServiceState

logger = logging.getLogger(__name__)

GATE_METRIC = "ndcg@10"
DRAIN_TIMEOUT_S = 120.0


def describe(checkpoint: Checkpoint) -> dict[str, Any]:
    manifest = checkpoint.manifest
    return {
        "model_version": manifest.model_version,
        "path": str(checkpoint.path),
        "prompt_format": manifest.prompt_format,
        "metrics": manifest.metrics,
    }


class ModelManager:
    def __init__(self, state: ServiceState, models_root: Path) -> None:
        self.state = state
        self.models_root = models_root.resolve()
        self.previous: Checkpoint | None = None
        self._lock = asyncio.Lock()  # one swap at a time

    def status(self) -> dict[str, Any]:
        return {
            "current": describe(self.state.engine.checkpoint),
            "previous": describe(self.previous) if self.previous else None,
            "models_root": str(self.models_root),
        }

    def _open(self, path: str) -> Checkpoint:
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.models_root):
            raise ApiError(422, f"path: {resolved} is outside R2RANK_MODELS_ROOT ({self.models_root})",
                           "invalid_request", "path")  # fmt: skip
        try:
            return open_checkpoint(resolved)
        except CheckpointError as exc:
            raise ApiError(422, f"path: {exc}", "invalid_request", "path") from exc

    def _gate(self, new: Checkpoint, force: bool) -> None:
        old_score = self.state.engine.checkpoint.manifest.metrics.get(GATE_METRIC)
        new_score = new.manifest.metrics.get(GATE_METRIC)
        if force or old_score is None or new_score is None:
            return
        if float(new_score) < float(old_score):
            raise ApiError(409, f"{new.model_version} has {GATE_METRIC}={new_score}, worse than the serving "
                           f"{self.state.engine.model_version} ({old_score}); publish with force=true to override",
                           "eval_gate", "force")  # fmt: skip

    async def publish(self, path: str, force: bool = False) -> dict[str, Any]:
        if self.state.settings.engine != "local":
            raise ApiError(409, "hot reload swaps in-process engines; with R2RANK_ENGINE=remote, roll the vLLM "
                           "servers and restart the API pods", "unsupported", "path")  # fmt: skip
        async with self._lock:
            checkpoint = self._open(path)
            self._gate(checkpoint, force)
            return await self._swap_to(checkpoint)

    async def rollback(self) -> dict[str, Any]:
        async with self._lock:
            if self.previous is None:
                raise ApiError(409, "no previous model to roll back to", "no_previous_model")
            return await self._swap_to(self._open(str(self.previous.path)))

    async def _swap_to(self, checkpoint: Checkpoint) -> dict[str, Any]:
        from service.state import build_engine, warm_up_engine

        started = time.monotonic()
        settings = self.state.settings.model_copy(update={"model_path": checkpoint.path})
        new_engine = build_engine(settings, checkpoint)
        try:
            await new_engine.start()
            await new_engine.check_health()
            await warm_up_engine(new_engine, settings, self.state.metrics)
        except (EngineError, ApiError) as exc:
            await new_engine.close()
            raise ApiError(503, f"new model failed to start, still serving the old one: {exc}",
                           "engine_unavailable") from exc  # fmt: skip
        old_engine = self.state.engine
        self.state.swap_engine(new_engine)  # atomic for the event loop: the next request sees the new engine
        self.previous = old_engine.checkpoint
        logger.info("model swapped: %s -> %s", old_engine.model_version, new_engine.model_version)
        asyncio.create_task(self._drain_and_close(old_engine))
        return {
            "model_version": new_engine.model_version,
            "previous_model_version": old_engine.model_version,
            "load_seconds": round(time.monotonic() - started, 2),
        }

    async def _drain_and_close(self, engine: ReasoningEngine) -> None:
        """In-flight requests finish on the old engine; then its memory is freed."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        # polling two counters that many code paths decrement is simpler than an Event; 10 Hz costs nothing
        while (engine.active_requests or engine.inflight_items) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await engine.close()
        logger.info("old engine %s drained and closed", engine.model_version)
