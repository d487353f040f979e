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

from .base import QuantizerOutput, check_option
from .nearest import NearestCodewordQuantizer, flatten, nearest, unflatten
from .rotation import GRADIENTS, straight_through_to


class SimVQQuantizer(NearestCodewordQuantizer):
    name = "simvq"
    default_beta_max = 0.0  # no KL term: the trainer's beta is ignored

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax",
                 commitment: float = 0.25,  # VQ-VAE's beta (unverified for SimVQ)
                 codebook: float = 1.0,  # weight of the codebook term (VQ-VAE's)
                 gradient: str = "ste"):  # "ste" (the paper's) or "rotation" (rotation.py)
        super().__init__(codebook_size, codebook_dim, eval_mode)
        for key, value in (("commitment", commitment), ("codebook", codebook)):
            check_option(key, value, isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                         "must be a number >= 0")
        check_option("gradient", gradient, gradient in GRADIENTS, f"must be one of {', '.join(GRADIENTS)}")
        self.commitment, self.codebook_weight, self.gradient = float(commitment), float(codebook), gradient
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
        if tuple(vectors.shape) != tuple(self.frozen_codebook.shape):
            raise ValueError(f"init_codebook expects {tuple(self.frozen_codebook.shape)} vectors, "
                             f"got {tuple(vectors.shape)}")
        self.frozen_codebook.copy_(vectors.to(self.frozen_codebook))
        self.projection.copy_(torch.eye(self.codebook_dim, device=self.projection.device))

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        """temperature and beta are not used (a deterministic quantizer without KL term)."""
        z = self._features(z_e)
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = flatten(z)
            codebook = self.effective_codebook()
            indices = nearest(flat.detach(), codebook.detach())
            q = codebook[indices]
            commit = (flat - q.detach()).pow(2).mean()
            loss = self.commitment * commit + self.codebook_weight * (flat.detach() - q).pow(2).mean()
            z_q = straight_through_to(flat, q.detach(), self.gradient) if flat.requires_grad else q
        report = self.reporting or not self.training
        stats = {"commitment": commit.detach()} if report else {}
        return QuantizerOutput(z_q=unflatten(z_q, b, h, w), loss=loss,
                               indices=indices.view(b, h, w) if report else None, stats=stats)
