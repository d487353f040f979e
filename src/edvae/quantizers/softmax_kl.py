"""KL(softmax(l) || uniform) = sum_k p_k log(K p_k) per position, with its closed-form gradient.

The regulariser of dVAE (Ramesh et al. 2021) and GS-VQ-VAE (Sonderby et al. 2017), and, minus
log K, SQ-VAE's negative entropy (Takida et al. 2022). Its gradient is
    dKL/dl_j = p_j (log p_j - sum_k p_k log p_k),
so one autograd function does in about eight passes over the (B, K, h, w) tensor what autograd
through log_softmax, exp, product and sum does in about fifteen. Probabilities are floored at
exp(-87) before they are formed (`probs_from_log`): on CPUs exp takes a ~100x slower scalar path
for subnormal results, which peaked softmaxes late in training produce by the million; values that
small change no sum.
"""

from __future__ import annotations

import math

import torch

from .base import probs_from_log


class _SoftmaxKLUniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, dim: int):
        log_p = logits.float().log_softmax(dim)
        p = probs_from_log(log_p)
        neg_entropy = (p * log_p).sum(dim, keepdim=True)
        ctx.save_for_backward(p, log_p, neg_entropy)
        ctx.dim = dim
        return neg_entropy.squeeze(dim) + math.log(logits.shape[dim])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, log_p, neg_entropy = ctx.saved_tensors
        out = (log_p - neg_entropy).mul_(p).mul_(grad.unsqueeze(ctx.dim))
        return out, None


def softmax_kl_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(softmax(logits) || uniform over the K entries of `dim`), one float32 value per position."""
    if logits.dim() == 0:
        raise ValueError("logits need at least one dimension (the categories)")
    return _SoftmaxKLUniform.apply(logits, dim)
