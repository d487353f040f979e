"""VQ-STE++: vector quantization with a straightened straight-through estimator.

Huh, Cheung, Agrawal, Isola, "Straightening out the straight-through estimator: overcoming
optimization challenges in vector quantized networks" (ICML 2023), and the authors' library
vqtorch (github.com/minyoungg/vqtorch), whose settings the EdVAE paper says it used (Appendix D:
"we use the proposed architectures and hyperparameters").
The paper's own text was not at hand: defaults come from the authors' README example
(VectorQuant(beta=0.98, kmeans_init=True, affine_lr=10.0, sync_nu=0.2, replace_freq=20)) and
its autoencoder example (commitment loss weight alpha = 10).

z_e has D channels; each position takes its nearest (effective) codeword in float32. Then:
- Commitment loss with split b (the paper's improved, two-sided commitment):
      loss = commitment * ((1 - b) mean||z - sg(z_q)||^2 + b mean||sg(z) - z_q||^2),
  means over positions and channels. The codebook is a Parameter trained by the optimizer
  through this loss (and the synchronized update). The trainer's `beta` is not used.
- Synchronized update: z_out = z + sg(z_q - z) + nu z_q - sg(nu z_q): the same forward value as
  plain straight-through; the encoder gets the task gradient unchanged and the chosen codewords
  get nu times it too (sync_nu, 0 = off).
- Option gradient="rotation": the rotation trick (Fifty et al. 2025, rotation.py) replaces the
  straight-through copy to the encoder; the forward value and the synchronized update are unchanged.
- Affine reparameterization: the codebook in use is c'_k = (1 + lambda s_g) * c_k + lambda b_g
  for code k in group g (groups are contiguous blocks of K / G codes, as vqtorch's
  AffineTransform); s and b are learned (G, D) Parameters initialised at 0, so c' = c at
  initialisation; lambda = affine_lr. affine_groups = 0 turns it off.
- Alternated optimization (inner_lr > 0): an inner step on the codebook before the outer step.
  Choice: inside the training forward pass, before the graph is built, one plain gradient step
  c <- c - inner_lr * grad_c mean||c'_k(i) - sg(z_i)||^2 (mean over positions and channels of the
  global batch), with the assignments of this step kept (vqtorch's in-place variant makes the
  same assumption). The step on code k moves it 2 inner_lr n_k / (N D) of the way to the mean of
  its N_k vectors, so useful values scale with N D (vqtorch's experimental in-place optimizer used
  SGD lr 50, momentum 0.9). Off by default: vqtorch lists it as experimental.
- Dead-code replacement (dead_after > 0): a code unused for `dead_after` consecutive training
  steps (counter in the buffer `unused_steps`) is reset to a random encoder output of the current
  (global) batch plus noise dead_noise * ||v|| * N(0, I) (vqtorch's ReplaceLRU 'input_random'
  policy). It is done before this step's graph is built; the codes it replaces were unused in this
  step, so this step's assignments stand.
- K-means initialisation (kmeans_init_iters > 0): on the first training forward pass the codebook
  is set by Lloyd iterations on that batch's encoder outputs, from distinct random rows (rows
  are drawn with replacement when the batch has fewer than K positions, so some codes start
  equal; dead-code replacement separates them). The buffer `kmeans_done` records it, so a resumed
  or loaded model never re-initialises. vqtorch uses a K-means++ start; a random start is used here.
- Data parallel: counts and sums are summed over ranks; the K-means data and the dead-code
  candidates are the global batch (gathered in rank order); random draws are made on rank 0 and
  broadcast (distributed.py). Every replica holds the same codebook, the one a single process
  would compute on the global batch with rank 0's random stream.
- The Adam moments of a code reset by K-means or dead-code replacement are kept (as vqtorch).
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import all_gather_cat, broadcast_, rank
from .base import QuantizerOutput, check_codebook_shape, check_option, is_int, is_real, unflatten
from .kmeans import lloyd_steps
from .nearest import NearestCodewordQuantizer, cluster_stats, nearest, random_rows
from .rotation import check_gradient, straight_through_to


class STEVQQuantizer(NearestCodewordQuantizer):
    name = "vq-ste++"

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax",
                 commitment: float = 10.0,  # overall weight: alpha = 10 in vqtorch examples/simple.py
                 commitment_split: float = 0.98,  # b: vqtorch README (beta=0.98); its code's default 0.95
                 sync_nu: float = 0.2,  # nu: vqtorch README; the VQ-STE++ paper's range 0.01-2
                 affine_groups: int = 1,  # G: vqtorch's default (one group); 0 = off
                 affine_lr: float = 10.0,  # lambda: vqtorch README (affine_lr=10.0)
                 inner_lr: float = 0.0,  # alternated optimization; off: experimental in vqtorch
                 dead_after: int = 20,  # vqtorch README (replace_freq=20); 0 = off
                 dead_noise: float = 0.01,  # rho: vqtorch's VectorQuant (lru_replacement rho=0.01)
                 kmeans_init_iters: int = 10,  # vqtorch README (kmeans_init=True); 10 Lloyd steps: ours
                 gradient: str = "ste"):  # "ste" (the paper's) or "rotation" (rotation.py)
        super().__init__(codebook_size, codebook_dim, eval_mode)
        self.gradient = check_gradient(gradient)
        k, d = codebook_size, codebook_dim
        check_option("commitment", commitment, is_real(commitment) and commitment >= 0, "must be >= 0")
        check_option("commitment_split", commitment_split,
                     is_real(commitment_split) and 0 <= commitment_split <= 1, "must be in [0, 1]")
        check_option("sync_nu", sync_nu, is_real(sync_nu) and sync_nu >= 0, "must be >= 0 (0 = off)")
        check_option("affine_groups", affine_groups,
                     is_int(affine_groups) and affine_groups >= 0 and k % max(affine_groups, 1) == 0,
                     f"must be an integer >= 0 (0 = off) that divides the codebook size {k}")
        check_option("affine_lr", affine_lr, is_real(affine_lr) and affine_lr > 0,
                     "must be > 0 (turn the affine off with affine_groups=0)")
        check_option("inner_lr", inner_lr, is_real(inner_lr) and inner_lr >= 0, "must be >= 0 (0 = off)")
        for name, value in (("dead_after", dead_after), ("kmeans_init_iters", kmeans_init_iters)):
            check_option(name, value, is_int(value) and value >= 0, "must be an integer >= 0 (0 = off)")
        check_option("dead_noise", dead_noise, is_real(dead_noise) and dead_noise >= 0, "must be >= 0")
        self.commitment, self.commitment_split = float(commitment), float(commitment_split)
        self.sync_nu, self.affine_groups, self.affine_lr = float(sync_nu), affine_groups, float(affine_lr)
        self.inner_lr, self.dead_after, self.dead_noise = float(inner_lr), dead_after, float(dead_noise)
        self.kmeans_init_iters = kmeans_init_iters
        # the codebook, initialised N(0, 1) as for every non-EMA method (the EdVAE protocol)
        self.codebook = nn.Parameter(torch.randn(k, d))
        if affine_groups:
            self.affine_scale = nn.Parameter(torch.zeros(affine_groups, d))  # s, init 0
            self.affine_shift = nn.Parameter(torch.zeros(affine_groups, d))  # b, init 0
        self.register_buffer("unused_steps", torch.zeros(k, dtype=torch.int64))
        self.register_buffer("kmeans_done", torch.zeros((), dtype=torch.int64))

    # ------------------------------------------------------------------ the codebook in use

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-code scale and shift (K, D): 1 + lambda s_g and lambda b_g of each code's group."""
        per_group = self.codebook_size // self.affine_groups
        scale = (1.0 + self.affine_lr * self.affine_scale.float()).repeat_interleave(per_group, 0)
        shift = (self.affine_lr * self.affine_shift.float()).repeat_interleave(per_group, 0)
        return scale, shift

    def effective_codebook(self) -> torch.Tensor:
        """c' (K, D) in float32: the affine reparameterization of the codebook, when it is on."""
        c = self.codebook.float()
        if not self.affine_groups:
            return c
        scale, shift = self._affine()
        return c * scale + shift

    @torch.no_grad()
    def _raw(self, values: torch.Tensor) -> torch.Tensor:
        """The raw codebook whose effective codewords are `values` (K, D) (the inverse affine map)."""
        if self.affine_groups:
            scale, shift = self._affine()
            scale = torch.where(scale.abs() < 1e-6, torch.full_like(scale, 1e-6), scale)  # a degenerate group
            values = (values - shift) / scale
        return values.to(self.codebook.dtype)

    @torch.no_grad()
    def init_codebook(self, vectors: torch.Tensor) -> None:
        """Make the effective codewords equal `vectors` (K, D) (through the affine map), mark the
        K-means initialisation done (the first forward pass does not redo it) and restart the
        dead-code counters."""
        check_codebook_shape(vectors, self.codebook)
        self.codebook.copy_(self._raw(vectors.to(self.codebook.device).float()))
        self.set_flag("kmeans_done")
        self.unused_steps.zero_()

    # ------------------------------------------------------------------ in-forward codebook updates

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        points = all_gather_cat(flat)  # the global batch, in rank order
        start = torch.empty(self.codebook_size, self.codebook_dim, device=flat.device)
        if rank() == 0:  # random start drawn on rank 0, broadcast
            start.copy_(random_rows(points, self.codebook_size))
        broadcast_(start)
        # Lloyd over every rank's rows (kmeans.py, the one K-means); a code no row chose stays put
        centroids = lloyd_steps(flat, start, self.kmeans_init_iters, relocate_empty=False).centroids
        self.codebook.copy_(self._raw(centroids))
        self.set_flag("kmeans_done")

    @torch.no_grad()
    def _inner_step(self, counts: torch.Tensor, sums: torch.Tensor, current: torch.Tensor) -> None:
        """c <- c - inner_lr * grad_c of mean ||c'_k(i) - z_i||^2 over the global batch."""
        n = counts.sum() * self.codebook_dim  # number of terms in the mean
        grad = 2.0 * (counts[:, None] * current - sums) / n  # w.r.t. the effective codewords
        if self.affine_groups:
            grad = grad * self._affine()[0]  # chain rule to the raw codebook
        self.codebook.sub_(self.inner_lr * grad.to(self.codebook.dtype))

    @torch.no_grad()
    def _replace_dead(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        """Reset the codes unused for `dead_after` steps. Written without a host read (no nonzero,
        no branch on the count), so a GPU step never waits: candidates are drawn for every code and
        kept only where the code is dead. The price: under data parallelism the global batch is
        gathered at every step, not only when a code has died."""
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = self.unused_steps >= self.dead_after  # (K,), identical on every rank: counts are global
        candidates = all_gather_cat(flat)
        values = torch.empty(self.codebook_size, self.codebook_dim, device=flat.device)
        if rank() == 0:  # the random choice is rank 0's, broadcast
            m = candidates.shape[0]
            # the j-th dead code takes row perm[j]: distinct rows while there are enough
            slot = (dead.long().cumsum(0) - 1).clamp(min=0) % m
            v = candidates[torch.randperm(m, device=flat.device)[slot]]
            if self.dead_noise > 0:
                v = v + self.dead_noise * v.norm(dim=1, keepdim=True) * torch.randn_like(v)
            values.copy_(v)
        broadcast_(values)
        self.codebook.copy_(torch.where(dead[:, None], self._raw(values), self.codebook))
        self.unused_steps.masked_fill_(dead, 0)

    # ------------------------------------------------------------------ forward

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        """temperature and beta are not used (a deterministic quantizer without KL term)."""
        flat, shape = self._rows(z_e)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            if self.training:
                # every in-place change of the codebook happens here, before the graph uses it
                if self.kmeans_init_iters and not self.is_flag_set("kmeans_done"):
                    self._kmeans_init(flat.detach())
                with torch.no_grad():
                    current = self.effective_codebook()
                    indices = nearest(flat, current)
                    if self.inner_lr or self.dead_after:
                        counts, sums = cluster_stats(flat, indices, self.codebook_size)
                        if self.inner_lr:
                            self._inner_step(counts, sums, current)
                        if self.dead_after:
                            self._replace_dead(flat, counts)
                codebook = self.effective_codebook()
            else:
                codebook = self.effective_codebook()
                indices = nearest(flat.detach(), codebook.detach())
            e = codebook[indices]
            sq_err = (flat.detach() - e.detach()).pow(2).mean()
            split = self.commitment_split
            loss = self.commitment * ((1.0 - split) * (flat - e.detach()).pow(2).mean()
                                      + split * (flat.detach() - e).pow(2).mean())
            if torch.is_grad_enabled():
                # value e; the gradient straight through, or the rotation trick's (|e_k|/|z|) R^T g
                z_q = straight_through_to(flat, e, self.gradient)
                if self.sync_nu:
                    sync = self.sync_nu * e
                    z_q = z_q + (sync - sync.detach())  # exactly 0 forward: the value is unchanged
            else:
                z_q = e
        stats = {"commitment": sq_err} if self.reports else {}
        return QuantizerOutput(z_q=unflatten(z_q, shape), loss=loss, indices=indices.view(shape), stats=stats)
