"""Subnormal floats flushed to zero on the CPU while training.

Late in training, the gradients that flow back from a peaked softmax (dVAE, GS-VQ-VAE) are full
of subnormal floats (below 1.2e-38), and x86 CPUs take a slow microcode path for every
arithmetic operation on one: the convolutions' backward pass of a dVAE run grows several times
slower (docs/results.md). Flushing them to zero (FTZ/DAZ) changes values below 1.2e-38 only.

The mode is a per-thread CPU setting. torch.set_flush_denormal sets it on the calling thread, and
threads created afterwards inherit it. torch creates its CPU thread pool at a process's first
parallel operation: `edvae train` sets the mode before that, so every thread flushes; a library
caller that ran parallel CPU work before training keeps the old mode in the pool's threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_SMALLEST_NORMAL = 1.1754943508222875e-38  # float32


def denormals_flushed() -> bool:
    """Whether this thread flushes subnormal floats to zero: half the smallest normal float32 is
    subnormal, and reads back as 0 when the mode is on."""
    return float(torch.tensor([_SMALLEST_NORMAL]).mul(0.5).item()) == 0.0


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush subnormal floats to zero inside the block (when `enabled` and the CPU supports it),
    then restore the mode found on entry."""
    before = denormals_flushed()
    if enabled and not before:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled and not before:
            torch.set_flush_denormal(False)
