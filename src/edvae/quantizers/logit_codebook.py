"""What EdVAE and dVAE share: K logits per position select rows of a K x D codebook."""

from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer, QuantizerOutput, gumbel_noise_like, one_hot_channels


class LogitCodebookQuantizer(Quantizer):
    """Relaxed one-hot z over K codes (Gumbel-softmax in training), z_q = sum_k z_k M_k.

    Subclasses define `probabilities(logits)`, `regulariser(logits)` (one KL value per position)
    and `log_weights_and_regulariser(logits, value)`: the categorical's unnormalised
    log-probabilities and the regulariser, at once for training (so they may share work); with
    value=False the regulariser's value may be skipped as long as its gradient is exact.
    """

    logit_input = True
    eval_modes = ("argmax", "sample")

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax"):
        super().__init__(codebook_size, codebook_dim, eval_mode)
        # the codebook M (K x D), initialised N(0, 1) as in the paper
        self.codebook = nn.Parameter(torch.randn(codebook_size, codebook_dim))

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        logits = self._features(z_e)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if self.training:
                log_w, kl = self.log_weights_and_regulariser(logits, value=self.reporting)
                y = ((log_w + gumbel_noise_like(logits)) / temperature).softmax(1)
                indices = y.detach().argmax(1) if self.reporting else None
            else:
                kl = self.regulariser(logits)
                indices = self.eval_codes(logits)
                y = one_hot_channels(indices, self.codebook_size, logits.dtype)
            z_q = torch.einsum("bkhw,kd->bdhw", y, self.codebook.float())
            kl = kl.mean()
        return QuantizerOutput(z_q=z_q, loss=beta * kl, indices=indices,
                               stats={"kl": kl.detach()} if self.reports else {})

    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        return self._features(z_e).argmax(1)
