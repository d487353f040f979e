"""Image sets (in memory or decoded on demand) and the PIL helpers the sources share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edvae.errors import EdvaeError

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes read as 1 channel


@dataclass(kw_only=True, eq=False)
class ImageSet:
    """Images as uint8 (N, C, H, W).

    In-memory sets hold one tensor; streaming sets decode on demand.
    """

    name: str
    channels: int
    size: int  # H == W
    labels: torch.Tensor | None = field(default=None, repr=False)  # int64 (N,) if labelled
    source: str = ""  # where the images came from (folder, file or description)

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    @property
    def index_device(self) -> torch.device:
        """Where `batch` takes its indices without a copy (a set decoded item by item: the CPU)."""
        return torch.device("cpu")

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) on self.device."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> ImageSet:
        raise NotImplementedError


@dataclass(kw_only=True, eq=False)
class InMemoryImages(ImageSet):
    """All images in one uint8 tensor (N, C, H, W)."""

    images: torch.Tensor = field(repr=False)

    def __post_init__(self) -> None:
        x, shape = self.images, (self.channels, self.size, self.size)
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"{self.name}: expected uint8 (N, {self.channels}, {self.size}, {self.size}), "
                             f"got {x.dtype} {tuple(x.shape)}")
        if self.labels is not None and self.labels.shape != (x.shape[0],):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {x.shape[0]} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def index_device(self) -> torch.device:
        return self.images.device

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return self.images.index_select(0, idx)

    def to(self, device: torch.device | str) -> InMemoryImages:
        labels = None if self.labels is None else self.labels.to(device)
        return dataclasses.replace(self, images=self.images.to(device), labels=labels)


@dataclass(kw_only=True, eq=False)
class StreamingImages(ImageSet):
    """A list of items (files or keys) and a function decoding one item to uint8 (C, H, W)."""

    items: Sequence[Any] = field(repr=False)
    decode: Callable[[Any], torch.Tensor] = field(repr=False)
    output_device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def device(self) -> torch.device:
        return self.output_device

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).tolist()
        out = torch.stack([self.decode(self.items[i]) for i in idx])
        return out.to(self.output_device)

    def to(self, device: torch.device | str) -> StreamingImages:
        return dataclasses.replace(self, output_device=torch.device(device))

    def cache_to_memory(self, workers: int = 8) -> InMemoryImages:
        """Decode every item (in threads) into one tensor; fine for e.g. CelebA at 64x64."""
        out = torch.empty(len(self), self.channels, self.size, self.size, dtype=torch.uint8)

        def fill(i: int) -> None:
            out[i] = self.decode(self.items[i])

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(fill, range(len(self))))
        return InMemoryImages(
            name=self.name, channels=self.channels, size=self.size, labels=self.labels,
            source=self.source, images=out.to(self.output_device),
        )


def streaming_set(name: str, source: object, items: Sequence[Any], decode: Callable[..., torch.Tensor], *,
                  size: int, channels: int, cache_to_memory: bool = False) -> ImageSet:
    """`items` decoded on demand by `decode(item, size=size, channels=channels)` (channels and size
    checked), or all at once into one tensor with cache_to_memory: the streaming sources' end."""
    data = StreamingImages(name=name, channels=check_channels(channels), size=check_size(size),
                           source=str(source), items=items,
                           decode=partial(decode, size=size, channels=channels))
    return data.cache_to_memory() if cache_to_memory else data


def to_model_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    """float32 in [-0.5, 0.5]: x / 255 - 0.5."""
    if batch_uint8.dtype != torch.uint8:
        raise TypeError(f"to_model_input expects uint8 images, got {batch_uint8.dtype}")
    return batch_uint8.to(torch.float32) / 255.0 - 0.5


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of to_model_input: float in [-0.5, 0.5] -> uint8 (rounded, clipped)."""
    return ((x.detach().float() + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)


def adapt(images: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    """Change an in-memory uint8 (N, C, H, W) tensor to `channels` (1 or 3) and `size` x `size`."""
    if channels is not None and channels != images.shape[1]:
        check_channels(channels)
        if channels == 3:
            images = images.expand(-1, 3, -1, -1).contiguous()
        else:  # same weights as PIL's convert("L")
            w = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
            images = ((images.to(torch.int32) * w).sum(1, keepdim=True) + 500) // 1000
            images = images.to(torch.uint8)
    if size is not None and size != images.shape[-1]:
        check_size(size)
        x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        images = x.round().clamp(0, 255).to(torch.uint8)
    return images


def check_size(size: int) -> int:
    if not isinstance(size, int) or size < 1:
        raise EdvaeError(f"size must be a positive integer, got {size!r}")
    return size


def check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise EdvaeError(f"channels must be 1 or 3, got {channels!r}")
    return channels


def open_image(path: str | Path | Any, what: str | None = None) -> Image.Image:
    """Open and fully decode an image (a path or a binary file object); EdvaeError if unreadable."""
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise EdvaeError(f"cannot decode image {what or path}: {e}") from e
    return img


def read_image_file(path: Path, channels: int, size: int | None = None, *,
                    same_channels: bool = False, taker: str = "the model") -> torch.Tensor:
    """An image file as uint8 (channels, H, W), converted to `channels`: the one reader of single
    image files (the tokenizer, FID; data sets decode theirs in their streaming sets). `size`: the
    file must be size x size; `same_channels`: it must be grey for 1 channel and colour for 3."""
    img = open_image(path)
    has = 1 if img.mode in GRAY_MODES else 3
    if same_channels and has != channels:
        raise EdvaeError(f"{path}: has {has} channel(s), {taker} takes {channels}")
    if size is not None and img.size != (size, size):
        raise EdvaeError(f"{path}: is {img.size[0]}x{img.size[1]}, {taker} takes {size}x{size}")
    return pil_to_tensor(convert(img, channels))


def convert(img: Image.Image, channels: int) -> Image.Image:
    return img.convert("L" if channels == 1 else "RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (bicubic), then crop the centre size x size."""
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image in mode L or RGB -> uint8 (C, H, W)."""
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def check_split(name: str, split: str, valid: tuple[str, ...] = ("train", "test")) -> str:
    if split not in valid:
        raise EdvaeError(f"unknown split {split!r} for {name}; valid: {', '.join(valid)}")
    return split


def check_request(name: str, split: str, limit: int | None, size: int | None, channels: int | None, *,
                  default_size: int, default_channels: int = 3,
                  splits: tuple[str, ...] = ("train", "test")) -> tuple[int, int]:
    """A source's first checks: the split, the limit, then size and channels (None: the source's
    defaults). Returns (size, channels)."""
    check_split(name, split, splits)
    check_limit(limit)
    return (check_size(default_size if size is None else size),
            check_channels(default_channels if channels is None else channels))


def check_limit(limit: int | None) -> int | None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise EdvaeError(f"limit must be a positive integer or None, got {limit!r}")
    return limit
