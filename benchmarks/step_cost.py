"""Training-step cost of EdVAE vs dVAE, measured side by side in one process (CPU or CUDA).

Three variants at the same width, batch and codebook: dVAE, EdVAE (this package), and EdVAE with
the authors' formulation (softplus log-weights, then torch.distributions' Dirichlet KL on permuted
alpha). Each is timed in the two kinds of step the trainer runs: a step whose metrics are logged
(every quantity computed) and a step between logs (`quantizer.reporting = False`: no training
indices, no KL value, the same gradient). The trainer logs every `log_every` steps, so a run's
mean step cost is the amortised figure ((log_every - 1) unlogged + 1 logged) / log_every.
Variants alternate step by step so drifts of the machine hit all alike; medians are reported, and
ratios to dVAE. Results go to benchmarks/results/step_cost.json (or --out).

    python benchmarks/step_cost.py --width 32 --batch 64 --threads 1 --steps 12
    python benchmarks/step_cost.py --device cuda --width 128 --batch 128 --precision bf16 --steps 50 \
        --out benchmarks/results/step_cost_cuda.json

On CUDA each timed step is bracketed by torch.cuda.synchronize(), so it is the step's full latency.
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
    """The authors' formulation of the EdVAE step (for comparison only)."""

    def regulariser(self, logits):
        alpha = (logits.clamp(max=self.clamp_max).exp() + 1).permute(0, 2, 3, 1).contiguous()
        return kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones_like(alpha)))

    def log_weights_and_regulariser(self, logits, value=True):
        return self.log_weights(logits), self.regulariser(logits)


def make(method: str, width: int, channels_last: bool, device: torch.device, authors: bool = False):
    torch.manual_seed(0)
    model = DiscreteVAE(ModelConfig(method=method, channels=1, width=width))
    if authors:
        q = AuthorsEvidential(512, 16)
        q.codebook = model.quantizer.codebook
        model.quantizer = q
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.Adam(model.parameters(), 1e-3)


def step(model, opt, x, beta, logged: bool, precision: str):
    model.quantizer.reporting = logged
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        x_hat, q = model(x, temperature=0.9, beta=beta)
    loss = F.mse_loss(x_hat.float(), x) + q.loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--log-every", type=int, default=50, help="the trainer's default")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="the trainer's default memory layout")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_cost.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    x = torch.rand(a.batch, 1, 32, 32, device=device) - 0.5
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    variants = {"dvae": make("dvae", a.width, a.channels_last, device),
                "edvae": make("edvae", a.width, a.channels_last, device),
                "edvae-authors": make("edvae", a.width, a.channels_last, device, authors=True)}
    kinds = ("unlogged", "logged")
    times = {(v, k): [] for v in variants for k in kinds}
    for i in range(a.steps + 2):
        for kind in kinds:
            for name, (model, opt) in variants.items():
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                step(model, opt, x, 5e-5 if name == "dvae" else 5e-7, kind == "logged", a.precision)
                if cuda:
                    torch.cuda.synchronize()
                if i >= 2:  # warm-up
                    times[name, kind].append(time.perf_counter() - t)
    med = {f"{v}/{k}": statistics.median(times[v, k]) for v, k in times}
    for v in variants:
        med[f"{v}/amortised"] = ((a.log_every - 1) * med[f"{v}/unlogged"] + med[f"{v}/logged"]) / a.log_every
    machine = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    ratio = {key: value / med[f"dvae/{key.split('/')[1]}"] for key, value in med.items()}
    result = {"width": a.width, "batch": a.batch, "threads": a.threads, "steps": a.steps,
              "log_every": a.log_every, "precision": a.precision, "channels_last": a.channels_last,
              "torch": torch.__version__, "device": a.device,
              "machine": machine,
              "median_step_seconds": med, "ratio_to_dvae": ratio}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
