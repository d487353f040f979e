"""The encoder and decoder of VQ-VAE, for the VQ baselines.

van den Oord, Vinyals, Kavukcuoglu, "Neural discrete representation learning", NeurIPS 2017,
Section 4.1: "two strided convolutional layers with stride 2 and window size 4 x 4, followed by two
residual 3 x 3 blocks (implemented as ReLU, 3x3 conv, ReLU, 1x1 conv), all having 256 hidden units";
the decoder mirrors it with two transposed convolutions. The sizes here follow the authors' public
example (deepmind/sonnet, examples/vqvae_example.ipynb, checked for this module): hidden channels
128 (`num_hiddens`), residual hidden channels 32 (`num_residual_hiddens`), 2 residual layers
(`num_residual_layers`); its notebook notes these were also the paper's ImageNet values.
That example's layout, followed here:
- encoder: conv 4x4/2 (-> h/2), ReLU, conv 4x4/2 (-> h), ReLU, conv 3x3 (h), ReLU, residual stack,
  then the 1x1 "pre-VQ" conv to the quantizer's input channels;
- decoder: conv 3x3 (D -> h), residual stack, transposed conv 4x4/2 (-> h/2), ReLU, transposed
  conv 4x4/2 (-> image channels), no output activation;
- residual stack: x += conv1x1(ReLU(conv3x3(ReLU(x)))) per layer, then a final ReLU.
Downsampling is 4, as in the DALL-E nets, so latent grids match (8x8 for 32x32 images).
Weights keep PyTorch's default initialisation (the example uses its framework's defaults);
the DALL-E nets' N(0, 0.02) does not apply here.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualStack(nn.Module):
    """`layers` blocks x <- x + conv1x1(ReLU(conv3x3(ReLU(x)))), then ReLU (ResNet v1 style)."""

    def __init__(self, channels: int, hidden: int, layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(hidden, channels, 1))
            for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return torch.relu(x)


def _check(width: int, residual_hidden: int, residual_layers: int) -> None:
    if width < 2:
        raise ValueError(f"width (hidden channels) must be at least 2 (the first conv has width/2), "
                         f"got {width}")
    if residual_hidden < 1:
        raise ValueError(f"residual_hidden must be at least 1, got {residual_hidden}")
    if residual_layers < 0:
        raise ValueError(f"residual_layers must be >= 0, got {residual_layers}")


class VqvaeEncoder(nn.Module):
    """x (B,C,H,W) -> features (B, out_channels, H/4, W/4)."""

    downsample = 4

    def __init__(self, in_channels: int, out_channels: int, width: int = 128,  # num_hiddens, sonnet example
                 residual_hidden: int = 32,  # num_residual_hiddens, sonnet example
                 residual_layers: int = 2):  # num_residual_layers, sonnet example (paper: two blocks)
        super().__init__()
        _check(width, residual_hidden, residual_layers)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width // 2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width // 2, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            ResidualStack(width, residual_hidden, residual_layers),
            nn.Conv2d(width, out_channels, 1),  # the example's pre-VQ 1x1 conv
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VqvaeDecoder(nn.Module):
    """z_q (B,D,h,w) -> x_hat (B, out_channels, 4h, 4w)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 128,
                 residual_hidden: int = 32, residual_layers: int = 2):
        super().__init__()
        _check(width, residual_hidden, residual_layers)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            ResidualStack(width, residual_hidden, residual_layers),
            nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width // 2, out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
