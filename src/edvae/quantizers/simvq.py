"""SimVQ: a frozen codebook moved by one learned linear map.

Zhu et al., "Addressing Representation Collapse in Vector Quantized Models with One Linear
Layer" (arXiv 2411.02038, 2024).

The codebook in use is C W: C (K x D) is drawn once and frozen (a buffer, never a parameter); W
(D x D) is a learned linear map. Each position takes its nearest codeword of C W (float32, as
nearest.py); z_q = (C W)_k with the straight-through gradient (or the rotation trick, option
gradient="rotation", rotation.py). The loss is the usual VQ pair,
    commitment * mean ||z - sg(q)||^2 + codebook * mean ||sg(z) - q||^2,
(means over positions and channels), through which W learns; since every codeword is C_k W, a step
on W moves the whole codebook at once, used codes or not.

Defaults and where they come from:
- C ~ N(0, 1/D) (std D^-1/2): as the authors' public code is reported to draw it (unverified);
- W initialised as torch's nn.Linear weight (uniform in +-1/sqrt(D)), no bias: the paper's "one
  linear layer" without a bias term (whether the reference layer has one: unverified);
- commitment = 0.25 (VQ-VAE's beta; unverified for SimVQ) and codebook = 1.0 (VQ-VAE's codebook
  term): options.
- init_codebook (the pretrain-then-quantize recipe): C is set to the given vectors and W to the
  identity, so that C W starts at them.
Nothing changes state inside the forward pass: under data parallelism DDP's gradient average keeps
W identical on every rank, and C is the same on every rank through the seed (the trainer seeds
every rank alike before building the model) or through the loaded state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import QuantizerOutput, check_codebook_shape, check_weights, unflatten
from .nearest import NearestCodewordQuantizer, nearest
from .rotation import check_gradient, straight_through_to


class SimVQQuantizer(NearestCodewordQuantizer):
    name = "simvq"

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax",
                 commitment: float = 0.25,  # VQ-VAE's beta (unverified for SimVQ)
                 codebook: float = 1.0,  # weight of the codebook term (VQ-VAE's)
                 gradient: str = "ste"):  # "ste" (the paper's) or "rotation" (rotation.py)
        super().__init__(codebook_size, codebook_dim, eval_mode)
        check_weights(commitment=commitment, codebook=codebook)
        self.gradient = check_gradient(gradient)
        self.commitment, self.codebook_weight = float(commitment), float(codebook)
        k, d = codebook_size, codebook_dim
        self.register_buffer("frozen_codebook", torch.randn(k, d) * d ** -0.5)  # C, never trained
        bound = 1.0 / math.sqrt(d)
        self.projection = nn.Parameter(torch.empty(d, d).uniform_(-bound, bound))  # W

    def effective_codebook(self) -> torch.Tensor:
        """C W (K, D) in float32."""
        with torch.autocast(device_type=self.projection.device.type, enabled=False):
            return self.frozen_codebook.float() @ self.projection.float()

    @torch.no_grad()
    def init_codebook(self, vectors: torch.Tensor) -> None:
        """C <- vectors (K, D) and W <- I, so that the codebook in use starts at `vectors`."""
        check_codebook_shape(vectors, self.frozen_codebook)
        self.frozen_codebook.copy_(vectors.to(self.frozen_codebook))
        self.projection.copy_(torch.eye(self.codebook_dim, device=self.projection.device))

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        """temperature and beta are not used (a deterministic quantizer without KL term)."""
        flat, shape = self._rows(z_e)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            codebook = self.effective_codebook()
            indices = nearest(flat.detach(), codebook.detach())
            q = codebook[indices]
            commit = (flat - q.detach()).pow(2).mean()
            loss = self.commitment * commit + self.codebook_weight * (flat.detach() - q).pow(2).mean()
            z_q = straight_through_to(flat, q.detach(), self.gradient) if flat.requires_grad else q
        report = self.reports
        stats = {"commitment": commit.detach()} if report else {}
        return QuantizerOutput(z_q=unflatten(z_q, shape), loss=loss,
                               indices=indices.view(shape) if report else None, stats=stats)
