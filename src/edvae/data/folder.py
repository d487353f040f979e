"""Any folder of images (png, jpg, jpeg, bmp, webp), searched recursively in sorted order.

Splits: if the folder has train/ and test/ subfolders, those are the splits. Otherwise the
sorted file list is split 90/10: every tenth file (positions 9, 19, 29, ...) is "test", the
others "train". Images are resized so the shorter side is `size` (bicubic), centre-cropped
to size x size, and converted to `channels` (1: "L", 3: "RGB").
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image

from edvae.data.images import (
    GRAY_MODES,
    ImageSet,
    check_limit,
    check_split,
    convert,
    open_image,
    pil_to_tensor,
    resize_center_crop,
    streaming_set,
)
from edvae.errors import EdvaeError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder` (in its subfolders too, unless not `recursive`), sorted by
    relative path: the one reader of image folders (data sets, the tokenizer, FID)."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in found if p.suffix.lower() in EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def split_files(root: Path, split: str) -> list[Path]:
    """The files of `split`: root/train, root/test if both exist, else the 90/10 rule."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        files = list_images(root / split)
    else:
        files = list_images(root)
        if not files:
            raise EdvaeError(f"no images ({', '.join(EXTENSIONS)}) in folder {root}")
        files = [p for i, p in enumerate(files) if (i % 10 == 9) == (split == "test")]
    if not files:
        raise EdvaeError(f"no images for split {split} in folder {root}")
    return files


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    try:
        with Image.open(path) as img:
            return img.mode, img.size
    except (OSError, SyntaxError, ValueError) as e:
        raise EdvaeError(f"cannot read image {path}: {e}") from e


def decode_resized(path: Path | BinaryIO, size: int, channels: int, what: str | None = None) -> torch.Tensor:
    """Decode (a path or a binary file object, named `what` in errors), convert to L/RGB, resize the
    shorter side to size, centre crop -> (C, size, size)."""
    return pil_to_tensor(resize_center_crop(convert(open_image(path, what), channels), size))


def load_folder(split: str = "train", root: str | Path | None = None, *,
                size: int | None = None, channels: int | None = None,
                limit: int | None = None, name: str = "folder",
                cache_to_memory: bool = False) -> ImageSet:
    """A streaming set over the images of `split` in `root` (see the module docstring)."""
    check_split(name, split)
    check_limit(limit)
    if root is None:
        raise EdvaeError(f"{name} needs root= a folder of images")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EdvaeError(f"image folder {root} does not exist")
    files = split_files(root, split)[:limit]
    if channels is None:
        channels = 1 if _header(files[0])[0] in GRAY_MODES else 3
    if size is None:
        sizes = {_header(p)[1] for p in files}
        (w, h), *_ = sizes
        if len(sizes) > 1 or w != h:
            raise EdvaeError(f"images in {root} are not all square of one size "
                             f"(e.g. {w}x{h}); pass size=")
        size = w
    return streaming_set(name, root, [str(p) for p in files], decode_resized, size=size, channels=channels,
                         cache_to_memory=cache_to_memory)
