"""GM-VQ's initialisation from encoder outputs: the spread that gates it, the K-means codebook and
the maximum-likelihood sigma_z (docs/gm-vq.md, section 6).

Every statistic is over the global batch (summed over data-parallel ranks), so every rank takes the
same decision and sets the same state. Rows are (N, D) float32 encoder outputs, one per latent
position. The K-means itself is kmeans.py's (k-means++ seeding, Lloyd iterations, empty clusters
relocated); only its seed is drawn here.
"""

from __future__ import annotations

import torch

from ..distributed import all_reduce_sum_
from . import kmeans
from .nearest import nearest


@torch.no_grad()
def encoder_spread(flat: torch.Tensor) -> torch.Tensor:
    """The standard deviation of the rows across positions, root-mean over the D channels:
    sqrt(mean_d Var_n(x_nd)), a float32 scalar tensor. 0 for a constant encoder, whatever its
    offset. Two passes (the global mean, then the squared deviations from it), so that a large
    common offset does not cancel the variance away in float32."""
    flat = flat.float()
    totals = torch.cat([flat.sum(0), flat.new_tensor([float(flat.shape[0])])])
    all_reduce_sum_(totals)
    mean = totals[:-1] / totals[-1]
    squares = (flat - mean).pow(2).sum().reshape(1)
    all_reduce_sum_(squares)
    return (squares[0] / (totals[-1] * flat.shape[1])).sqrt()


@torch.no_grad()
def kmeans_codebook(flat: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """K-means centres (K, D) of the rows of every rank (kmeans.py). The k-means++ seed is drawn
    from the global CPU generator (which the trainer reseeds every step), so a run is reproducible;
    kmeans.py seeds on rank 0 and broadcasts."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)))  # a CPU draw: no device synchronisation
    return kmeans.kmeans(flat.float(), k, iters=iters, seed=seed).centroids


@torch.no_grad()
def ml_prior_variance(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """sigma_z^2 = sum over the global batch of min_c ||x - mu_c||^2 / (N D): the maximum-likelihood
    shared isotropic variance of the mixture with hard (nearest-mean) assignments. 0 when every
    row sits on a mean. A float32 scalar tensor."""
    flat, mu = flat.float(), codebook.float()
    totals = torch.stack([(flat - mu[nearest(flat, mu)]).pow(2).sum(), flat.new_tensor(float(flat.numel()))])
    all_reduce_sum_(totals)
    return totals[0] / totals[1]
