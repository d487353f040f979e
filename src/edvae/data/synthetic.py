"""Synthetic mixture-of-Gaussians images that need no files.

`n_components` prototypes (sums of smooth random blobs) are drawn from `seed`; each image is
a randomly chosen prototype plus Gaussian noise (std `noise`, pixel range 0..1), clipped and
quantised to uint8; its label is the prototype index. Train and test share the prototypes
but are drawn from different seeds. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np
import torch

from edvae.data.images import InMemoryImages, check_request

DEFAULT_N = {"train": 10000, "test": 2000}
SPLIT_STREAM = {"train": 1, "test": 2}


def prototypes(n_components: int, channels: int, size: int, seed: int = 0,
               blobs: int = 4) -> np.ndarray:
    """float32 (K, C, size, size) in [0, 1]: a grey background plus bright and dark blobs."""
    rng = np.random.default_rng([seed, 0])
    centers = rng.random((n_components, blobs, 2, 1, 1), dtype=np.float32)
    widths = 0.08 + 0.2 * rng.random((n_components, blobs, 1, 1), dtype=np.float32)
    amps = 2 * rng.random((n_components, blobs, channels), dtype=np.float32) - 1
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    d2 = (t[None, :] - centers[:, :, 0]) ** 2 + (t[:, None] - centers[:, :, 1]) ** 2
    bumps = np.exp(-d2 / (2 * widths**2))  # (K, blobs, H, W)
    return np.clip(0.5 + 0.5 * np.einsum("kbc,kbhw->kchw", amps, bumps), 0, 1)


def load_synthetic(split: str = "train", *, size: int | None = None,
                   channels: int | None = None, seed: int = 0, limit: int | None = None,
                   n: int | None = None, n_components: int = 10,
                   noise: float = 0.1) -> InMemoryImages:
    """`n` images (default 10000 train / 2000 test, at most `limit`) with int64 labels."""
    size, channels = check_request("synthetic", split, limit, size, channels, default_size=32,
                                   default_channels=1)
    n = n or DEFAULT_N[split]
    if limit is not None:
        n = min(n, limit)
    protos = prototypes(n_components, channels, size, seed)
    rng = np.random.default_rng([seed, SPLIT_STREAM[split]])
    labels = rng.integers(0, n_components, n)
    x = protos[labels] + noise * rng.standard_normal((n, channels, size, size), dtype=np.float32)
    images = torch.from_numpy(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8))
    return InMemoryImages(
        name="synthetic", channels=channels, size=size, images=images,
        labels=torch.from_numpy(labels.astype(np.int64)),
        source=f"synthetic(seed={seed}, n_components={n_components}, noise={noise})",
    )
