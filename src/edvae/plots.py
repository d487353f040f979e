"""PNG figures: image grids with PIL, charts with matplotlib (Agg, no screen needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> Image.Image:
    """(N, C, H, W) float in [-0.5, 0.5] -> one PIL image, `nrow` images per row."""
    x = ((images.detach().float().cpu() + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    canvas = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top:top + h, left:left + w] = x[i]
    arr = canvas.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")


def save_png(path: Path, image: torch.Tensor) -> None:
    """One float image (C, H, W) in [-0.5, 0.5] -> a lossless PNG (mode L or RGB)."""
    image_grid(image[None], nrow=1, pad=0).save(path)


def save_reconstructions(path: Path, x: torch.Tensor, x_hat: torch.Tensor, n: int = 32) -> None:
    """Rows of 8: originals, then their reconstructions, alternating."""
    x, x_hat = x[:n], x_hat[:n]
    rows = [half for i in range(0, x.shape[0], 8) for half in (x[i:i + 8], x_hat[i:i + 8])]
    grid = image_grid(torch.cat(rows), nrow=8)
    grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST).save(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, tight: bool = True) -> None:
    """Lay the figure out (unless `tight` is False), write it as a 100-dpi PNG and free it."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def save_usage(path: Path, counts: list[int], perplexity: float) -> None:
    plt = _pyplot()
    c = np.sort(np.asarray(counts))[::-1]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(np.arange(len(c)), c, width=1.0, color="tab:blue")
    ax.set_yscale("symlog")
    ax.set_xlabel("code (sorted by use)")
    ax.set_ylabel("count")
    ax.set_title(f"code usage: {int((c > 0).sum())} of {len(c)} used, perplexity {perplexity:.1f}")
    save_figure(fig, path)


def save_entropy_maps(path: Path, mean_map: torch.Tensor, examples: torch.Tensor, n: int = 7) -> None:
    """Mean entropy of pi per latent position, then a few single images' maps, one colour scale."""
    plt = _pyplot()
    maps = [mean_map] + [examples[i] for i in range(min(n, examples.shape[0]))]
    vmax = max(float(m.max()) for m in maps)
    fig, axes = plt.subplots(1, len(maps), figsize=(2 * len(maps), 2.3))
    for i, (ax, m) in enumerate(zip(np.atleast_1d(axes), maps, strict=True)):
        im = ax.imshow(m.numpy(), vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title("mean" if i == 0 else f"image {i - 1}", fontsize=8)
        ax.axis("off")
    fig.colorbar(im, ax=list(np.atleast_1d(axes)), shrink=0.8, label="entropy (nats)")
    save_figure(fig, path, tight=False)
