"""The InceptionV3 of FID in plain torch: the 2048-d pool features of the 2015-12-05 TensorFlow graph.

FID (Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter 2017, "GANs trained by a two time-scale update
rule converge to a local Nash equilibrium", arXiv:1706.08500) is measured in the `pool_3` features of
the InceptionV3 graph (Szegedy, Vanhoucke, Ioffe, Shlens, Wojna 2016, "Rethinking the Inception
architecture for computer vision", arXiv:1512.00567) that TensorFlow released on 2015-12-05. The PyTorch
ports that reproduce those features, and whose weight file this network reads (inception_weights.py),
are pytorch-fid (M. Seitzer) and torch-fidelity (A. Obukhov et al.). This network computes what
torch-fidelity's `FeatureExtractorInceptionV3` computes for its "2048" features; tests/test_inception.py
checks the two against each other. What makes it FID's network rather than a classifier's InceptionV3:

1. Input: uint8 images (0..255), or floats in [0, 1] (multiplied by 255), RGB, any size.
2. Resize to 299x299 as TF1's `resize_bilinear(align_corners=False)` does, which has no half-pixel
   centres: output pixel i samples the input at i * in / out (in float32), between the pixels
   floor(.) and floor(.) + 1 (clamped to the last one). PyTorch's bilinear `interpolate` samples at
   (i + 0.5) * in / out - 0.5 instead, which gives other features.
3. Scaling: (x - 128) / 128, the graph's `Sub` and `Mul(1/128)`; 255 maps to 0.9921875, not 1.
4. Every convolution is followed by BatchNorm with eps 0.001 and a ReLU; no convolution has a bias.
5. The 3x3 average pools in the blocks A, C and E_1 (FIDInceptionA, FIDInceptionC, Mixed_7b's
   FIDInceptionE) leave the padded zeros out of the average (count_include_pad=False), as TF's
   SAME-padded pooling does; torchvision's blocks count them.
6. The last block (E_2: Mixed_7c's FIDInceptionE) pools its `branch_pool` with a 3x3 max pool, not an
   average: the 2015 graph does so.
7. No auxiliary classifier and no logits: the features are the spatial mean of Mixed_7c's 2048 x 8 x 8.

Module names follow the weight files (Conv2d_1a_3x3, Mixed_5b.branch1x1, ...), so that a file's
tensors land on this network by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import EdvaeError

INPUT_SIZE = 299
FEATURES = 2048


# ---------------------------------------------------------------------------------------------
# Input: TF1-compatible resize and scaling


def _tf1_taps(n_in: int, n_out: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor,
                                                                           torch.Tensor]:
    """For each output index i along one axis: the two input indices and the weight of the second,
    sampling at i * (n_in / n_out) with the scale rounded to float32 as TF1 holds it."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32, device=device)
    where = torch.arange(n_out, dtype=dtype, device=device) * scale
    lo = where.long()  # floor, as where >= 0
    hi = (lo + 1).clamp_max(n_in - 1)
    return lo, hi, where - lo.to(dtype)


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float (N, C, H, W) -> (N, C, size[0], size[1]) by TF1's resize_bilinear, align_corners=False.

    Separable: first along the width, then along the height, each step a + (b - a) * t."""
    if x.dim() != 4 or not x.is_floating_point():
        raise EdvaeError(f"the resize takes float (N, C, H, W) images, got {x.dtype} {tuple(x.shape)}")
    for dim, n_out in ((3, size[1]), (2, size[0])):
        lo, hi, t = _tf1_taps(x.shape[dim], n_out, x.dtype, x.device)
        a, b = x.index_select(dim, lo), x.index_select(dim, hi)
        x = a + (b - a) * (t if dim == 3 else t[:, None])
    return x


def inception_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) RGB (N, 3, H, W) -> float32 (N, 3, 299, 299) in [-1, 1)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise EdvaeError(f"InceptionV3 takes RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.to(torch.float32)
    elif images.is_floating_point():
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise EdvaeError(f"float images for InceptionV3 must lie in [0, 1], got values in "
                             f"[{low:.4g}, {high:.4g}] (uint8 images are read as 0..255)")
        x = images.to(torch.float32) * 255.0
    else:
        raise EdvaeError(f"InceptionV3 takes uint8 or float images, got {images.dtype}")
    x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
    return (x - 128.0) / 128.0


# ---------------------------------------------------------------------------------------------
# Blocks


class ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (eps 0.001, the graph's), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    """3x3, stride 1, padding 1, averaging only the pixels inside the image (TF's SAME pooling)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3, stride 1, padding 1: the maximum (Mixed_7c's pool branch, the 2015 graph's choice)."""
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _chain(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


class FIDInceptionA(nn.Module):
    """Mixed_5b/c/d, 35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool (no padded zeros)-1x1."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x),
                          _chain(x, self.branch5x5_1, self.branch5x5_2),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a, 35x35 -> 17x17: 3x3/2 | 1x1-3x3-3x3/2 | max pool 3x3/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x),
                          _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                          F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..e, 17x17, factorised 7x7: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg pool-1x1."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x),
                          _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                          _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                                 self.branch7x7dbl_4, self.branch7x7dbl_5),
                          self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a, 17x17 -> 8x8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool 3x3/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([_chain(x, self.branch3x3_1, self.branch3x3_2),
                          _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                                 self.branch7x7x3_4),
                          F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b/c, 8x8: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1. `pool`: Mixed_7b (E_1)
    averages without the padded zeros, Mixed_7c (E_2) takes the 3x3 maximum."""

    def __init__(self, c_in: int, pool: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.pool = pool
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, **row)
        self.branch3x3_2b = ConvBN(384, 384, **col)
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, **row)
        self.branch3x3dbl_3b = ConvBN(384, 384, **col)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
                          self.branch_pool(self.pool(x))], 1)


# ---------------------------------------------------------------------------------------------
# The network


class FIDInceptionV3(nn.Module):
    """Images (uint8, or float in [0, 1]; RGB; any size) -> float32 (N, 2048) pool features.

    Built with untrained weights: load the 2015-12-05 weights with inception_weights.load_fid_inception.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool=_avg_pool_tf)
        self.Mixed_7c = FIDInceptionE(2048, pool=_max_pool_same)
        self.requires_grad_(False)
        self.eval()

    def pool_features(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled 299x299 input (N, 3, 299, 299) -> (N, 2048)."""
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)  # 147x147
        x = F.max_pool2d(x, 3, stride=2)                                             # 73x73
        x = _chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)                         # 71x71
        x = F.max_pool2d(x, 3, stride=2)                                             # 35x35
        x = _chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,     # 17x17
                   self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                   self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)                      # 8x8
        return F.adaptive_avg_pool2d(x, 1).flatten(1)                                # the 8x8 mean

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool_features(inception_input(images)).float()
