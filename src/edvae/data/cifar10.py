"""CIFAR-10, official "binary version": cifar-10-batches-bin/{data_batch_1..5, test_batch}.bin.

The data set is Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", technical
report, University of Toronto, 2009. Its binary version (URL below, md5 as listed on the CIFAR
page) stores each image as one record of 3,073 bytes: one label byte (0-9), then 3,072 pixel bytes,
the 1,024 red values, then the 1,024 green, then the 1,024 blue, each plane row-major 32 x 32.
Every file holds 10,000 records. The files are read as plain bytes with numpy. The "python
version" (cifar-10-batches-py, serialised Python dicts) is not read at all: loading it would run
Python's object deserialiser on downloaded bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edvae.data.download import download as fetch
from edvae.data.download import extract_tar
from edvae.data.images import InMemoryImages, adapt, check_limit, check_split
from edvae.errors import EdvaeError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
PYTHON_FOLDER = "cifar-10-batches-py"  # recognised only to say that it is not read
CACHE_DIR = Path.home() / ".cache" / "edvae" / "cifar10"
BATCHES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS  # one label byte, then the red, green and blue planes
CLASSES = 10


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file -> uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise EdvaeError(f"cannot read CIFAR-10 batch {path}: {e}") from e
    if raw.size == 0 or raw.size % RECORD:
        raise EdvaeError(f"CIFAR-10 batch {path}: {raw.size} bytes is not a positive multiple of the "
                         f"{RECORD}-byte record (1 label byte + {PIXELS} pixel bytes); truncated?")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= CLASSES)
    if bad.size:
        raise EdvaeError(f"CIFAR-10 batch {path}: record {bad[0]} has label {labels[bad[0]]}, "
                         f"expected 0-{CLASSES - 1} ({bad.size} bad labels in all)")
    return np.ascontiguousarray(records[:, 1:]).reshape(-1, 3, 32, 32), labels


def _has_batches(folder: Path, split: str) -> bool:
    return all((folder / b).is_file() for b in BATCHES[split])


def _python_version(base: Path) -> Path | None:
    """The folder of a python-version CIFAR-10 in or at `base`, if there is one."""
    if (base / PYTHON_FOLDER).is_dir():
        return base / PYTHON_FOLDER
    if base.name == PYTHON_FOLDER or (base / "test_batch").is_file() or (base / "data_batch_1").is_file():
        return base if base.is_dir() else None
    return None


def cifar10_folder(split: str = "train", root: str | Path | None = None,
                   download: bool = False) -> Path:
    """The folder holding the .bin batches of `split`: root, root/cifar-10-batches-bin, or a
    download of the binary archive (md5 checked) into root (default CACHE_DIR)."""
    check_split("cifar10", split)
    base = CACHE_DIR if root is None else Path(root).expanduser()
    for folder in (base, base / FOLDER):
        if _has_batches(folder, split):
            return folder
    if download:
        archive = fetch(URL, base / ARCHIVE, MD5)
        extract_tar(archive, base)
        archive.unlink()
        if _has_batches(base / FOLDER, split):
            return base / FOLDER
        raise EdvaeError(f"the archive {URL} did not hold {', '.join(BATCHES[split])} in {FOLDER}/")
    found = base / FOLDER if (base / FOLDER).is_dir() else base
    python = _python_version(base)
    if python is not None and not any(found.glob("*_batch*.bin")):
        raise EdvaeError(
            f"{python} is the CIFAR-10 python version, which edvae does not read: edvae "
            f"reads the binary version (no pickle); use download=True (train.download=true) or "
            f"extract {URL} into {base}"
        )
    missing = [b for b in BATCHES[split] if not (found / b).is_file()]
    raise EdvaeError(
        f"no CIFAR-10 batch {', '.join(missing)} in {found} (looked in {base} and {base / FOLDER}); "
        f"pass root= the folder of the binary version, use download=True, or extract {URL} there"
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
