"""What the nearest-codeword quantizers share (VQ-VAE-EMA in vq_ema.py, VQ-STE++ in vq_ste.py).

The encoder emits D channels; each latent position takes the codeword nearest in Euclidean
distance, k = argmin_k ||z - e_k||^2 (van den Oord et al. 2017, "Neural discrete representation
learning", eq. 1-2). Distances are computed in float32 even under autocast, by the expansion
||e_k||^2 - 2 z.e_k (||z||^2 does not change the argmin), in chunks of positions so that the
(positions x K) matrix stays small. Also here: per-code counts and sums of the assigned vectors,
the K-means of kmeans.py builds on them.
"""

from __future__ import annotations

import torch

from .base import Quantizer

# positions per distance chunk: the chunk's (rows x K) float32 matrix is at most 2^24 values (64 MiB)
_CHUNK_VALUES = 1 << 24


def flatten(z: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B*h*w, D), positions in (b, y, x) order."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def unflatten(flat: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(B*h*w, D) -> (B, D, h, w)."""
    return flat.view(b, h, w, flat.shape[1]).permute(0, 3, 1, 2)


@torch.no_grad()
def nearest(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codeword for each row: (N, D), (K, D) -> (N,) int64, in float32.

    Ties go to the lowest index (argmin)."""
    flat, codebook = flat.float(), codebook.float()
    with torch.autocast(device_type=flat.device.type, enabled=False):
        sq = (codebook * codebook).sum(1)
        rows = max(1, _CHUNK_VALUES // codebook.shape[0])
        out = [torch.addmm(sq, part, codebook.t(), beta=1.0, alpha=-2.0).argmin(1)
               for part in flat.split(rows)]
    return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.int64)


@torch.no_grad()
def cluster_stats(flat: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per code: how many rows chose it (K,) and the sum of those rows (K, D), both float32."""
    flat = flat.float()
    # index_add_ rather than bincount: bincount on a GPU reads the largest index back to the host
    counts = torch.zeros(k, device=flat.device, dtype=torch.float32)
    counts.index_add_(0, indices, torch.ones_like(indices, dtype=torch.float32))
    sums = torch.zeros(k, flat.shape[1], device=flat.device, dtype=torch.float32)
    sums.index_add_(0, indices, flat)
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

    logit_input = False
    default_beta_max = 0.0  # the trainer's beta is not used: these methods have no KL term

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax"):
        super().__init__(codebook_size, codebook_dim)
        if eval_mode != "argmax":  # nearest codeword: nothing to sample from
            raise ValueError(f"eval_mode must be 'argmax' for {self.name} (deterministic nearest "
                             f"codeword), got {eval_mode!r}")
        self.eval_mode = eval_mode

    def effective_codebook(self) -> torch.Tensor:
        raise NotImplementedError

    def _features(self, z_e: torch.Tensor) -> torch.Tensor:
        if z_e.dim() != 4 or z_e.shape[1] != self.codebook_dim:
            raise ValueError(f"expected features (B, {self.codebook_dim}, h, w), got {tuple(z_e.shape)}")
        return z_e.float()  # numerics in float32 even under autocast

    @torch.no_grad()
    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """The nearest codeword of each position, (B, h, w) int64."""
        z = self._features(z_e)
        b, _, h, w = z.shape
        return nearest(flatten(z), self.effective_codebook()).view(b, h, w)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        return self.effective_codebook()[indices].permute(0, 3, 1, 2)
