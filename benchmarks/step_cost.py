"""Training-step cost of EdVAE vs dVAE on a CPU, measured side by side in one process.

Three variants at the same width, batch and codebook: dVAE, EdVAE (this package's KL), and EdVAE
with the authors' formulation of the regulariser (torch.distributions Dirichlet KL on permuted
alpha). Steps alternate between variants so drifts of the machine hit all alike; the median of
the per-step times is reported, and ratios to dVAE. Results go to benchmarks/results/step_cost.json.

    python benchmarks/step_cost.py --width 32 --batch 64 --threads 1 --steps 12
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from edvae.config import ModelConfig
from edvae.model import DiscreteVAE
from edvae.quantizers.evidential import EvidentialQuantizer


class AuthorsEvidential(EvidentialQuantizer):
    """The regulariser as the authors' formulation computes it (for comparison only)."""

    def regulariser(self, logits):
        alpha = (logits.clamp(max=self.clamp_max).exp() + 1).permute(0, 2, 3, 1).contiguous()
        return kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones_like(alpha)))


def make(method: str, width: int, authors: bool = False):
    torch.manual_seed(0)
    model = DiscreteVAE(ModelConfig(method=method, channels=1, width=width))
    if authors:
        q = AuthorsEvidential(512, 16)
        q.codebook = model.quantizer.codebook
        model.quantizer = q
    return model, torch.optim.Adam(model.parameters(), 1e-3)


def step(model, opt, x, beta):
    x_hat, q = model(x, temperature=0.9, beta=beta)
    loss = F.mse_loss(x_hat, x) + q.loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_cost.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.rand(a.batch, 1, 32, 32) - 0.5
    variants = {"dvae": make("dvae", a.width), "edvae": make("edvae", a.width),
                "edvae-authors-kl": make("edvae", a.width, authors=True)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(a.steps + 2):
        for name, (model, opt) in variants.items():
            t = time.perf_counter()
            step(model, opt, x, 5e-5 if name == "dvae" else 5e-7)
            if i >= 2:  # warm-up
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"width": a.width, "batch": a.batch, "threads": a.threads, "steps": a.steps,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "median_step_seconds": med,
              "ratio_to_dvae": {k: v / med["dvae"] for k, v in med.items()}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
