"""dVAE: the softmax (Gumbel-softmax) quantizer of DALL-E.

Ramesh et al., "Zero-shot text-to-image generation" (2021); as run in the EdVAE paper:
training z = softmax((l + g) / tau), z_q = sum_k z_k M_k, evaluation argmax; regulariser
beta * sum_k p_k log(K p_k) with p = softmax(l): the KL to the uniform prior, per position.
"""

from __future__ import annotations

import torch

from .logit_codebook import LogitCodebookQuantizer
from .softmax_kl import softmax_kl_uniform


class GumbelQuantizer(LogitCodebookQuantizer):
    name = "dvae"
    default_beta_max = 5e-5

    def log_weights_and_regulariser(self, logits: torch.Tensor,
                                    value: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        # softmax is shift-invariant: the logits are the log-weights
        return logits, self.regulariser(logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(1)

    def regulariser(self, logits: torch.Tensor) -> torch.Tensor:
        return softmax_kl_uniform(logits, dim=1)
