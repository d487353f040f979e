"""GS-VQ-VAE: vector quantization relaxed by Gumbel-softmax over distance logits.

Sonderby, Poole, Mnih, "Continuous relaxation training of discrete latent variable image models"
(2017), as run in the EdVAE paper (Baykal et al. 2024, Appendix D):
- logits l_k = -||z_e - e_k||^2 per position (z_e has D channels), q = softmax(l);
- training y = softmax((l + g) / tau) with Gumbel noise g, z_q = sum_k y_k e_k: soft, no
  straight-through;
- regulariser beta * sum_k q_k log(K q_k), the KL to the uniform prior, averaged over positions;
  beta ramped to 5e-6 (EdVAE paper, Appendix D);
- evaluation: argmax of l (the nearest codeword), or a draw from Cat(q) (option `eval_mode`).
The temperatures of the original paper were not verified; the trainer's EdVAE schedule is used.
Distances, softmax and the KL are computed in float32 even under autocast.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer, QuantizerOutput, gumbel_noise_like, one_hot_channels
from .softmax_kl import softmax_kl_uniform


class GumbelVQQuantizer(Quantizer):
    """Distance logits over a K x D codebook, relaxed one-hot in training, hard at evaluation.

    Subclasses (SQ-VAE) change `logits` and `latent_loss` only.
    """

    name = "gs-vq"
    default_beta_max = 5e-6  # EdVAE paper, Appendix D: all datasets
    eval_modes = ("argmax", "sample")  # argmax by default: the paper's test ("Test: argmax")

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax"):
        super().__init__(codebook_size, codebook_dim, eval_mode)
        # the codebook (K x D), initialised N(0, 1) as for every non-EMA method (the EdVAE protocol)
        self.codebook = nn.Parameter(torch.randn(codebook_size, codebook_dim))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances ||z - e_k||^2, (B, D, h, w) -> (B, K, h, w), float32.

        Expanded as ||z||^2 - 2 z.e_k + ||e_k||^2 (a (B, K, D, h, w) difference would not fit);
        the rounding of the expansion can go a little below 0, hence the clamp.
        """
        e = self.codebook.float()
        cross = torch.einsum("bdhw,kd->bkhw", z, e)
        d = (z * z).sum(1, keepdim=True) - 2.0 * cross + (e * e).sum(1).view(1, -1, 1, 1)
        return d.clamp_min(0.0)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return -self.distances(z)

    def probabilities(self, z_e: torch.Tensor) -> torch.Tensor:
        """q = softmax(logits) over codes, (B, K, h, w) float32."""
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            return self.logits(self._features(z_e)).softmax(1)

    def regulariser(self, logits: torch.Tensor) -> torch.Tensor:
        """sum_k q_k log(K q_k) per position, (B, h, w)."""
        return softmax_kl_uniform(logits, dim=1)

    def latent_loss(self, z: torch.Tensor, z_q: torch.Tensor, logits: torch.Tensor,
                    beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss added to the reconstruction term, and its stats."""
        kl = self.regulariser(logits).mean()
        return beta * kl, {"kl": kl.detach()}

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        z = self._features(z_e)
        with torch.autocast(device_type=z.device.type, enabled=False):
            logits = self.logits(z)
            if self.training:
                y = ((logits + gumbel_noise_like(logits)) / temperature).softmax(1)
                indices = y.detach().argmax(1) if self.reporting else None
            else:
                indices = self.eval_codes(z)
                y = one_hot_channels(indices, self.codebook_size, logits.dtype)
            z_q = torch.einsum("bkhw,kd->bdhw", y, self.codebook.float())
            loss, stats = self.latent_loss(z, z_q, logits, beta)
        return QuantizerOutput(z_q=z_q, loss=loss, indices=indices, stats=stats if self.reports else {})

    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """The nearest codeword (argmax of the logits), (B, h, w) int64."""
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            return self.logits(self._features(z_e)).argmax(1)
