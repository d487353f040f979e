"""A run folder as every command reads it: its config, its model file and its data splits, with
one-line errors naming the file when one is missing, truncated or unparseable."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint
from .config import RunConfig, from_dict
from .data import ImageSet, load_dataset
from .errors import EdvaeError

SIZED_DATASETS = ("celeba", "lsun-church", "folder", "synthetic")  # resized to model.image_size


def run_model_file(run_dir: str | Path) -> Path:
    """model.safetensors of a finished run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EdvaeError(f"run folder not found: {run_dir} is not a finished run")
    path = run_dir / checkpoint.MODEL_FILE
    if not path.is_file():
        raise EdvaeError(f"{run_dir} is not a finished run ({path} missing)")
    return path


def read_json(path: Path) -> dict:
    """A JSON object from a file of a run folder, or one line naming the file."""
    if not path.is_file():
        raise EdvaeError(f"{path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdvaeError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EdvaeError(f"{path} does not hold a JSON object")
    return data


def run_config(run_dir: str | Path) -> RunConfig:
    """The validated config.json of a run folder."""
    path = Path(run_dir) / checkpoint.CONFIG_FILE
    try:
        return from_dict(read_json(path))
    except EdvaeError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise EdvaeError(f"{path}: {exc}") from None


def load_split(cfg: RunConfig, split: str, device: torch.device | str = "cpu") -> ImageSet:
    """One split of a run's dataset, as its trainer loads it (same size and limits)."""
    t = cfg.train
    size = cfg.model.image_size if t.dataset in SIZED_DATASETS else None
    limit = t.limit_train if split == "train" else t.limit_test
    data = load_dataset(t.dataset, split, root=t.data_dir, download=t.download, seed=t.seed, size=size,
                        limit=limit)
    return data.to(device)


def load_splits(cfg: RunConfig, device: torch.device | str) -> tuple[ImageSet, ImageSet]:
    return load_split(cfg, "train", device), load_split(cfg, "test", device)
