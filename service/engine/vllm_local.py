"""In-process vLLM (``AsyncLLM``) backend.

Prefix caching is on by default: all candidate prompts of one user start with the same token-exact history
prefix (see ``contract.assembly``), so the history's KV blocks are computed once per user and reused for every
candidate — and again in the scoring pass, whose input extends the generation input.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from contract.checkpoint import Checkpoint
from service.engine.base import EngineError, ReasoningEngine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalEngineOptions:
    """vLLM engine arguments the service exposes (R2RANK_* settings map onto these)."""

    dtype: str = "float32"
    max_model_len: int = 2048
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.85
    block_size: int | None = None
    seed: int = 0


CPU_BLOCK_SIZE = 32
"""KV-cache block size on CPUs. Prefix caching reuses whole blocks only: with vLLM's CPU default of 128 tokens, a
user's history prefix shorter than that is prefilled again for every candidate, and a rationale's answer read
recomputes most of its prompt. 32 is the smallest size the CPU attention kernel takes (16 fails at start-up)."""


def kv_block_size(requested: int | None) -> int | None:
    """The block size to ask vLLM for: ``requested``, else ``CPU_BLOCK_SIZE`` on CPUs and vLLM's own elsewhere."""
    if requested is not None:
        return requested
    from vllm.platforms import current_platform

    return CPU_BLOCK_SIZE if current_platform.is_cpu() else None


def rationale_sampling_params(max_tokens: int, newline_token_ids: list[int]):
    """Greedy rationale, stopped by any newline-bearing token; no detokenization while generating (the
    API process shares the CPU with the engine, so per-step detokenization costs throughput)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        temperature=0.0,
        max_tokens=max_tokens,
        stop_token_ids=newline_token_ids or None,
        detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


class LocalVLLMEngine(ReasoningEngine):
    name = "vllm-local"

    def __init__(
        self, checkpoint: Checkpoint, options: LocalEngineOptions, max_rationale_tokens: int | None = None
    ) -> None:
        super().__init__(checkpoint, max_rationale_tokens)
        self.options = options
        self._llm = None
        self._gen_params = None
        self._score_params = None

    async def start(self) -> None:
        from vllm import AsyncEngineArgs, SamplingParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        opts = self.options
        args = AsyncEngineArgs(
            model=str(self.checkpoint.path),
            dtype=opts.dtype,
            max_model_len=opts.max_model_len,
            enable_prefix_caching=opts.enable_prefix_caching,
            enforce_eager=opts.enforce_eager,
            max_num_seqs=opts.max_num_seqs,
            max_num_batched_tokens=opts.max_num_batched_tokens,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            block_size=kv_block_size(opts.block_size),
            seed=opts.seed,
            disable_log_stats=True,
        )
        # Engine construction blocks for tens of seconds (weights, compile, KV cache); keep the loop free.
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        eos = self.checkpoint.encoder.eos_token_id
        self._newline_ids = set(await asyncio.to_thread(lambda: self.prompts.stop_ids))
        self._gen_params = rationale_sampling_params(self.max_rationale_tokens, sorted(self._newline_ids))
        self._score_params = SamplingParams(
            temperature=0.0,
            max_tokens=1,
            logprob_token_ids=[self.yes_id, self.no_id],
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        logger.info("local vLLM engine ready: %s (eos=%s)", self.checkpoint.path, eos)

    async def close(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)

    def needs_restart(self) -> bool:
        return self._llm is None or self._llm.errored

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineError("engine not started")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineError(f"vLLM engine is dead: {exc!r}") from exc

    async def _final_output(self, prompt_ids: list[int], params, request_id: str):
        from vllm import TokensPrompt

        if self._llm is None:
            raise EngineError("engine not started")
        final = None
        try:
            async for output in self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id):
                final = output
        except asyncio.CancelledError:
            raise  # AsyncLLM aborts the request in the engine when its generator is cancelled
        except Exception as exc:
            raise EngineError(f"vLLM request failed: {exc!r}") from exc
        if final is None or not final.outputs:
            raise EngineError(f"vLLM returned no output for {request_id}")
        return final.outputs[0]

    async def _generate_rationale(self, prompt_ids: list[int], request_id: str, routing_key: str) -> tuple[str, int]:
        out = await self._final_output(prompt_ids, self._gen_params, request_id)
        ids = list(out.token_ids)
        if ids and ids[-1] in self._newline_ids:
            ids.pop()  # the stop token itself is not part of the rationale
        return self.checkpoint.encoder.decode(ids), len(out.token_ids)

    async def _answer_logprobs(self, prompt_ids: list[int], request_id: str, routing_key: str) -> tuple[float, float]:
        out = await self._final_output(prompt_ids, self._score_params, request_id)
        if not out.logprobs:
            raise EngineError("vLLM returned no logprobs for the answer position")
        position = out.logprobs[0]
        try:
            return position[self.yes_id].logprob, position[self.no_id].logprob
        except KeyError as exc:
            raise EngineError(f"answer token {exc} missing from vLLM logprobs") from exc
