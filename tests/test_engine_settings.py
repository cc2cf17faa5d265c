"""What the engine settings change in the engine, and in the process that builds its prompts (no engine started:
every test of the service runs on the engine these build)."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from contract.checkpoint import open_checkpoint
from service.config import REPO_ROOT, Settings
from service.engine.factory import build_engine
from service.engine.vllm_local import CPU_BLOCK_SIZE, kv_block_size


@pytest.fixture(scope="module")
def checkpoint():
    return open_checkpoint(REPO_ROOT / "models" / "default")


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_building_an_engine_keeps_blas_to_the_threads_its_settings_give(checkpoint):
    """The sequence model's forward pass runs in the process that builds prompts, beside the engine: BLAS workers
    left spinning after it take the cores the engine computes on (docs/performance.md)."""
    before = _blas_threads()
    assert before, "NumPy has no BLAS that threadpoolctl can see"
    try:
        for threads in (2, 1):
            build_engine(Settings(redis_url=None, api_blas_threads=threads), checkpoint)
            assert _blas_threads() == {threads}
    finally:
        threadpool_limits(limits=max(before))


def test_on_a_cpu_the_kv_cache_blocks_are_small_enough_to_cache_a_history_prefix():
    """vLLM's CPU default (128 tokens) caches no block of a prefix shorter than that; 32 does, and an operator's
    own choice wins."""
    assert CPU_BLOCK_SIZE == 32
    assert kv_block_size(None) == CPU_BLOCK_SIZE  # this suite runs on vLLM's CPU build
    assert kv_block_size(64) == 64


def test_the_local_engine_takes_the_block_size_setting(checkpoint):
    assert build_engine(Settings(redis_url=None), checkpoint).options.block_size is None  # the platform's default
    assert build_engine(Settings(redis_url=None, kv_block_size=64), checkpoint).options.block_size == 64
