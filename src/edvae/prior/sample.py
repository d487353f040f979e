"""Ancestral sampling from a fitted PixelSNAIL prior (Chen et al. 2018), decoded by the run's VAE.

The codes are drawn in raster order, one position at a time, from softmax(logits / temperature).
Where top_k > 0, the draw is restricted to the k most likely codes, as in the top-k sampling of Fan
et al. 2018 ("Hierarchical neural story generation"). At row i the prior runs on rows 0..i only:
rows above never see the rows below, so this gives the full map's logits at about half the cost.

The output folder holds:
- images/000000.png ... (the samples as files a FID tool reads, for example torch-fidelity or
  `edvae fid --samples DIR/images`);
- samples.png (a grid of the first 64);
- codes.npy (int32, never pickled);
- samples.json (the settings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..checkpoint import atomic_write_text
from ..data.download import sha256sum
from ..engine.runtime import pick_device
from ..errors import EdvaeError
from ..model import DiscreteVAE
from ..plots import image_grid, save_png
from ..run_folder import run_model_file
from .pixelsnail import PixelSNAIL
from .train_prior import load_prior


def check_sampling(n: int, temperature: float, top_k: int, codebook_size: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise EdvaeError(f"the number of samples must be a positive integer, got {n!r}")
    if not temperature > 0:
        raise EdvaeError(f"temperature must be > 0, got {temperature}")
    if top_k < 0 or top_k > codebook_size:
        raise EdvaeError(f"top-k must lie in [0, {codebook_size}] (0 = off), got {top_k}")


@torch.no_grad()
def sample_codes(prior: PixelSNAIL, n: int, temperature: float = 1.0,
                 top_k: int = 0,  # 0 = the full distribution
                 seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """n code maps (n, size, size) int64 on the CPU; the same seed gives the same maps."""
    k, s = prior.config.codebook_size, prior.config.size
    check_sampling(n, temperature, top_k, k)
    prior.eval()
    device = next(prior.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        codes = torch.zeros(b, s, s, dtype=torch.long, device=device)
        for i in range(s):
            for j in range(s):
                logits = prior(codes[:, :i + 1])[:, :, i, j].float() / temperature
                if top_k:
                    kth = logits.topk(top_k, dim=1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                codes[:, i, j] = torch.multinomial(logits.softmax(1), 1, generator=gen)[:, 0]
        out.append(codes.cpu())
    return torch.cat(out)


def save_grid(path: Path, images: torch.Tensor, nrow: int = 8) -> None:
    grid = image_grid(images, nrow=nrow)
    scale = max(1, -(-512 // max(grid.width, 1)))  # at least 512 pixels wide
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(path)


def sample_run(run_dir: str | Path, n: int, prior_dir: str | Path | None = None,
               out: str | Path | None = None, temperature: float = 1.0, top_k: int = 0, seed: int = 0,
               batch_size: int = 64, device: str = "auto") -> dict[str, Any]:
    """Sample n images from the prior of a run; writes images/, samples.png, codes.npy, samples.json."""
    run_dir = Path(run_dir)
    model_file = run_model_file(run_dir)
    prior_dir = Path(prior_dir) if prior_dir is not None else run_dir / "prior"
    dev = pick_device(device)
    prior, cfg = load_prior(prior_dir, dev)
    check_sampling(n, temperature, top_k, cfg.model.codebook_size)
    vae = DiscreteVAE.load(run_dir, dev)
    if (vae.config.codebook_size, vae.latent_size) != (cfg.model.codebook_size, cfg.model.size):
        raise EdvaeError(f"the prior in {prior_dir} takes {cfg.model.size}x{cfg.model.size} maps of "
                         f"{cfg.model.codebook_size} codes; the run's model makes {vae.latent_size}x"
                         f"{vae.latent_size} maps of {vae.config.codebook_size}")
    if cfg.source.get("model_sha256") not in (None, sha256sum(model_file)):
        raise EdvaeError(f"the prior in {prior_dir} was fitted to the codes of another model "
                         f"than {model_file}")
    folder = prior_dir if prior_dir.is_dir() else prior_dir.parent
    out = Path(out) if out is not None else folder / f"samples-n{n}-t{temperature:g}-k{top_k}-seed{seed}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdvaeError(f"--out {out} already holds files; pick a new folder")
    codes = sample_codes(prior, n, temperature, top_k, seed, batch_size)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    first = []
    for start in range(0, n, batch_size):
        images = vae.decode(codes[start:start + batch_size]).cpu()
        for i, img in enumerate(images):
            save_png(images_dir / f"{start + i:06d}.png", img)
        if len(first) * batch_size < 64:
            first.append(images)
    save_grid(out / "samples.png", torch.cat(first)[:64])
    tmp = out / ".codes.tmp.npy"
    np.save(tmp, codes.numpy().astype(np.int32), allow_pickle=False)
    tmp.replace(out / "codes.npy")
    info = {"n": n, "temperature": temperature, "top_k": top_k, "seed": seed, "run": str(run_dir),
            "prior": str(prior_dir), "images": str(images_dir), "grid": str(out / "samples.png")}
    atomic_write_text(out / "samples.json", json.dumps(info, indent=2))
    return info
