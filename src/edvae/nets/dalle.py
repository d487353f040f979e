"""The encoder and decoder of the EdVAE paper, built from DALL-E's dVAE blocks.

Baykal et al., "EdVAE", Pattern Recognition 2024, Appendix D (Table D.4), and the blocks of
Ramesh et al., "Zero-shot text-to-image generation" (2021): out = id(x) + g * res(x) with
g = 1 / L^2, L the total number of residual blocks, id a 1x1 conv where channel counts differ.

The paper's Table D.4 reads as if a block's hidden width equals its output width; the authors'
code uses out/4. Both are offered (`hidden_ratio`), the code's 0.25 by default.

For the logit methods (EdVAE, dVAE) the encoder's last 1x1 convolution can run in float32 under
autocast (`float32_logits`): autocast would otherwise round the K logits to bf16 (8 bits of
mantissa: a spacing of 0.0625 from 8 to 16 and 0.125 from 16 to 32) before EdVAE exponentiates
them, an error of up to 3.2% and 6.4% of the evidence exp(z). The authors trained in float32.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCKS_PER_STAGE = 2
STAGES = 3
GAIN = 1.0 / (STAGES * BLOCKS_PER_STAGE) ** 2  # g = 1 / L^2


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=(k - 1) // 2)


class ResBlock(nn.Module):
    """id(x) + g * res(x), res a ReLU before each convolution of `kernels`: (3, 3, 3, 1) in the
    encoder, (1, 3, 3, 3) in the decoder."""

    def __init__(self, cin: int, cout: int, hidden: int, kernels: tuple[int, ...]):
        super().__init__()
        self.id_path = _conv(cin, cout, 1) if cin != cout else nn.Identity()
        widths = [cin, *[hidden] * (len(kernels) - 1), cout]
        layers: list[nn.Module] = []
        for a, b, k in zip(widths[:-1], widths[1:], kernels, strict=True):
            layers += [nn.ReLU(), _conv(a, b, k)]
        self.res_path = nn.Sequential(*layers)
        self.gain = GAIN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.gain * self.res_path(x)


class Float32Conv2d(nn.Conv2d):
    """A convolution computed in float32 whatever autocast is on: its input is cast up and its
    output is float32. Same parameters (and state-dict keys) as nn.Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def _init_weights(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            nn.init.zeros_(m.bias)


def _stages(cin: int, width: int, hidden_ratio: float, stages, kernels: tuple[int, ...],
            resample) -> tuple[list[nn.Module], int]:
    """BLOCKS_PER_STAGE blocks of width n 2^s for each stage s of `stages`, `resample()` between
    stages; the layers and their output channels."""
    layers: list[nn.Module] = []
    for i, stage in enumerate(stages):
        if i:
            layers.append(resample())
        cout = width * 2**stage
        for _ in range(BLOCKS_PER_STAGE):
            layers.append(ResBlock(cin, cout, max(1, int(round(cout * hidden_ratio))), kernels))
            cin = cout
    return layers, cin


class DalleEncoder(nn.Module):
    """x (B,C,H,W) -> logits or features (B, out_channels, H/4, W/4)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 128,
                 first_kernel: int = 3, hidden_ratio: float = 0.25, init_std: float = 0.02,
                 float32_logits: bool = False):
        super().__init__()
        first = _conv(in_channels, width, first_kernel)
        blocks, cin = _stages(width, width, hidden_ratio, range(STAGES), (3, 3, 3, 1),
                              lambda: nn.MaxPool2d(2))
        head = Float32Conv2d(cin, out_channels, 1) if float32_logits else _conv(cin, out_channels, 1)
        self.net = nn.Sequential(first, *blocks, nn.ReLU(), head)
        self.downsample = 2 ** (STAGES - 1)
        _init_weights(self, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DalleDecoder(nn.Module):
    """z_q (B,D,h,w) -> x_hat (B, out_channels, 4h, 4w)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 128,
                 hidden_ratio: float = 0.25, init_std: float = 0.02):
        super().__init__()
        blocks, cin = _stages(in_channels, width, hidden_ratio, reversed(range(STAGES)), (1, 3, 3, 3),
                              lambda: nn.Upsample(scale_factor=2, mode="nearest"))
        self.net = nn.Sequential(*blocks, nn.ReLU(), _conv(cin, out_channels, 1))
        _init_weights(self, init_std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
