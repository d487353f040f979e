"""Checkpoints as safetensors with the JSON config in the file's metadata; written atomically.

Nothing is ever loaded through pickle. A training state holds the model, Adam's moments and the
step; the data order and all noise are functions of (seed, step), so nothing else is needed for
an exact resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .errors import EdvaeError

MODEL_FILE = "model.safetensors"
STATE_FILE = "checkpoint.safetensors"
CONFIG_FILE = "config.json"
DIVERGED_FILE = "diverged.json"  # {"step", "message"}: the training diverged there (engine/loop.py)
FORMAT = "edvae-1"


def divergence(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's record of a diverged training ({"step", "message"}), None when it has none."""
    path = Path(run_dir) / DIVERGED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (metrics.jsonl, a study's runs.jsonl); [] when it is missing."""
    lines = Path(path).read_text().splitlines() if Path(path).is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode())


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file of `tensors` (on the CPU) with string `metadata`, written atomically."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata)
    atomic_write_bytes(Path(path), data)


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], mismatch: str) -> None:
    """`module.load_state_dict(tensors)`; EdvaeError "`mismatch`: why" if they do not fit."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as exc:
        raise EdvaeError(f"{mismatch}: {exc}") from None


def read_tensors(path: Path, fmt: str = FORMAT) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata, checked to be edvae's format `fmt`."""
    path = Path(path)
    if not path.is_file():
        raise EdvaeError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EdvaeError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None
    if metadata.get("format") != fmt:
        raise EdvaeError(f"checkpoint {path} is not an edvae checkpoint (format {metadata.get('format')!r})")
    return tensors, metadata


def _config_of(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise EdvaeError(f"checkpoint {path} holds no readable config ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise EdvaeError(f"checkpoint {path} holds no readable config (not a mapping)")
    return config


def save_model(path: Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    save_tensors(model.state_dict(), path, {"format": FORMAT, "config": json.dumps(config)})


def load_model_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, metadata = read_tensors(path)
    return tensors, _config_of(path, metadata)


def save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
               config: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(value)
    meta = {"format": FORMAT, "config": json.dumps(config), "step": str(step)}
    save_tensors(tensors, path, meta)


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore model and optimizer in place; returns the number of steps done."""
    tensors, metadata = read_tensors(path)
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_into(model, model_sd, f"checkpoint {path} does not fit the model")
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        name, slot = key[len("optim."):].rsplit(".", 1)
        if name not in params:
            raise EdvaeError(f"checkpoint {path} holds optimizer state of an unknown parameter {name}")
        p = params[name]
        optimizer.state[p][slot] = value.to(p.device) if slot != "step" else value
    if not metadata.get("step", "").isdigit():
        raise EdvaeError(f"checkpoint {path} holds no step count")
    return int(metadata["step"])


def read_state_config(path: Path) -> dict[str, Any]:
    _, metadata = read_tensors(path)
    return _config_of(path, metadata)
