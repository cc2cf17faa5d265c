"""The trainer's attention: grouped-query attention on a CPU without copying keys and values.

Qwen2 has fewer key/value heads than query heads. When a padding mask is passed, transformers' SDPA path
repeats every key/value head to the query heads (``repeat_kv``), because CUDA's fast kernels do not take a
mask and grouped heads together. That copies the whole key/value cache on every forward. In RL's sampling
loop, 160 rows share two users' history prefixes, so each decoding step copied hundreds of MB. On a CPU,
torch's SDPA takes the mask and the grouped heads together (``enable_gqa``) and gives the same result.
``python -m trainer.bench.rl_step --compare attention`` measures the difference.

Models loaded with ``load_causal_lm`` use this path on a CPU when a mask is passed. Every other case (a
GPU, no mask, no grouped heads) goes to transformers' own SDPA function unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "r2rank_sdpa"


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA with ``enable_gqa`` on a CPU with a mask; otherwise transformers' ``sdpa_attention_forward``."""
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if attention_mask is None or query.device.type != "cpu" or not grouped or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)  # fmt: skip
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, grouped_sdpa_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the same boolean masks as transformers' "sdpa"


def load_causal_lm(path: Path, device: torch.device | str = "cpu"):
    """A checkpoint's causal LM in float32 on ``device``, with the trainer's attention."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation=ATTENTION)
    return model.to(device)
