"""Image data sets as uint8 (N, C, H, W), one module per source, behind load_dataset()."""

from __future__ import annotations

from pathlib import Path

from edvae.data.celeba import load_celeba
from edvae.data.cifar10 import load_cifar10
from edvae.data.fashion_mnist import fashion_mnist_source, load_fashion_mnist
from edvae.data.folder import load_folder
from edvae.data.images import (
    ImageSet,
    InMemoryImages,
    StreamingImages,
    to_model_input,
    to_uint8,
)
from edvae.data.lsun import load_lsun
from edvae.data.synthetic import load_synthetic
from edvae.errors import EdvaeError

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "celeba", "lsun-church", "folder",
                             "synthetic")

__all__ = [
    "DATASETS", "ImageSet", "InMemoryImages", "StreamingImages", "fashion_mnist_source",
    "load_dataset", "to_model_input", "to_uint8",
]


def load_dataset(name: str, split: str = "train", root: str | Path | None = None, *,
                 download: bool = False, size: int | None = None, channels: int | None = None,
                 seed: int = 0, limit: int | None = None,
                 cache_to_memory: bool = False) -> ImageSet:
    """Load split "train" or "test" ("valid" too for celeba) of one of DATASETS.

    `root` is the data folder (optional for fashion-mnist and cifar10, unused by synthetic);
    `download` fetches fashion-mnist / cifar10; `size`/`channels` override the source's own;
    `seed` only drives synthetic; `limit` keeps the first N items; `cache_to_memory` decodes
    a streaming set (celeba, lsun-church, folder) into one tensor.
    """
    opts = {"size": size, "channels": channels, "limit": limit}
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root, download=download, **opts)
    if name == "cifar10":
        return load_cifar10(split, root, download=download, **opts)
    if name == "celeba":
        return load_celeba(split, root, cache_to_memory=cache_to_memory, **opts)
    if name == "lsun-church":
        return load_lsun(split, root, cache_to_memory=cache_to_memory, **opts)
    if name == "folder":
        return load_folder(split, root, cache_to_memory=cache_to_memory, **opts)
    if name == "synthetic":
        return load_synthetic(split, seed=seed, **opts)
    raise EdvaeError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
