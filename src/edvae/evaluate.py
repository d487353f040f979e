"""Evaluation of a trained model on a split: MSE, perplexities, used codes, entropy of pi,
evidential uncertainty; written to eval.json with PNGs beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .data import ImageSet, to_model_input
from .metrics import code_counts, entropy, perplexity
from .model import DiscreteVAE

AUTHORS_BATCH = 128  # the authors log perplexity per batch of 128 and average over batches


@torch.no_grad()
def evaluate(model: DiscreteVAE, data: ImageSet, batch_size: int = AUTHORS_BATCH,
             limit: int | None = None, sampled: bool = True, seed: int = 0,
             keep_images: int = 0) -> dict[str, Any]:
    """Metrics over `data` (first `limit` images), codes by argmax and, for quantizers with
    probabilities, also drawn from Cat(pi) with a seeded generator."""
    model.eval()
    q = model.quantizer
    k = model.config.codebook_size
    device = model.device
    n = len(data) if limit is None else min(limit, len(data))
    has_probs = hasattr(q, "probabilities")
    sampled = sampled and has_probs
    gen = torch.Generator(device=device).manual_seed(seed)
    counts = torch.zeros(k, dtype=torch.int64, device=device)
    counts_s = torch.zeros_like(counts)
    sq_err = sq_err_s = 0.0
    batch_ppl, batch_ppl_s = [], []
    ent_sum = ent_sq = unc_sum = 0.0
    ent_map = None
    kept: dict[str, list[torch.Tensor]] = {"x": [], "x_hat": [], "entropy": []}
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x = to_model_input(data.batch(idx).to(device))
        z_e = model.encoder(x).float()
        codes = q.codes(z_e)
        x_hat = model.decoder(q.embed(codes))
        sq_err += float(((x_hat - x) ** 2).sum())
        c = code_counts(codes, k)
        counts += c
        batch_ppl.append(perplexity(c))
        ent = None
        if has_probs:
            p = q.probabilities(z_e)
            ent = entropy(p)  # (B, h, w)
            ent_sum += float(ent.sum())
            ent_sq += float((ent.double() ** 2).sum())
            ent_map = ent.sum(0) if ent_map is None else ent_map + ent.sum(0)
            if hasattr(q, "uncertainty"):
                unc_sum += float(q.uncertainty(z_e).sum())
            if sampled:
                codes_s = q.sample_codes(z_e, generator=gen)
                sq_err_s += float(((model.decoder(q.embed(codes_s)) - x) ** 2).sum())
                cs = code_counts(codes_s, k)
                counts_s += cs
                batch_ppl_s.append(perplexity(cs))
        if keep_images and sum(t.shape[0] for t in kept["x"]) < keep_images:
            kept["x"].append(x.cpu())
            kept["x_hat"].append(x_hat.cpu())
            if ent is not None:
                kept["entropy"].append(ent.cpu())
    pixels = n * model.config.channels * model.config.image_size ** 2
    positions = n * model.latent_size ** 2
    result: dict[str, Any] = {
        "n_images": n,
        "codebook_size": k,
        "mse": sq_err / pixels,
        "perplexity": perplexity(counts),
        "batch_perplexity": sum(batch_ppl) / len(batch_ppl),
        "used_codes": int((counts > 0).sum()),
        "entropy_mean": ent_sum / positions if has_probs else None,
        "entropy_std": (max(ent_sq / positions - (ent_sum / positions) ** 2, 0.0) ** 0.5
                        if has_probs else None),
        "uncertainty_mean": unc_sum / positions if hasattr(q, "uncertainty") else None,
    }
    if sampled:
        result.update({
            "mse_sampled": sq_err_s / pixels,
            "perplexity_sampled": perplexity(counts_s),
            "batch_perplexity_sampled": sum(batch_ppl_s) / len(batch_ppl_s),
            "used_codes_sampled": int((counts_s > 0).sum()),
        })
    result["code_counts"] = counts.cpu().tolist()
    if keep_images:
        result["_images"] = {key: torch.cat(v)[:keep_images] if v else None
                             for key, v in kept.items()}
        result["_entropy_map"] = (ent_map / n).cpu() if ent_map is not None else None
    return result


def write_eval(run_dir: Path, result: dict[str, Any]) -> Path:
    from .checkpoint import atomic_write_text
    from .plots import save_entropy_maps, save_reconstructions, save_usage

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
