"""Images <-> code files for the command line: codes as .npy (int32, never pickled) plus a JSON
list of the source files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_text
from .data.folder import list_images
from .data.images import read_image_file
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


def encode_files(run_dir: str, inputs: list[str], output: Path, device: str = "auto",
                 batch_size: int = 256) -> int:
    model = DiscreteVAE.load(run_dir, pick_device(device))
    files = _image_files(inputs)
    c, s = model.config.channels, model.config.image_size
    images = torch.stack([read_image_file(f, c, s, same_channels=True) for f in files])
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
    for start in range(0, len(indices), 256):
        for i, img in enumerate(model.decode(indices[start:start + 256]).cpu()):
            save_png(output / f"{start + i:06d}.png", img)
    return len(indices)
