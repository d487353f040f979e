"""VQ-VAE with an exponential-moving-average codebook (VQ-VAE-EMA).

van den Oord, Vinyals, Kavukcuoglu, "Neural discrete representation learning" (NeurIPS 2017),
sections 3.1-3.2 and Appendix A.1; as run in the EdVAE paper (Baykal et al. 2024, Appendix D:
commitment 0.25, decay 0.99, codebook initialised uniformly).

- z_e has D channels; each position takes its nearest codeword k = argmin_k ||z_e - e_k||^2,
  computed in float32 even under autocast (nearest.py).
- Straight-through: z_q = z_e + sg(e_k - z_e), so the decoder's gradient reaches z_e unchanged.
  Option gradient="rotation": the rotation trick instead (Fifty et al. 2025, rotation.py); the
  forward value is the same.
- Loss: commitment * mean ||z_e - sg(e_k)||^2 (a mean over positions and channels, as the
  reference code's reduce_mean). The codebook is a buffer and gets no gradient. The trainer's
  `beta` (the KL weight of the logit methods) is not used: default_beta_max = 0.
- EMA update, in every training forward pass (self.training), under no_grad:
      n_k <- g n_k + (1 - g) count_k,        m_k <- g m_k + (1 - g) sum_{i -> k} z_i,
  debiased as in the reference implementation's moving averages (sonnet's
  ExponentialMovingAverage: hidden state from 0, divided by 1 - g^t, t = updates so far, kept in
  the buffer `ema_steps` so a resumed run continues exactly):
      n^_k = n_k / (1 - g^t),    m^_k = m_k / (1 - g^t),
  then Laplace smoothing and the new codewords:
      n~_k = (n^_k + eps) / (N + K eps) * N  with N = sum_k n^_k,    e_k = m^_k / n~_k.
  The codewords used for this step's output are those before the update (as the reference code).
  Without debiasing and with m_k started from the codebook (the popular ports), a code unused in
  the first batches gets e_k = g^t m_k(0) / n~_k with n~_k ~ eps: it is blown up by ~1/eps and
  never chosen again. Debiased, m^_k = n^_k = 0 for such a code.
  Departure: the reference then sets such a code to 0 / n~_k = 0; here a code never assigned
  (n_k exactly 0) keeps its current value, its initialisation, so unused codes stay distinct
  instead of all collapsing onto the origin (the two differ by at most 1/K at initialisation).
- Data parallel: the per-code counts and sums are summed over ranks (distributed.py) before the
  update, so every replica holds the same codebook, the one a single process would compute on the
  global batch.
"""

from __future__ import annotations

import math

import torch

from .base import QuantizerOutput, check_option, is_real, unflatten
from .nearest import NearestCodewordQuantizer, cluster_stats, nearest
from .rotation import check_gradient, straight_through_to


class EMAVQQuantizer(NearestCodewordQuantizer):
    name = "vq-ema"

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax",
                 commitment: float = 0.25,  # beta_c: van den Oord et al. 2017 sec. 3.2; EdVAE App. D
                 decay: float = 0.99,  # gamma: van den Oord et al. 2017 App. A.1; EdVAE App. D
                 eps: float = 1e-5,  # Laplace smoothing: the reference code's epsilon
                 gradient: str = "ste"):  # "ste" (the paper's) or "rotation" (rotation.py)
        super().__init__(codebook_size, codebook_dim, eval_mode)
        self.gradient = check_gradient(gradient)
        check_option("commitment", commitment, is_real(commitment) and commitment >= 0, "must be >= 0")
        check_option("decay", decay, is_real(decay) and 0 < decay < 1, "must be in (0, 1)")
        check_option("eps", eps, is_real(eps) and eps > 0, "must be > 0")
        self.commitment, self.decay, self.eps = float(commitment), float(decay), float(eps)
        k, d = codebook_size, codebook_dim
        # uniform in +-1/K, as in the EdVAE paper (Appendix D); a buffer: only the EMA moves it
        self.register_buffer("codebook", torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k))
        self.register_buffer("ema_count", torch.zeros(k))  # n_k
        self.register_buffer("ema_sum", torch.zeros(k, d))  # m_k
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.int64))  # t

    def effective_codebook(self) -> torch.Tensor:
        return self.codebook

    @torch.no_grad()
    def init_codebook(self, vectors: torch.Tensor) -> None:
        """Set the codebook to `vectors` (K, D) and restart the moving averages from 0 (t = 0), as
        at construction: the debiased EMA then follows the batches seen from here on, and a code
        no batch assigns keeps its given value."""
        super().init_codebook(vectors)
        self.ema_count.zero_()
        self.ema_sum.zero_()
        self.ema_steps.zero_()

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """One EMA step from the rows `flat` (N, D) assigned to `indices` (N,)."""
        counts, sums = cluster_stats(flat, indices, self.codebook_size)  # the global batch's
        g = self.decay
        self.ema_count.mul_(g).add_(counts, alpha=1.0 - g)
        self.ema_sum.mul_(g).add_(sums, alpha=1.0 - g)
        self.ema_steps.add_(1)
        # 1 - g^t = -expm1(t log g), in float64 on the device (no host sync); t >= 1 here
        correction = torch.expm1(self.ema_steps.double() * math.log(g)).neg().float()
        n_hat = self.ema_count / correction
        m_hat = self.ema_sum / correction
        total = n_hat.sum()
        smoothed = (n_hat + self.eps) / (total + self.codebook_size * self.eps) * total
        assigned = (self.ema_count > 0)[:, None]  # never-assigned codes keep their value
        self.codebook.copy_(torch.where(assigned, m_hat / smoothed[:, None], self.codebook))

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        """temperature and beta are not used (a deterministic quantizer without KL term)."""
        flat, shape = self._rows(z_e)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            indices = nearest(flat.detach(), self.codebook)
            e = self.codebook[indices]  # a copy: the codewords before this step's update
            if self.training:
                self.ema_update(flat.detach(), indices)
            sq_err = (flat - e).pow(2).mean()  # e is a buffer: the gradient goes to z_e only
            # value e; the gradient straight through, or the rotation trick's (|e_k|/|z|) R^T g
            z_q = straight_through_to(flat, e, self.gradient) if flat.requires_grad else e
        stats = {"commitment": sq_err.detach()} if self.reports else {}
        return QuantizerOutput(z_q=unflatten(z_q, shape), loss=self.commitment * sq_err,
                               indices=indices.view(shape), stats=stats)
