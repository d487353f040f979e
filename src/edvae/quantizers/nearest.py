"""What the nearest-codeword quantizers share (VQ-VAE-EMA, VQ-STE++, SimVQ).

The encoder emits D channels; each latent position takes the codeword nearest in Euclidean
distance, k = argmin_k ||z - e_k||^2 (van den Oord et al. 2017, "Neural discrete representation
learning", eq. 1-2). Distances are computed in float32 even under autocast, by the expansion
||e_k||^2 - 2 z.e_k (||z||^2 does not change the argmin), in chunks of positions so that the
(positions x K) matrix stays small (`best_per_row`, which IBQ's dot products share). Also here:
per-code counts and sums of the assigned vectors, the K-means of kmeans.py builds on them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..distributed import all_reduce_sum_
from .base import Quantizer
from .base import flatten as flatten  # re-exported: callers import it from here too

# positions per distance chunk: the chunk's (rows x K) float32 matrix is at most 2^24 values (64 MiB)
_CHUNK_VALUES = 1 << 24


def chunk_rows(k: int) -> int:
    """Rows per chunk of a (rows x k) matrix of scores."""
    return max(1, _CHUNK_VALUES // k)


def best_per_row(flat: torch.Tensor, k: int, best: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`best(part)`, the (rows,) int64 code of each row of `part`, over chunks of `chunk_rows(k)`
    rows of `flat` (N, D), so that no (N x K) matrix is formed: (N,) int64."""
    out = [best(part) for part in flat.split(chunk_rows(k))]
    return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.int64)


@torch.no_grad()
def nearest(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codeword for each row: (N, D), (K, D) -> (N,) int64, in float32.

    Ties go to the lowest index (argmin)."""
    flat, codebook = flat.float(), codebook.float()
    with torch.autocast(device_type=flat.device.type, enabled=False):
        sq = (codebook * codebook).sum(1)
        return best_per_row(flat, codebook.shape[0],
                            lambda part: torch.addmm(sq, part, codebook.t(), beta=1.0, alpha=-2.0).argmin(1))


@torch.no_grad()
def cluster_stats(flat: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per code: how many rows chose it (K,) and the sum of those rows (K, D), both float32, over
    the rows of every data-parallel rank (distributed.py)."""
    flat = flat.float()
    # index_add_ rather than bincount: bincount on a GPU reads the largest index back to the host
    counts = torch.zeros(k, device=flat.device, dtype=torch.float32)
    counts.index_add_(0, indices, torch.ones_like(indices, dtype=torch.float32))
    sums = torch.zeros(k, flat.shape[1], device=flat.device, dtype=torch.float32)
    sums.index_add_(0, indices, flat)
    all_reduce_sum_(counts)
    all_reduce_sum_(sums)
    return counts, sums


@torch.no_grad()
def random_rows(points: torch.Tensor, n: int) -> torch.Tensor:
    """n rows of `points` drawn with the global RNG: distinct rows when there are enough,
    otherwise with replacement."""
    m = points.shape[0]
    if m >= n:
        pick = torch.randperm(m, device=points.device)[:n]
    else:
        pick = torch.randint(m, (n,), device=points.device)
    return points[pick]


class NearestCodewordQuantizer(Quantizer):
    """Base of the deterministic VQ quantizers: D input channels, hard nearest-codeword codes.

    Subclasses hold the codebook and define `effective_codebook()` (the K x D vectors actually
    used, e.g. after VQ-STE++'s affine reparameterisation) and `forward`.
    """

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax"):
        super().__init__(codebook_size, codebook_dim)
        if eval_mode != "argmax":  # nearest codeword: nothing to sample from
            raise ValueError(f"eval_mode must be 'argmax' for {self.name} (deterministic nearest "
                             f"codeword), got {eval_mode!r}")

    @torch.no_grad()
    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """The nearest codeword of each position, (B, h, w) int64."""
        flat, shape = self._rows(z_e)
        return nearest(flat, self.effective_codebook()).view(shape)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        return self.effective_codebook()[indices].permute(0, 3, 1, 2)
