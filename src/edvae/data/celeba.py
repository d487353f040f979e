"""CelebA (aligned): root/img_align_celeba/*.jpg and root/list_eval_partition.txt.

Each image is centre-cropped to 140x140 and resized (bicubic) to `size` (default 64).
Splits follow the official partition numbers: train = 0, valid = 1, test = 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from edvae.data.images import ImageSet, check_request, convert, open_image, pil_to_tensor, streaming_set
from edvae.errors import EdvaeError

PARTITIONS = {"train": 0, "valid": 1, "test": 2}
CROP = 140


def read_partition(path: Path) -> list[tuple[str, int]]:
    """(file name, partition) pairs from "000001.jpg 0" lines (a CSV "a.jpg,0" works too)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EdvaeError(f"cannot read CelebA partition file {path}: {e}") from e
    entries = []
    for i, line in enumerate(lines):
        parts = line.replace(",", " ").split()
        if len(parts) == 2 and parts[1].isdigit():
            entries.append((parts[0], int(parts[1])))
        elif parts and not (i == 0 and not parts[-1].isdigit()):  # allow one header line
            raise EdvaeError(f"CelebA partition file {path}, line {i + 1}: bad line {line!r}")
    return entries


def decode_celeba(path: Path, size: int, channels: int) -> torch.Tensor:
    """Centre crop 140x140, resize to size x size (bicubic) -> uint8 (C, size, size)."""
    img = open_image(path)
    w, h = img.size
    if min(w, h) < CROP:
        raise EdvaeError(f"CelebA image {path} is {w}x{h}, smaller than the {CROP}x{CROP} crop")
    left, top = (w - CROP) // 2, (h - CROP) // 2
    img = convert(img.crop((left, top, left + CROP, top + CROP)), channels)
    if size != CROP:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return pil_to_tensor(img)


def load_celeba(split: str = "train", root: str | Path | None = None, *,
                size: int | None = None, channels: int | None = None,
                limit: int | None = None, cache_to_memory: bool = False) -> ImageSet:
    """CelebA `split` (train/valid/test): streaming, or one tensor with cache_to_memory=True."""
    size, channels = check_request("celeba", split, limit, size, channels, default_size=64,
                                   splits=tuple(PARTITIONS))
    if root is None:
        raise EdvaeError("celeba needs root= a folder with img_align_celeba/ and "
                         "list_eval_partition.txt")
    root = Path(root).expanduser()
    images = root / "img_align_celeba"
    if (images / "img_align_celeba").is_dir():  # the Kaggle copy nests it twice
        images = images / "img_align_celeba"
    if not images.is_dir():
        raise EdvaeError(f"CelebA folder {images} does not exist")
    partition = root / "list_eval_partition.txt"
    if not partition.is_file() and (root / "list_eval_partition.csv").is_file():
        partition = root / "list_eval_partition.csv"
    if not partition.is_file():
        raise EdvaeError(f"CelebA partition file {partition} does not exist")
    names = [n for n, p in read_partition(partition) if p == PARTITIONS[split]][:limit]
    if not names:
        raise EdvaeError(f"CelebA partition file {partition} lists no images for split {split}")
    present = set(os.listdir(images))
    missing = [n for n in names if n not in present]
    if missing:
        raise EdvaeError(f"{len(missing)} CelebA images missing from {images}, e.g. {missing[0]}")
    return streaming_set("celeba", root, [str(images / n) for n in names], decode_celeba, size=size,
                         channels=channels, cache_to_memory=cache_to_memory)
