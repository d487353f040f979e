"""Images <-> code files for the command line: codes as .npy (int32, never pickled) plus a JSON
list of the source files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .checkpoint import atomic_write_text
from .data.folder import list_images
from .engine.runtime import pick_device
from .errors import EdvaeError
from .model import DiscreteVAE
from .plots import save_png


def _image_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += list_images(path)
        elif path.is_file():
            files.append(path)
        else:
            raise EdvaeError(f"no such image file or folder: {path}")
    if not files:
        raise EdvaeError(f"no images found in {', '.join(inputs)}")
    return files


def _read_image(path: Path, channels: int, size: int) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode not in ("L", "RGB", "RGBA", "LA", "P", "I;16", "1"):
                raise EdvaeError(f"{path}: unsupported image mode {mode}")
            is_grey = mode in ("L", "LA", "I;16", "1")
            if (channels == 1) != is_grey:
                raise EdvaeError(f"{path}: has {'1' if is_grey else '3'} channel(s), "
                                 f"the model takes {channels}")
            if im.size != (size, size):
                raise EdvaeError(f"{path}: is {im.size[0]}x{im.size[1]}, the model takes {size}x{size}")
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise EdvaeError(f"{path}: not a readable image ({exc})") from None
    t = torch.from_numpy(arr.copy())
    return t[None] if channels == 1 else t.permute(2, 0, 1)


def encode_files(run_dir: str, inputs: list[str], output: Path, device: str = "auto",
                 batch_size: int = 256) -> int:
    model = DiscreteVAE.load(run_dir, pick_device(device))
    files = _image_files(inputs)
    c, s = model.config.channels, model.config.image_size
    images = torch.stack([_read_image(f, c, s) for f in files])
    codes = torch.cat([model.encode(images[i:i + batch_size]).cpu()
                       for i in range(0, len(images), batch_size)])
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp.npy")
    np.save(tmp, codes.numpy().astype(np.int32), allow_pickle=False)
    tmp.replace(output)
    atomic_write_text(output.with_suffix(".json"),
                      json.dumps({"files": [str(f) for f in files], "run": str(run_dir)}, indent=1))
    return len(files)


def decode_file(run_dir: str, codes_path: Path, output: Path, device: str = "auto") -> int:
    model = DiscreteVAE.load(run_dir, pick_device(device))
    try:
        codes = np.load(codes_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EdvaeError(f"{codes_path}: not a .npy file of codes ({exc})") from None
    if codes.dtype.kind not in "iu":
        raise EdvaeError(f"{codes_path}: codes must be integers, got {codes.dtype}")
    output.mkdir(parents=True, exist_ok=True)
    indices = torch.from_numpy(codes.astype(np.int64))
    n = 0
    for start in range(0, len(indices), 256):
        images = model.decode(indices[start:start + 256]).cpu()
        for img in images:
            save_png(output / f"{n:06d}.png", img)
            n += 1
    return n
