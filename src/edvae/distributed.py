"""Collectives a quantizer needs to keep its state identical on every data-parallel replica.

DDP averages gradients, but a quantizer that changes its codebook inside the forward pass (VQ-VAE's
EMA update, K-means initialisation, dead-code replacement, an inner codebook step) must do the same
thing on every rank itself: statistics are summed over ranks before they are used, and a random
decision is drawn on rank 0 and broadcast. Every helper is a no-op (or the identity) when
torch.distributed is not initialised or holds a single process, so the same code runs unchanged in
one process.

Rules for callers: every rank must call the same collectives in the same order, so a branch that
leads to a collective may only depend on values that are already identical on all ranks (summed
statistics, buffers, options).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks, in place; returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `tensor` on every rank with rank `src`'s, in place; returns it.

    The way to make a random decision the same everywhere: draw it on rank 0, broadcast it.
    """
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0 in rank order (the global batch, when each
    rank holds a contiguous slice of it). Ranks may hold different numbers of rows."""
    if not is_distributed():
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])
