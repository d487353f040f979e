"""CIFAR-10, official "python version": cifar-10-batches-py/{data_batch_1..5, test_batch}."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from edvae.data.download import download as fetch
from edvae.data.download import extract_tar
from edvae.data.images import InMemoryImages, adapt, check_limit, check_split
from edvae.errors import EdvaeError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
CACHE_DIR = Path.home() / ".cache" / "edvae" / "cifar10"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _NumpyUnpickler(pickle.Unpickler):
    """Loads only plain containers and numpy arrays, so a batch file cannot run other code."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 1 pickle, numpy 2
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        with open(path, "rb") as f:
            d = _NumpyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise EdvaeError(f"cannot read CIFAR-10 batch {path}: {e}") from e
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise EdvaeError(f"CIFAR-10 batch {path} is not a dict with b'data' and b'labels'")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise EdvaeError(f"CIFAR-10 batch {path}: data is {data.dtype} {data.shape}, "
                         "expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise EdvaeError(f"CIFAR-10 batch {path}: {labels.size} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def cifar10_folder(split: str = "train", root: str | Path | None = None,
                   download: bool = False) -> Path:
    """The folder holding the batches of `split`: root, root/cifar-10-batches-py, or a download."""
    check_split("cifar10", split)
    base = CACHE_DIR if root is None else Path(root).expanduser()
    for folder in (base, base / FOLDER):
        if all((folder / b).is_file() for b in BATCHES[split]):
            return folder
    if download:
        archive = fetch(URL, base / "cifar-10-python.tar.gz", MD5)
        extract_tar(archive, base)
        archive.unlink()
        if all((base / FOLDER / b).is_file() for b in BATCHES[split]):
            return base / FOLDER
    raise EdvaeError(
        f"no CIFAR-10 batches {', '.join(BATCHES[split])} in {base} or {base / FOLDER}; "
        f"pass root= that folder or use download=True"
    )


def load_cifar10(split: str = "train", root: str | Path | None = None, *,
                 download: bool = False, size: int | None = None,
                 channels: int | None = None, limit: int | None = None) -> InMemoryImages:
    """CIFAR-10 `split` ("train"/"test") as uint8 (N, 3, 32, 32) with int64 labels."""
    check_limit(limit)
    folder = cifar10_folder(split, root, download)
    xs, ys = [], []
    for name in BATCHES[split]:
        x, y = read_batch(folder / name)
        xs.append(x)
        ys.append(y)
        if limit is not None and sum(map(len, xs)) >= limit:
            break
    x = adapt(torch.from_numpy(np.concatenate(xs)[:limit].copy()), size, channels)
    return InMemoryImages(
        name="cifar10", channels=x.shape[1], size=x.shape[2], images=x,
        labels=torch.from_numpy(np.concatenate(ys)[:limit].copy()), source=str(folder),
    )
