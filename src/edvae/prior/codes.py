"""Code maps of a run's data splits, encoded once and cached as safetensors.

A cache file holds one int16 (int32 for K > 32768) tensor `codes` of shape (N, h, w). Its metadata
records the SHA-256 of the model file that produced it, the split and the number of images. The
cache is reused only when all three still match. The prior therefore never trains on the codes of
another model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint
from ..data import ImageSet
from ..data.download import sha256sum
from ..errors import EdvaeError
from ..model import DiscreteVAE
from ..run_folder import load_split, run_config, run_model_file

CODES_FORMAT = "edvae-codes-1"


def codes_file(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"codes-{split}.safetensors"


@torch.no_grad()
def encode_images(model: DiscreteVAE, data: ImageSet, batch_size: int = 256) -> torch.Tensor:
    """Code maps of every image of `data`, (N, h, w) int64 on the CPU."""
    model.eval()
    torch.manual_seed(0)  # a quantizer that samples at evaluation (eval_mode=sample) draws the same codes
    batches = torch.arange(len(data)).split(batch_size)
    return torch.cat([model.encode(data.batch(idx)).cpu() for idx in batches])


def _read_cache(path: Path) -> tuple[torch.Tensor, dict[str, str]] | None:
    try:
        tensors, meta = checkpoint.read_tensors(path, CODES_FORMAT)
        return tensors["codes"], meta
    except (EdvaeError, KeyError):
        return None  # missing or unreadable: encode again and replace it


def cached_codes(run_dir: str | Path, cache_dir: str | Path, split: str, *,
                 model: DiscreteVAE | None = None, device: torch.device | str = "cpu", batch_size: int = 256,
                 log=print) -> torch.Tensor:
    """The code maps of `split` of the run's dataset, from the cache in `cache_dir` when it was made
    by this run's model file, else encoded now and cached. Returns int16/int32 (N, h, w) on the CPU."""
    sha = sha256sum(run_model_file(run_dir))
    path = codes_file(cache_dir, split)
    cfg = run_config(run_dir)
    hit = _read_cache(path)
    if hit is not None:
        codes, meta = hit
        if meta.get("model_sha256") == sha and meta.get("split") == split:
            return codes
        log(f"{path}: made by another model or split; encoding again")
    model = model or DiscreteVAE.load(run_dir, device)
    data = load_split(cfg, split, model.device)
    log(f"encoding the {split} split of {cfg.train.dataset} ({len(data)} images) to code maps")
    k = model.config.codebook_size
    codes = encode_images(model, data, batch_size).to(torch.int16 if k <= 32768 else torch.int32)
    meta = {"format": CODES_FORMAT, "model_sha256": sha, "split": split, "dataset": cfg.train.dataset,
            "n": str(codes.shape[0]), "codebook_size": str(k), "run": str(run_dir)}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    checkpoint.save_tensors({"codes": codes}, path, meta)
    return codes


def unigram_bits(train_codes: torch.Tensor, test_codes: torch.Tensor, codebook_size: int,
                 smoothing: float = 1.0) -> tuple[float, float]:
    """The unigram baseline: (cross-entropy in bits per code of the test codes under the training
    histogram with add-`smoothing` counts, entropy in bits of that training histogram)."""
    counts = torch.bincount(train_codes.reshape(-1).long(), minlength=codebook_size).double() + smoothing
    p = counts / counts.sum()
    logp = p.log2()
    test = torch.bincount(test_codes.reshape(-1).long(), minlength=codebook_size).double()
    cross = float(-(test * logp).sum() / test.sum().clamp_min(1))
    return cross, float(-(p * logp).sum())
