"""PixelSNAIL over code maps (Chen, Mishra, Rohaninejad, Abbeel 2018, "PixelSNAIL: An Improved
Autoregressive Generative Model"), the prior the EdVAE paper fits for its Table 3 (Section 5.2.5).

The shape follows the authors' public code (neocxi/pixelsnail-public, `h6_noup_spec`). An input
stream of down-shifted and down-right-shifted convolutions sees only earlier positions in raster
order. Then come `blocks` blocks, each made of `res_blocks` gated residual blocks (2x2 causal
convolutions, concat-ELU, a sigmoid gate) and one causal self-attention block. The attention's keys
and values are made from [input, features, position]. Its queries are made from [features,
position]. Position i attends to the keys of positions j < i only, and position 0 receives zeros.
The output is one softmax over the K codes at every position.

Departures from the authors' code, all so that it fits codes instead of pixels:
- the input is a learned embedding of the code, not RGB values; the output is K logits, not a
  mixture of discretised logistics (as in VQ-VAE-2's PixelSNAIL priors);
- no weight normalisation or data-dependent initialisation; instead the last convolution of every
  gated block starts at a tenth of its default scale, the code's `init_scale=0.1`;
- dropout 0.1 rather than 0.5 (VQ-VAE-2 priors as in rosinality/vq-vae-2-pytorch);
- attention with `heads` heads (default 1, as in the authors' code).

The attention's numerics (scores, softmax) run in float32 even under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdvaeError


@dataclass
class PixelSNAILConfig:
    codebook_size: int = 512  # K: the VAE's codebook (protocol: 512 everywhere)
    size: int = 8  # the code map is size x size (8 CIFAR10, 16 CelebA 64, 32 LSUN 128)
    channels: int = 128  # width of every stream
    blocks: int = 2  # residual+attention blocks
    res_blocks: int = 2  # gated residual blocks per block
    embed_dim: int = 0  # code embedding width; 0 = channels
    heads: int = 1  # attention heads (authors' code: 1)
    dropout: float = 0.1  # rosinality/vq-vae-2-pytorch's prior default


# Sizes per code-map size. The paper gives none; these are edvae's choices. The 32x32 preset is
# rosinality/vq-vae-2-pytorch's top prior for 32x32 code maps (256 channels, 4 blocks of 4
# residual blocks, dropout 0.1). The smaller maps get proportionally smaller models.
PRESETS: dict[int, dict] = {
    8: {"channels": 128, "blocks": 2, "res_blocks": 2},
    16: {"channels": 128, "blocks": 3, "res_blocks": 3},
    32: {"channels": 256, "blocks": 4, "res_blocks": 4},
}


def preset_for(size: int) -> dict:
    """The preset of the smallest preset map size >= `size` (the largest one beyond 32)."""
    for s in sorted(PRESETS):
        if size <= s:
            return dict(PRESETS[s])
    return dict(PRESETS[max(PRESETS)])


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """ELU of [x, -x] along channels (PixelCNN++'s nonlinearity); doubles the channels."""
    return F.elu(torch.cat([x, -x], 1))


def down_shift(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class ShiftedConv(nn.Conv2d):
    """Sees rows i-kh+1..i and columns j-kw+1..j: the block above and to the left, itself included
    (down-right shifted); or, `centred`, columns j-(kw-1)/2..j+(kw-1)/2 (down-shifted)."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int] = (2, 2), centred: bool = False):
        super().__init__(c_in, c_out, kernel)
        kh, kw = kernel
        self.pad = (kw // 2, kw // 2, kh - 1, 0) if centred else (kw - 1, 0, kh - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class GatedResidual(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(concat_elu(aux)))))."""

    def __init__(self, channels: int, causal: bool, aux_channels: int = 0, dropout: float = 0.0):
        super().__init__()

        def conv(c_in: int, c_out: int) -> nn.Module:
            return ShiftedConv(c_in, c_out) if causal else nn.Conv2d(c_in, c_out, 1)

        self.conv1 = conv(2 * channels, channels)
        self.aux = nn.Conv2d(2 * aux_channels, channels, 1) if aux_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(2 * channels, 2 * channels)
        with torch.no_grad():  # the authors' init_scale=0.1 on the gated output
            self.conv2.weight.mul_(0.1)
            self.conv2.bias.mul_(0.1)

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        c = self.conv1(concat_elu(x))
        if aux is not None:
            c = c + self.aux(concat_elu(aux))
        a, b = self.conv2(self.dropout(concat_elu(c))).chunk(2, 1)
        return x + a * torch.sigmoid(b)


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     heads: int = 1) -> torch.Tensor:
    """(B, C, H, W) maps -> (B, Cv, H, W); raster position i attends to j < i, position 0 gets 0."""
    b, cq, h, w = query.shape
    n = h * w
    with torch.autocast(query.device.type, enabled=False):
        q = query.float().reshape(b, heads, cq // heads, n).transpose(2, 3)  # (B, heads, N, dk)
        k = key.float().reshape(b, heads, cq // heads, n)  # (B, heads, dk, N)
        v = value.float().reshape(b, heads, value.shape[1] // heads, n).transpose(2, 3)
        scores = q @ k / math.sqrt(cq // heads)  # (B, heads, N, N)
        allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)
        allowed[0, 0] = True  # row 0 has no allowed key: give it one, then zero its output
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        first = torch.arange(n, device=q.device)[:, None] == 0
        out = (probs @ v).masked_fill(first, 0.0)  # (B, heads, N, dv)
        out = out.transpose(2, 3).reshape(b, -1, h, w)
    return out.to(query.dtype)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, embed_dim: int, heads: int, dropout: float):
        super().__init__()
        raw = embed_dim + channels + 2
        self.key_res = GatedResidual(raw, causal=False, dropout=dropout)
        self.key_value = nn.Conv2d(raw, 2 * channels, 1)
        self.query_res = GatedResidual(channels + 2, causal=False, dropout=dropout)
        self.query = nn.Conv2d(channels + 2, channels, 1)
        self.out = GatedResidual(channels, causal=False, aux_channels=channels, dropout=dropout)
        self.heads = heads

    def forward(self, ul: torch.Tensor, x: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        key, value = self.key_value(self.key_res(torch.cat([x, ul, background], 1))).chunk(2, 1)
        query = self.query(self.query_res(torch.cat([ul, background], 1)))
        return self.out(ul, causal_attention(query, key, value, self.heads))


class PixelSNAIL(nn.Module):
    """Codes (B, size, size) int64 -> logits (B, K, size, size) float32, causal in raster order."""

    def __init__(self, config: PixelSNAILConfig):
        super().__init__()
        c = config
        if c.codebook_size < 2 or c.size < 1 or c.channels < 1 or c.blocks < 1 or c.res_blocks < 0:
            raise EdvaeError(f"invalid PixelSNAIL sizes: {c}")
        if c.heads < 1 or c.channels % c.heads:
            raise EdvaeError(f"PixelSNAIL heads ({c.heads}) must divide channels ({c.channels})")
        if not 0.0 <= c.dropout < 1.0:
            raise EdvaeError(f"PixelSNAIL dropout must lie in [0, 1), got {c.dropout}")
        self.config = c
        e = c.embed_dim or c.channels
        self.embed = nn.Embedding(c.codebook_size, e)
        # input convolutions of the authors' code: a 1x3 row above, shifted down, plus a 2x1
        # column (the row above and this one) shifted right; the extra channel of ones tells
        # the image from the zero padding
        self.in_down = ShiftedConv(e + 1, c.channels, (1, 3), centred=True)
        self.in_right = ShiftedConv(e + 1, c.channels, (2, 1))
        self.res = nn.ModuleList(
            nn.ModuleList(GatedResidual(c.channels, causal=True, dropout=c.dropout)
                          for _ in range(c.res_blocks))
            for _ in range(c.blocks))
        self.attn = nn.ModuleList(AttentionBlock(c.channels, e, c.heads, c.dropout) for _ in range(c.blocks))
        self.out = nn.Conv2d(c.channels, c.codebook_size, 1)
        t = (torch.arange(c.size, dtype=torch.float32) - c.size / 2) / c.size
        background = torch.stack([t[:, None].expand(c.size, c.size), t[None, :].expand(c.size, c.size)])
        self.register_buffer("background", background[None], persistent=False)

    def check_codes(self, codes: torch.Tensor) -> None:
        s, k = self.config.size, self.config.codebook_size
        if codes.dim() != 3 or codes.shape[1:] != (s, s):
            raise EdvaeError(f"code maps of shape {tuple(codes.shape)} do not fit this prior, "
                             f"which takes (N, {s}, {s})")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise EdvaeError(f"code maps must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise EdvaeError(f"codes must lie in [0, {k - 1}], got {int(codes.min())}..{int(codes.max())}")

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.embed(codes.long()).permute(0, 3, 1, 2)
        x_pad = torch.cat([x, torch.ones_like(x[:, :1])], 1)  # the channel of ones (see __init__)
        ul = down_shift(self.in_down(x_pad)) + right_shift(self.in_right(x_pad))
        # fewer rows than `size` are allowed (sampling runs on the rows done so far): rows above
        # never see rows below, so their logits are those of the full map
        background = self.background[:, :, :x.shape[2], :x.shape[3]].to(x.dtype)
        background = background.expand(x.shape[0], -1, -1, -1)
        for res_blocks, attn in zip(self.res, self.attn, strict=True):
            for block in res_blocks:
                ul = block(ul)
            ul = attn(ul, x, background)
        return self.out(F.elu(ul)).float()

    def nll_bits(self, codes: torch.Tensor) -> torch.Tensor:
        """-log2 p(code) at every position, (B, size, size) float32 (teacher forcing)."""
        logits = self(codes)
        return F.cross_entropy(logits, codes.long(), reduction="none") / math.log(2)
