"""Pure metric functions over code counts and probabilities."""

from __future__ import annotations

import torch


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    return torch.bincount(indices.reshape(-1), minlength=codebook_size)


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy of the code-usage histogram); 1 when one code is used, K when all equally."""
    p = counts.double() / counts.sum().clamp_min(1)
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return float(entropy.exp())


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy (nats) of categorical distributions along `dim`."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(dim)
