"""The figures of the collapse study (collapse_study.py): perplexity and MSE over the two sweeps,
and the latent space of the three arms at the largest codebook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .metrics import perplexity
from .plots import _pyplot, save_figure

ARM_LABELS = {"random": "random init (uniform +-1/K)", "kmeans": "K-means on untrained encoder",
              "pretrain": "pretrain, then K-means"}


def plot_sweeps(cfg, summary: dict[str, list[dict[str, Any]]], out: Path) -> None:
    plt = _pyplot()
    width_label = f"encoder/decoder width ({cfg.width_sweep_codebook} codes)"
    for sweep, key, xlabel, name in (
            ("codebook", "codebook_size", f"codebook size K (width {cfg.width})", "codebook-sweep.png"),
            ("width", "width", width_label, "width-sweep.png")):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for arm in cfg.arms:
            es = [e for e in summary[sweep] if e["arm"] == arm]
            x = [e[key] for e in es]
            for ax, metric in zip(axes, ("perplexity", "mse"), strict=True):
                ax.errorbar(x, [e[metric] for e in es], yerr=[e[metric + "_std"] for e in es],
                            marker="o", capsize=3, label=ARM_LABELS[arm])
        if sweep == "codebook":
            ks = list(cfg.codebook_sizes)
            axes[0].plot(ks, ks, ":", color="grey", label="K (every code equally used)")
        else:
            axes[0].axhline(cfg.width_sweep_codebook, ls=":", color="grey", label="K")
        axes[0].set_ylabel("test perplexity")
        axes[1].set_ylabel("test MSE")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{cfg.components}-component Gaussian mixture, VQ-EMA, {len(cfg.seeds)} seed(s)")
        save_figure(fig, out / name)


def plot_latents(cfg, means: torch.Tensor, test: torch.Tensor, labels: torch.Tensor,
                 latents: dict[str, dict[str, torch.Tensor]], picture: tuple[int, int, int],
                 path: Path) -> None:
    """Data; then per arm the encoder outputs (coloured by component) and the codewords."""
    plt = _pyplot()
    k, w, s = picture
    n = min(4000, test.shape[0])
    panels = 1 + len(latents)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4.2))  # the data and at least one arm
    colours = labels[:n].numpy()
    axes[0].scatter(test[:n, 0].numpy(), test[:n, 1].numpy(), c=colours, cmap="tab20", s=2)
    axes[0].set_title(f"data: {cfg.components} Gaussians" + (" (first 2 dims)" if cfg.data_dim > 2 else ""))
    for ax, arm in zip(axes[1:], [a for a in cfg.arms if a in latents], strict=True):
        lat = latents[arm]
        z, c, used = lat["_latents"][:n], lat["_codebook"], lat["_counts"] > 0
        ax.scatter(z[:, 0].numpy(), z[:, 1].numpy(), c=colours, cmap="tab20", s=2, alpha=0.5)
        ax.scatter(c[~used, 0].numpy(), c[~used, 1].numpy(), marker="x", s=8, color="0.6", lw=0.6,
                   label=f"unused codewords ({int((~used).sum())})")
        ax.scatter(c[used, 0].numpy(), c[used, 1].numpy(), marker=".", s=10, color="black",
                   label=f"used codewords ({int(used.sum())})")
        ppl = perplexity(lat["_counts"])
        ax.set_title(f"{ARM_LABELS[arm]}\nperplexity {ppl:.1f} of K = {k}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        # frame the encoder outputs; far-off unused codewords would squash them into a corner
        lo, hi = z.min(0).values, z.max(0).values
        pad = 0.1 * (hi - lo).clamp_min(1e-3)
        ax.set_xlim(float(lo[0] - pad[0]), float(hi[0] + pad[0]))
        ax.set_ylim(float(lo[1] - pad[1]), float(hi[1] + pad[1]))
    for ax in axes:
        ax.set_aspect("equal", adjustable="box")
        ax.tick_params(labelsize=7)
    fig.suptitle(f"latent space (width {w}, seed {s}): encoder outputs coloured by component, codewords")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path, tight=False)
