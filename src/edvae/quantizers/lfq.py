"""LFQ: lookup-free quantization.

Yu et al., "Language Model Beats Diffusion -- Tokenizer is Key to Visual Generation"
(MAGVIT-v2, ICLR 2024, arXiv 2310.05737): lookup-free quantization and its entropy penalty.

The codebook is {-1, 1}^d with d = codebook_dim, so K = 2^d (512 codes: d = 9); nothing is learned
in the quantizer. Each position takes q = sign(z) (z_i > 0 -> +1, else -1), with a straight-through
gradient; its index is sum_i 2^i [z_i > 0]. The loss:
    commitment * mean ||z - sg(q)||^2 + entropy * (E[H(p(c|z))] - H(E[p(c|z)])),
with p(c|z) = softmax_c(-||z - c||^2 / entropy_temperature) over all K codes: the first entropy
term makes each position confident, the second (the entropy of the batch-average distribution)
spreads the batch over the codebook. Means over positions and channels (commitment) and over
positions (entropies). The softmax over K codes is computed in full, in float32.

Defaults (the paper states the loss but not every weight; marked unverified, all options):
- entropy = 0.1 and commitment = 0.25: the weights reported for MAGVIT-v2 (unverified);
- entropy_temperature = 1.0: the plain softmax of negative distances of the loss's definition
  (unverified; public ports differ, e.g. 0.01).

Data parallel: E[p(c|z)] is the global batch's: the per-code sums are summed over ranks, with this
rank's share carrying the gradient scaled by the world size, so that DDP's gradient average gives
the gradient of the one global entropy (one process: the plain batch mean).
"""

from __future__ import annotations

import math

import torch

from ..distributed import all_reduce_sum_, world_size
from .base import Quantizer, QuantizerOutput, check_option, check_weights, unflatten


def lfq_codebook(d: int, device=None) -> torch.Tensor:
    """Every code (2^d, d) in index order: bit i of index k set <-> channel i is +1."""
    k = torch.arange(2 ** d, device=device)
    bits = (k[:, None] >> torch.arange(d, device=device)) & 1
    return bits.float() * 2 - 1


def _check_size(codebook_size: int, codebook_dim: int) -> None:
    d = codebook_size.bit_length() - 1
    if 2 ** d != codebook_size:
        raise ValueError(f"lfq needs codebook_size = 2^codebook_dim, got {codebook_size}, not a power of "
                         f"two: the nearest sizes it forms are {2 ** d} (codebook_dim {d}) and "
                         f"{2 ** (d + 1)} (codebook_dim {d + 1})")
    if d != codebook_dim:
        raise ValueError(f"lfq needs codebook_size = 2^codebook_dim: {codebook_size} codes need codebook_dim "
                         f"{d}, got {codebook_dim} (which would form {2 ** codebook_dim} codes)")


def _entropy(p: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    return -(p * log_p).sum(-1)


class LFQQuantizer(Quantizer):
    name = "lfq"
    learned_codebook = False  # fixed codes: nothing for K-means to set

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax",
                 entropy: float = 0.1,  # MAGVIT-v2's reported entropy weight (unverified)
                 commitment: float = 0.25,  # MAGVIT-v2's reported commitment weight (unverified)
                 entropy_temperature: float = 1.0):  # softmax of -distance as defined (unverified)
        super().__init__(codebook_size, codebook_dim, eval_mode)
        _check_size(codebook_size, codebook_dim)
        check_weights(entropy=entropy, commitment=commitment)
        check_option("entropy_temperature", entropy_temperature,
                     isinstance(entropy_temperature, (int, float)) and math.isfinite(entropy_temperature)
                     and entropy_temperature > 0, "must be a number > 0")
        self.entropy, self.commitment = float(entropy), float(commitment)
        self.entropy_temperature = float(entropy_temperature)
        self.register_buffer("_codes", lfq_codebook(codebook_dim), persistent=False)  # (K, d)
        self.register_buffer("_bits", 2 ** torch.arange(codebook_dim), persistent=False)

    def _index(self, flat: torch.Tensor) -> torch.Tensor:
        return ((flat > 0).long() * self._bits).sum(1)

    def entropy_terms(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[H(p(c|z))], H(E[p(c|z)])) over the rows of `flat` (N, d) (the latter over the global
        batch under data parallelism), float32."""
        c = self._codes
        # -||z - c||^2 = 2 z.c - ||z||^2 - d; the terms without c cancel in the softmax
        log_p = torch.log_softmax((2.0 * flat @ c.t()) / self.entropy_temperature, dim=1)
        p = log_p.exp()
        per_position = _entropy(p, log_p).mean()
        local = p.sum(0)  # (K,)
        n = torch.full((), float(flat.shape[0]), device=flat.device)
        total = all_reduce_sum_(local.detach().clone())
        all_reduce_sum_(n)
        share = world_size() * (local - local.detach())  # the value 0; this rank's gradient, scaled
        avg = (total + share) / n
        codebook = _entropy(avg, avg.clamp_min(1e-30).log())
        return per_position, codebook

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        """temperature and beta are not used (the trainer's schedules; LFQ has its own weights)."""
        flat, shape = self._rows(z_e)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            q = torch.where(flat > 0, 1.0, -1.0)
            z_q = q + (flat - flat.detach()) if flat.requires_grad else q  # value q; straight-through
            commit = (flat - q).pow(2).mean()
            loss = self.commitment * commit
            report = self.reports
            stats = {}
            if self.entropy:
                per_position, codebook = self.entropy_terms(flat)
                loss = loss + self.entropy * (per_position - codebook)
                if report:
                    stats = {"entropy": per_position.detach(), "codebook_entropy": codebook.detach()}
            if report:
                stats["commitment"] = commit.detach()
            indices = self._index(flat.detach()).view(shape) if report else None
        return QuantizerOutput(z_q=unflatten(z_q, shape), loss=loss, indices=indices, stats=stats)

    @torch.no_grad()
    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        flat, shape = self._rows(z_e)
        return self._index(flat).view(shape)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> their sign vectors (B, d, h, w)."""
        bits = (indices.long().unsqueeze(-1) // self._bits) % 2
        return (bits.float() * 2 - 1).permute(0, 3, 1, 2)
