"""Engine construction: the backend the settings ask for, importing vLLM only for the in-process one."""

from __future__ import annotations

from contract.checkpoint import Checkpoint
from service.config import Settings
from service.engine.base import ReasoningEngine


def build_engine(settings: Settings, checkpoint: Checkpoint) -> ReasoningEngine:
    """An engine for ``checkpoint`` (not started: ``await engine.start()`` loads or connects it). The process
    that serves it builds prompts, and runs the sequence model, beside it: its BLAS threads are set here."""
    settings.apply_blas_threads()
    if settings.engine == "remote":
        from service.engine.vllm_remote import RemoteVLLMEngine

        return RemoteVLLMEngine(
            checkpoint,
            base_url=settings.engine_url or "",
            served_model_name=settings.engine_model_name,
            timeout_s=settings.engine_timeout_s,
            api_key=settings.engine_api_key,
            max_rationale_tokens=settings.max_rationale_tokens,
            batched=settings.engine_batch,
        )
    from service.engine.vllm_local import LocalEngineOptions, LocalVLLMEngine

    settings.apply_vllm_cpu_env()
    options = LocalEngineOptions(
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        enable_prefix_caching=settings.enable_prefix_caching,
        enforce_eager=settings.enforce_eager,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        block_size=settings.kv_block_size,
    )
    return LocalVLLMEngine(checkpoint, options, max_rationale_tokens=settings.max_rationale_tokens)
