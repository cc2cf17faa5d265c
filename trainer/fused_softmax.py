"""Full-softmax cross-entropy over a large output vocabulary without materialising the logits.

The sequence model's loss is a softmax over every item id at every position: a (positions x items) logit
matrix, 4,096 x 16,860 floats (276 MB) per step on Games. On a CPU, writing that matrix, its log-softmax,
the gradient of both and zeroing the buffers is memory traffic, not arithmetic: it was nearly the whole of a
sequence-model step. Here the positions go through in chunks small enough to stay in cache, and each chunk's
gradient is formed in the forward pass while its logits are there (the loss is a scalar, so the gradient that
reaches it is one number, which ``backward`` multiplies in). The loss and both gradients are those of
``F.cross_entropy(hidden @ weight.T, targets)`` with one column excluded, up to float summation order
(``tests/test_seqrec.py``); ``python -m trainer.bench.seqrec_step`` times the two side by side.

Liger-Kernel and Apple's cut-cross-entropy fuse the same way, as Triton kernels for GPUs; neither runs on a
CPU, where the sequence models train.
"""

from __future__ import annotations

import math

import torch

CHUNK = 32  # positions per chunk: 32 x 16,860 floats is 2 MB and stays in cache; of 32 to 256, 32 was fastest here


class _FusedSoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, excluded, chunk):
        need_grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        count = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden) if need_grads else None
        grad_weight = torch.zeros_like(weight) if need_grads else None
        logits = hidden.new_empty(min(chunk, count), weight.shape[0])
        total = hidden.new_zeros((), dtype=torch.float64)
        for start in range(0, count, chunk):
            h, target = hidden[start : start + chunk], targets[start : start + chunk]
            rows = torch.arange(h.shape[0], device=h.device)
            block = logits[: h.shape[0]]
            torch.mm(h, weight.T, out=block)
            if excluded is not None:
                block[:, excluded] = -math.inf
            log_norm = torch.logsumexp(block, dim=1)
            total += (log_norm - block[rows, target]).sum(dtype=torch.float64)
            if need_grads:  # d loss / d logits = softmax - one-hot, per position
                block.sub_(log_norm[:, None]).exp_()
                block[rows, target] -= 1.0
                torch.mm(block, weight, out=grad_hidden[start : start + chunk])
                grad_weight.addmm_(block.T, h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.count = count
        return (total / count).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad / ctx.count
        return grad_hidden * scale, grad_weight * scale, None, None, None


def softmax_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    excluded: int | None = None,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` (N,) under the softmax of ``hidden @ weight.T`` ((N, H) @ (H, V)),
    with column ``excluded`` (a padding id) left out of every softmax. Gradients flow to ``hidden`` and
    ``weight``; the logits exist one chunk of positions at a time."""
    if hidden.shape[0] == 0:
        raise ValueError("softmax_cross_entropy of no positions")
    return _FusedSoftmaxCrossEntropy.apply(hidden, weight, targets, excluded, chunk)
