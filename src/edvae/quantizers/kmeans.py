"""K-means with k-means++ seeding, in float32, that data-parallel replicas run together; and the
K-means initialisation of a quantizer's codebook from encoder outputs.

- Seeding: k-means++ (Arthur and Vassilvitskii, "k-means++: the advantages of careful seeding",
  SODA 2007): the first centre is a uniformly drawn point, each next one a point drawn with
  probability proportional to D(x)^2, its squared distance to the nearest centre chosen so far.
  The draws come from a generator seeded with `seed` (not the global RNG), so the result is a
  function of (points, k, seed).
- Lloyd iterations (Lloyd 1982): assign every point to its nearest centre, move every centre to
  the mean of its points, until no centre moves or `iters` is reached. Nearest search, counts and
  sums are nearest.py's (float32 even under autocast).
- Empty clusters: a centre that receives no point is moved onto one of the points farthest from
  their own centre (the largest contributions to the inertia, as scikit-learn relocates them),
  distinct points for distinct empty centres. Fewer distinct points than centres: k-means++ then
  draws duplicates (uniformly, once every D(x)^2 is 0) and some centres stay equal.
- Data parallel (distributed.py): every rank passes its own rows. The seeding runs on rank 0 over
  the rows of all ranks (gathered in rank order) and is broadcast; each Lloyd iteration sums the
  per-centre counts and sums (and the relocation candidates) over ranks. Every rank ends with the
  same centres, those one process computes on the concatenated rows with the same seed (up to
  the rounding of sums taken in another order).

The pretrain-then-quantize recipe (Representation collapsing problems in vector quantization,
arXiv 2411.16550) uses `init_codebook_from_encoder`: train the
autoencoder without quantization, then set the codebook to the K-means centres of the encoder
outputs of a few training batches (train.pretrain_steps in train.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..distributed import all_gather_cat, all_reduce_sum_, broadcast_, rank
from .base import flatten, is_int
from .nearest import cluster_stats, nearest

# training batches whose encoder outputs the codebook is initialised from (ours: with 8x8 latents
# and batch 128, 4 batches give 32768 vectors, 64 per code of a 512-code book)
INIT_BATCHES = 4
# Lloyd iterations of that initialisation (ours; they stop earlier once no centre moves)
INIT_ITERS = 20


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (K, D) float32
    counts: torch.Tensor  # (K,) float32: points (of all ranks) nearest to each centre
    inertia: float  # sum over all points of the squared distance to the nearest centre
    iterations: int  # Lloyd iterations run


def _check(points: torch.Tensor, k: int) -> torch.Tensor:
    if points.dim() != 2:
        raise ValueError(f"points must be (N, D), got shape {tuple(points.shape)}")
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return points.detach().float()


def _squared_distances(points: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """||x - c||^2 per row, by the difference (exact 0 for a copy of the centre)."""
    return (points - centre).pow(2).sum(1)


@torch.no_grad()
def kmeans_pp_init(points: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k-means++ seeds (K, D) float32 from the rows of `points` (N, D) of every rank."""
    points = _check(points, k)
    with torch.autocast(device_type=points.device.type, enabled=False):
        everything = all_gather_cat(points)  # the rows of all ranks, in rank order
        centres = torch.empty(k, points.shape[1], device=points.device, dtype=torch.float32)
        if rank() == 0:  # drawn once, broadcast
            centres.copy_(_seed_on_one_process(everything, k, seed))
        broadcast_(centres)
    return centres


def _seed_on_one_process(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    n = points.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one point")
    # k uniform numbers from a seeded CPU generator: the same draws on every device, no host sync
    u = torch.rand(k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    wide = torch.float32 if points.device.type == "mps" else torch.float64  # mps has no float64
    u = u.to(points.device, wide)
    last = n - 1
    centres = torch.empty(k, points.shape[1], device=points.device, dtype=torch.float32)
    first = (u[0] * n).long().clamp_max(last)
    centres[0] = points[first]
    d2 = _squared_distances(points, centres[0])
    for j in range(1, k):
        cumulative = d2.to(wide).cumsum(0)
        total = cumulative[-1]
        # the first point whose cumulative weight exceeds u * total: probability D(x)^2 / total
        # (a point of weight 0 is never chosen); all weights 0: a uniform draw
        by_weight = torch.searchsorted(cumulative, (u[j] * total).view(1), right=True)[0]
        uniform = (u[j] * n).long()
        pick = torch.where(total > 0, by_weight, uniform).clamp_max(last)
        centres[j] = points[pick]
        d2 = torch.minimum(d2, _squared_distances(points, centres[j]))
    return centres


@torch.no_grad()
def _relocate(points: torch.Tensor, own_d2: torch.Tensor, centres: torch.Tensor,
              empty: torch.Tensor) -> None:
    """Move the empty centres onto the points (of all ranks) farthest from their own centres."""
    m = empty.numel()  # the same on every rank: the counts were summed over ranks
    take = min(m, points.shape[0])
    top = own_d2.topk(take).indices if take else own_d2.new_zeros(0, dtype=torch.int64)
    candidates = torch.cat([own_d2[top, None], points[top]], 1)
    candidates = all_gather_cat(candidates)  # every rank's candidates, in rank order
    best = candidates[:, 0].topk(min(m, candidates.shape[0])).indices
    chosen = candidates[best, 1:]
    centres[empty[:chosen.shape[0]]] = chosen


@torch.no_grad()
def lloyd_steps(points: torch.Tensor, centroids: torch.Tensor, iters: int,
                relocate_empty: bool = True) -> KMeansResult:
    """Up to `iters` Lloyd iterations from `centroids` (K, D) over the rows of every rank, with
    empty centres relocated (or, without `relocate_empty`, left where they are); stops early once
    no centre moves."""
    points = _check(points, centroids.shape[0])
    if not is_int(iters) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    k = centroids.shape[0]
    with torch.autocast(device_type=points.device.type, enabled=False):
        centres = centroids.detach().float().clone()
        done = 0
        for _ in range(iters):
            indices = nearest(points, centres)
            counts, sums = cluster_stats(points, indices, k)  # of all ranks' points
            used = counts > 0
            new = centres.clone()
            new[used] = sums[used] / counts[used, None]
            empty = (~used).nonzero().squeeze(1)
            if relocate_empty and empty.numel():
                _relocate(points, _squared_distances(points, centres[indices]), new, empty)
            done += 1
            moved = not torch.equal(new, centres)  # identical on every rank: no collective needed
            centres = new
            if not moved:
                break
        indices = nearest(points, centres)
        counts, _ = cluster_stats(points, indices, k)
        inertia = _squared_distances(points, centres[indices]).sum().view(1)
        all_reduce_sum_(inertia)
    return KMeansResult(centroids=centres, counts=counts, inertia=float(inertia), iterations=done)


def kmeans(points: torch.Tensor, k: int, iters: int = INIT_ITERS, seed: int = 0) -> KMeansResult:
    """k-means++ seeding then Lloyd iterations; in a process group, over the rows of all ranks."""
    return lloyd_steps(points, kmeans_pp_init(points, k, seed), iters)


@torch.no_grad()
def init_codebook_from_encoder(model: torch.nn.Module, batches: Iterable[torch.Tensor],
                               iters: int = INIT_ITERS, seed: int = 0) -> KMeansResult:
    """Set `model.quantizer`'s codebook to the K-means centres of `model.encoder`'s outputs on
    `batches` (this rank's images); returns the K-means result.

    The quantizer must read D channels (a codebook method) and implement `init_codebook`."""
    quantizer, encoder = model.quantizer, model.encoder
    if quantizer.logit_input:
        raise ValueError(f"{quantizer.name} reads {quantizer.codebook_size} logits, not D-dimensional "
                         "vectors: its codebook cannot be initialised from encoder outputs")
    was_training = encoder.training
    encoder.eval()
    try:
        vectors = torch.cat([flatten(encoder(x).float()) for x in batches])
    finally:
        encoder.train(was_training)
    result = kmeans(vectors, quantizer.codebook_size, iters=iters, seed=seed)
    quantizer.init_codebook(result.centroids)
    return result
