"""Pieces the training stages share: device choice, the CPU's threads (the sequence models too), a compiled
model body, the optimiser step, and the resume state that makes each stage continue where an interrupted run stopped."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)


PRECISIONS = ("auto", "bf16", "fp32")
Stage = Literal["pretrain", "sft", "rl"]
# Stages that ``auto`` runs under bf16 autocast on a CPU with bf16 hardware, because their steps are faster
# there (``python -m trainer.bench.precision`` times both stages both ways; docs/training.md has the figures:
# pre-training gains, SFT's small matmuls do not).
CPU_BF16_STAGES: frozenset[str] = frozenset({"pretrain"})


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16). Without it torch emulates
    bf16 and a bf16 matmul is slower than a float32 one."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


SHARE_CPU_UNTIL_ENV = "R2RANK_SHARE_CPU_UNTIL"


class CpuShare:
    """A stage's torch threads while another stage runs beside it on the same CPU.

    ``make train`` runs the ranker's sequence models beside ``init-model``: on a small CPU two stages on half the
    cores each do more work per second than one stage on all of them (docs/training.md, "Time"). Each is started
    with ``R2RANK_SHARE_CPU_UNTIL`` naming the file the other leaves when it ends; until that file exists, this
    stage keeps to half the threads, and once it does, ``poll`` (called between steps) takes every thread back.
    Without the variable, or once the file exists, nothing changes.
    """

    def __init__(self, until: str | Path | None = None) -> None:
        until = until if until is not None else os.environ.get(SHARE_CPU_UNTIL_ENV) or None
        self.threads = torch.get_num_threads()
        self.until = Path(until) if until is not None and not Path(until).exists() else None
        if self.until is not None:
            torch.set_num_threads(max(1, self.threads // 2))
            logger.info("sharing the CPU: %d of %d threads until %s exists", torch.get_num_threads(), self.threads,
                        self.until)  # fmt: skip

    def poll(self) -> None:
        """Take every thread back once the other stage has ended."""
        if self.until is not None and self.until.exists():
            torch.set_num_threads(self.threads)
            logger.info("%s exists: back to %d threads", self.until, self.threads)
            self.until = None


def training_device(stage: Stage) -> tuple[torch.device, torch.autocast]:
    """The device and the autocast context ``stage`` computes under.

    ``R2RANK_TRAIN_PRECISION`` picks the arithmetic; the weights and optimiser stay float32 in every case:
    - ``auto`` (default): bf16 autocast on CUDA; on a CPU, bf16 autocast for the stages in
      ``CPU_BF16_STAGES`` where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), float32 otherwise
      (without that hardware bf16 is only emulated, and slower);
    - ``bf16``: bf16 autocast in every stage, on a CPU too;
    - ``fp32``: float32 everywhere (a GPU run whose numerics are closest to a CPU run, or a CPU run that
      makes the same bytes on every CPU type).

    On CUDA it also turns off cuDNN's attention kernel for this process. Its bf16 backward returns NaN query
    gradients when an explicit mask is passed, the sequence length is 64 mod 128 and a query row attends to
    nothing, e.g. a left-pad row (pytorch/pytorch#196678, torch 2.11 on H100/H200). Padded training batches
    meet that now and then, and one NaN gradient poisons every weight. SDPA's flash and memory-efficient
    kernels then run the same attention."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
    precision = os.environ.get("R2RANK_TRAIN_PRECISION", "auto")
    if precision not in PRECISIONS:
        raise ValueError(f"R2RANK_TRAIN_PRECISION must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        bf16 = device.type == "cuda" or (stage in CPU_BF16_STAGES and cpu_has_native_bf16())
    else:
        bf16 = precision == "bf16"
    if bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning("R2RANK_TRAIN_PRECISION=bf16 on a CPU without AVX512-BF16/AMX: bf16 is emulated (slow)")
    return device, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def compile_body(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """Compile ``model``'s transformer body (``torch.compile``, dynamic shapes) when ``enabled``.

    Only the body: the stages apply the vocabulary projection themselves, and only where a loss is taken.
    Steps pad to varying lengths, so the graph is compiled for symbolic shapes once rather than per length.
    Inductor fuses the body's elementwise work, which on a small CPU model is much of a step
    (``python -m trainer.bench.compile`` times both ways). The kernels depend on the first shapes compiled,
    so a resumed run matches a straight one to float rounding, not to the byte. Where compiling fails (no
    C++ compiler, say), dynamo logs why and the step runs eagerly instead of stopping the stage. The
    weights, and what is saved, are the same module's either way."""
    if not enabled:
        return model
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    body = model.get_decoder()
    body.forward = torch.compile(body.forward, dynamic=True)
    return model


@dataclass(frozen=True)
class StepOutcome:
    """What one optimiser step did: the stages log the loss and gradient norm, and count skipped updates."""

    loss: float
    grad_norm: float  # before clipping
    applied: bool  # False: the gradient was not finite and the weights were left as they were


def optimizer_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor | Iterable[torch.Tensor]
) -> StepOutcome:
    """One clipped update. ``loss`` may be an iterable of parts that sum to the step's loss
    (micro-batches): each is backpropagated as soon as it is produced, so a lazy iterable keeps only one
    micro-batch's graph alive, and the gradients add up to those of the whole batch.

    A step whose gradient is not finite (an inf or NaN anywhere) is skipped with a warning: the weights and
    the optimiser's moments stay as they were, instead of every weight turning NaN for the rest of the run."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for part in [loss] if isinstance(loss, torch.Tensor) else loss:
        part.backward()
        total += float(part.detach())
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        logger.warning("non-finite gradient (norm %s, loss %s): update skipped, weights unchanged", norm, total)
        return StepOutcome(total, norm, applied=False)
    optimizer.step()
    return StepOutcome(total, norm, applied=True)


def save_state(path: Path, optimizer: torch.optim.Optimizer, step: int, **progress: Any) -> None:
    """Optimiser, step, torch RNG and whatever progress the stage logs (losses, RL step stats)."""
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "torch_rng": torch.get_rng_state(), **progress},
               path)  # fmt: skip


def load_state(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore optimiser and RNG from ``path`` if an earlier run left it; returns the state (or None)."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    return state
