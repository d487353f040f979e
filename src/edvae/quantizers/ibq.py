"""IBQ: index backpropagation quantization.

Shi et al., "Scalable Image Tokenization with Index Backpropagation Quantization"
(arXiv 2412.02692, 2024).

The logits of a position are the dot products of its feature z (D channels) with every codeword,
l_k = z . e_k, and p = softmax(l). The forward pass uses the hard one-hot of argmax_k l_k; the
backward pass the softmax's gradient (a straight-through one-hot, one-hot - sg(p) + p), so every
codeword, chosen or not, receives gradient at every step through the softmax:
    z_q = onehot(argmax l) E  in value,   d z_q / d p = E  (the softmax's gradient).
Written here as z_q = e_k + (p - sg(p)) sg(E): the value is exactly e_k and the gradient with
respect to p, z and E is that of (onehot - sg(p) + p) E (the one-hot path gives E the gradient
of the chosen codewords; the softmax path gives z and every codeword theirs, through the logits).
All in float32, even under autocast.

Loss: commitment * mean ||z - sg(e_k)||^2 + codebook * mean ||sg(z) - e_k||^2 (means over
positions and channels), the "usual commitment and codebook terms" the paper adds.

Defaults (marked unverified where the paper's code was not checked): commitment = 0.25 (VQ-VAE's
beta, unverified for IBQ), codebook = 1.0; the paper's optional entropy penalty is not implemented.
The codebook is a Parameter initialised N(0, 1), as every non-EMA codebook of this library.
Nothing changes state inside the forward pass: DDP's gradient average keeps the codebook identical
on every rank.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer, QuantizerOutput, check_weights, unflatten
from .nearest import best_per_row, chunk_rows


@torch.no_grad()
def _argmax_dot(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmax_k flat . e_k per row, (N,) int64, in chunks of rows (ties: the lowest index)."""
    return best_per_row(flat, codebook.shape[0], lambda part: (part @ codebook.t()).argmax(1))


class IBQQuantizer(Quantizer):
    name = "ibq"

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax",
                 commitment: float = 0.25,  # VQ-VAE's beta (unverified for IBQ)
                 codebook: float = 1.0):  # weight of the codebook term (VQ-VAE's; unverified for IBQ)
        super().__init__(codebook_size, codebook_dim, eval_mode)
        check_weights(commitment=commitment, codebook=codebook)
        self.commitment, self.codebook_weight = float(commitment), float(codebook)
        self.codebook = nn.Parameter(torch.randn(codebook_size, codebook_dim))  # N(0, 1)

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        """temperature and beta are not used (the method's softmax has no temperature here)."""
        flat, shape = self._rows(z_e)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            codebook = self.codebook.float()
            logits = flat @ codebook.t()  # (N, K)
            if flat.shape[0] <= chunk_rows(self.codebook_size):
                # `codes` forms this very product in one chunk: the same argmax, bit for bit
                indices = logits.detach().argmax(1)
            else:  # `codes`'s chunks, whose products may round otherwise than the whole one
                indices = _argmax_dot(flat.detach(), codebook.detach())
            e = codebook[indices]
            if torch.is_grad_enabled():
                p = torch.softmax(logits, dim=1)
                z_q = e + (p - p.detach()) @ codebook.detach()  # value e exactly; the softmax's gradient
            else:
                z_q = e
            commit = (flat - e.detach()).pow(2).mean()
            loss = self.commitment * commit + self.codebook_weight * (flat.detach() - e).pow(2).mean()
        report = self.reports
        stats = {"commitment": commit.detach()} if report else {}
        return QuantizerOutput(z_q=unflatten(z_q, shape), loss=loss,
                               indices=indices.view(shape) if report else None, stats=stats)

    @torch.no_grad()
    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """argmax_k z . e_k per position, (B, h, w) int64, in float32."""
        flat, shape = self._rows(z_e)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            return _argmax_dot(flat, self.codebook.float()).view(shape)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook.float()[indices].permute(0, 3, 1, 2)
