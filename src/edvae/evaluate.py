"""Evaluation of a trained model on a split: MSE, perplexities, used codes, entropy of pi,
evidential uncertainty; written to eval.json with PNGs beside it.

`batch_perplexity` is the authors' protocol (their evaluation code): the perplexity of each batch of
`batch_size` images, averaged over the full batches only, as their data loader drops the last
partial batch; None when the split holds less than one batch. `perplexity` is the dataset-level
histogram's, over every image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write_text
from .data import ImageSet, to_model_input
from .metrics import code_counts, entropy, perplexity
from .model import DiscreteVAE
from .plots import save_entropy_maps, save_reconstructions, save_usage

AUTHORS_BATCH = 128  # the authors log perplexity per batch of 128 and average over batches


class CodeTally:
    """Code counts, squared error and per-batch perplexities of one way of choosing codes."""

    def __init__(self, k: int, device: torch.device):
        self.counts = torch.zeros(k, dtype=torch.int64, device=device)
        self.sq_err = 0.0
        self.batch_ppl: list[float] = []

    def add(self, codes: torch.Tensor, x_hat: torch.Tensor, x: torch.Tensor, full: bool = True) -> None:
        """One batch; `full` false for a last batch shorter than the others (no batch perplexity)."""
        self.sq_err += float(((x_hat - x) ** 2).sum())
        c = code_counts(codes, self.counts.shape[0])
        self.counts += c
        if full:
            self.batch_ppl.append(perplexity(c))

    def summary(self, pixels: int, suffix: str = "") -> dict[str, Any]:
        batch_ppl = sum(self.batch_ppl) / len(self.batch_ppl) if self.batch_ppl else None
        return {f"mse{suffix}": self.sq_err / pixels, f"perplexity{suffix}": perplexity(self.counts),
                f"batch_perplexity{suffix}": batch_ppl,
                f"used_codes{suffix}": int((self.counts > 0).sum())}


class PosteriorTally:
    """Entropy of the posterior over codes per position, its map, and the uncertainty."""

    def __init__(self):
        self.ent_sum = self.ent_sq = self.unc_sum = 0.0
        self.ent_map: torch.Tensor | None = None
        self.has_uncertainty = False

    def add(self, p: torch.Tensor, uncertainty: torch.Tensor | None) -> torch.Tensor:
        ent = entropy(p)  # (B, h, w)
        wide = ent.double()  # float64 sums: the std is sqrt(E[H^2] - E[H]^2), which cancels
        self.ent_sum += float(wide.sum())
        self.ent_sq += float((wide ** 2).sum())
        self.ent_map = ent.sum(0) if self.ent_map is None else self.ent_map + ent.sum(0)
        if uncertainty is not None:
            self.has_uncertainty = True
            self.unc_sum += float(uncertainty.sum())
        return ent

    def summary(self, positions: int) -> dict[str, Any]:
        if self.ent_map is None:  # nothing added: a quantizer without probabilities
            return {"entropy_mean": None, "entropy_std": None, "uncertainty_mean": None}
        mean = self.ent_sum / positions
        return {"entropy_mean": mean,
                "entropy_std": max(self.ent_sq / positions - mean ** 2, 0.0) ** 0.5,
                "uncertainty_mean": self.unc_sum / positions if self.has_uncertainty else None}


@torch.no_grad()
def evaluate(model: DiscreteVAE, data: ImageSet, batch_size: int = AUTHORS_BATCH,
             limit: int | None = None, sampled: bool = True, seed: int = 0,
             keep_images: int = 0) -> dict[str, Any]:
    """Metrics over `data` (first `limit` images), codes by argmax and, for quantizers with
    probabilities, also drawn from Cat(pi) with a seeded generator."""
    model.eval()
    q, k, device = model.quantizer, model.config.codebook_size, model.device
    n = len(data) if limit is None else min(limit, len(data))
    gen = torch.Generator(device=device).manual_seed(seed)
    argmax, drawn, posterior = CodeTally(k, device), CodeTally(k, device), PosteriorTally()
    kept: dict[str, list[torch.Tensor]] = {"x": [], "x_hat": [], "entropy": []}
    for idx in torch.arange(n).split(batch_size):
        x = to_model_input(data.batch(idx).to(device))
        full = x.shape[0] == batch_size
        z_e = model.encoder(x).float()
        codes = q.codes(z_e)
        x_hat = model.decoder(q.embed(codes))
        argmax.add(codes, x_hat, x, full)
        p, ent = q.probabilities(z_e), None
        if p is not None:
            ent = posterior.add(p, q.uncertainty(z_e))
            if sampled:
                codes_s = q.sample_codes(z_e, generator=gen)
                drawn.add(codes_s, model.decoder(q.embed(codes_s)), x, full)
        if keep_images and sum(t.shape[0] for t in kept["x"]) < keep_images:
            kept["x"].append(x.cpu())
            kept["x_hat"].append(x_hat.cpu())
            if ent is not None:
                kept["entropy"].append(ent.cpu())
    pixels = n * model.config.channels * model.config.image_size ** 2
    positions = n * model.latent_size ** 2
    ent_map = posterior.ent_map  # None without probabilities
    result: dict[str, Any] = {"n_images": n, "codebook_size": k, **argmax.summary(pixels),
                              **posterior.summary(positions)}
    if sampled and ent_map is not None:
        result.update(drawn.summary(pixels, "_sampled"))
    result["code_counts"] = argmax.counts.cpu().tolist()
    if keep_images:
        result["_images"] = {key: torch.cat(v)[:keep_images] if v else None for key, v in kept.items()}
        result["_entropy_map"] = (ent_map / n).cpu() if ent_map is not None else None
    return result


def write_eval(run_dir: Path, result: dict[str, Any]) -> Path:
    images = result.pop("_images", None)
    ent_map = result.pop("_entropy_map", None)
    if images is not None:
        save_reconstructions(run_dir / "reconstructions.png", images["x"], images["x_hat"])
        if images["entropy"] is not None and ent_map is not None:
            save_entropy_maps(run_dir / "entropy_maps.png", ent_map, images["entropy"])
    save_usage(run_dir / "code_usage.png", result["code_counts"], result["perplexity"])
    path = run_dir / "eval.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    return path
