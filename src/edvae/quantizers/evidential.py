"""EdVAE: the evidential (Dirichlet) quantizer.

Baykal, Kandemir, Unal, "EdVAE: Mitigating codebook collapse with evidential discrete
variational autoencoders", Pattern Recognition 2024.
- evidence e = exp(clamp(z_e, max=20)), alpha = e + 1 (Eq. 2, Appendix D);
- pi = alpha / S, the Dirichlet mean (Appendix B; the authors' code), or pi ~ Dir(alpha)
  (Algorithm 1), option `dirichlet_sample`;
- training z ~ RelaxedOneHotCategorical(tau, pi), soft, no straight-through;
- evaluation argmax of z_e (the authors' code) or z ~ Cat(pi) (Algorithm 2), option `eval_mode`;
- regulariser beta * KL(Dir(alpha) || Dir(1)), averaged over positions (Appendix A).
"""

from __future__ import annotations

import torch

from .base import check_option
from .dirichlet_kl import evidential_log_alpha_and_kl
from .logit_codebook import LogitCodebookQuantizer


class EvidentialQuantizer(LogitCodebookQuantizer):
    name = "edvae"
    default_beta_max = 5e-7  # CIFAR10; CelebA and LSUN Church use 1e-7

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax",
                 clamp_max: float = 20.0, dirichlet_sample: bool = False):
        super().__init__(codebook_size, codebook_dim, eval_mode)
        check_option("clamp_max", clamp_max, 0 < clamp_max <= 80,
                     "must be in (0, 80] (exp overflows float32 beyond)")
        self.clamp_max = clamp_max
        self.dirichlet_sample = dirichlet_sample

    def evidence(self, logits: torch.Tensor) -> torch.Tensor:
        # edvae's clamp convention (dirichlet_kl.py): a logit exactly at clamp_max keeps its
        # gradient on every torch (torch's clamp gives 0 there from 2.14 on)
        return torch.where(logits > self.clamp_max, self.clamp_max, logits).exp()

    def dirichlet_log_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """log g with g_k ~ Gamma(alpha_k, 1): the softmax that follows normalises g, which makes
        pi = g / sum g a draw from Dir(alpha) (Algorithm 1), reparameterised."""
        g = torch.distributions.Gamma(self.evidence(logits) + 1.0, 1.0, validate_args=False).rsample()
        return g.clamp_min(1e-30).log()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        alpha = self.evidence(logits) + 1.0
        return alpha / alpha.sum(1, keepdim=True)

    def regulariser(self, logits: torch.Tensor) -> torch.Tensor:
        return evidential_log_alpha_and_kl(logits, self.clamp_max, dim=1)[1]

    def log_weights_and_regulariser(self, logits: torch.Tensor,
                                    value: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        # log pi = log alpha - log S; the softmax that follows removes log S. The clamp, the
        # exponential and their gradients are shared with the KL.
        log_alpha, kl = evidential_log_alpha_and_kl(logits, self.clamp_max, dim=1, value=value)
        return (self.dirichlet_log_weights(logits) if self.dirichlet_sample else log_alpha), kl

    def uncertainty(self, logits: torch.Tensor) -> torch.Tensor:
        """Evidential uncertainty u = K / S per position (Sensoy et al. 2018)."""
        alpha = self.evidence(logits.float()) + 1.0
        return self.codebook_size / alpha.sum(1)
