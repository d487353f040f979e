"""Fashion-MNIST from IDX files (gzipped or raw), zero-padded from 28x28 to 1 x 32 x 32.

Where the files are looked for, in order: `root`; the Debian package folder DEBIAN_DIR; an
earlier download in CACHE_DIR; a download into CACHE_DIR (when download=True); and last the
subset shipped with edvae (first 6000 train / 1000 test images), SUBSET_DIR.
"""

from __future__ import annotations

import gzip
import math
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from edvae.data.download import DownloadError, download
from edvae.data.images import InMemoryImages, adapt, check_limit, check_split
from edvae.errors import EdvaeError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "edvae" / "fashion-mnist"
SUBSET_DIR = Path(__file__).resolve().parent.parent / "resources" / "fashion-mnist-subset"
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MD5 = {  # of the official .gz files
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read a uint8 IDX file (raw, or gzipped if the name ends in .gz)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise EdvaeError(f"cannot read IDX file {path}: {e}") from e
    got = int.from_bytes(data[:4], "big")
    if len(data) < 4 or got != magic:
        raise EdvaeError(f"IDX file {path}: magic number {got}, expected {magic}")
    ndim = magic & 0xFF
    start = 4 + 4 * ndim
    if len(data) < start:
        raise EdvaeError(f"IDX file {path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", data[4:start])
    if len(data) - start != math.prod(dims):
        raise EdvaeError(
            f"IDX file {path}: header says {dims} ({math.prod(dims)} bytes), "
            f"found {len(data) - start} bytes (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(dims)


def _locate(folder: Path, base: str) -> Path | None:
    for name in (base + ".gz", base):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path, split: str) -> bool:
    return all(_locate(folder, base) is not None for base in FILES[split])


def fashion_mnist_source(split: str = "train", root: str | Path | None = None,
                         download: bool = False) -> Path:
    """The folder the files of `split` are read from (downloading them first if asked)."""
    check_split("fashion-mnist", split)
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise EdvaeError(f"fashion-mnist folder {folder} does not exist")
        for base in FILES[split]:
            if _locate(folder, base) is None:
                raise EdvaeError(f"fashion-mnist folder {folder} has no {base}.gz or {base}")
        return folder
    for folder in (DEBIAN_DIR, CACHE_DIR):
        if _complete(folder, split):
            return folder
    if download:
        try:
            for base in MD5:
                _download_one(base)
            return CACHE_DIR
        except DownloadError as e:
            warnings.warn(f"{e}; using the subset shipped with edvae", stacklevel=2)
    return SUBSET_DIR


def _download_one(base: str) -> Path:
    return download(URL + base + ".gz", CACHE_DIR / (base + ".gz"), MD5[base])


def load_fashion_mnist(split: str = "train", root: str | Path | None = None, *,
                       download: bool = False, size: int | None = None,
                       channels: int | None = None, limit: int | None = None) -> InMemoryImages:
    """Fashion-MNIST `split` ("train"/"test") as uint8 (N, 1, 32, 32) with int64 labels."""
    check_limit(limit)
    folder = fashion_mnist_source(split, root, download)
    image_file, label_file = (_locate(folder, base) for base in FILES[split])
    images = read_idx(image_file, IMAGES_MAGIC)
    labels = read_idx(label_file, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise EdvaeError(f"{image_file}: images are {images.shape[1:]}, expected (28, 28)")
    if len(labels) != len(images):
        raise EdvaeError(f"{label_file}: {len(labels)} labels for {len(images)} images")
    images, labels = images[:limit], labels[:limit]
    x = torch.zeros(len(images), 1, 32, 32, dtype=torch.uint8)
    x[:, 0, 2:30, 2:30] = torch.from_numpy(images.copy())
    x = adapt(x, size, channels)
    return InMemoryImages(
        name="fashion-mnist", channels=x.shape[1], size=x.shape[2], images=x,
        labels=torch.from_numpy(labels.astype(np.int64)), source=str(folder),
    )
