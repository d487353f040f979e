"""Measure what GM-VQ's initialisation reads and sets (issue 18): the encoder's output scale and
spread, sigma_z, the codebook's spread and the posterior's entropy on the first training steps.

It trains a gm-vq model as the trainer does (the same batch order, per-step seeds, schedules, Adam,
fp32 on the CPU, no data parallelism) for --steps steps, and records at the steps named in
--record, from the quantizer's input on that step's batch:
- encoder scale: the RMS of every value of z_e (mean included);
- encoder spread: the standard deviation of z_e across the batch's positions, root-mean over the D
  channels; spread ratio = spread / scale (0 for a constant encoder, 1 for one centred at 0);
- sigma_z, and whether the K-means and sigma_z initialisations have been made;
- codebook spread: the standard deviation of the codewords across codes (root-mean over D);
- the posterior q(c|x) on that batch: mean entropy per position (nats; log K = uniform), the mean
  largest probability, the perplexity exp(H(q(c))) of the aggregated posterior and the number of
  codes whose aggregated probability is at least 0.1 / K;
- the batch perplexity of the training sample's codes (what the trainer logs).
Run it with PYTHONPATH pointing at the package to measure (a frozen snapshot, docs/results.md).

    PYTHONPATH=<snapshot> .venv/bin/python scripts/gm_vq_init_probe.py --label before \
        --config configs/fashion-mnist-cpu.yaml --steps 300 --out docs/results/gm-vq-rerun/probe-before.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from edvae.config import apply_override, from_dict, load_file
from edvae.data import to_model_input
from edvae.metrics import code_counts, perplexity
from edvae.model import DiscreteVAE
from edvae.schedules import Schedules

try:  # the engine package of the trainer's refactor
    from edvae.engine.runtime import BatchOrder, step_seed
    from edvae.run_folder import load_splits
except ImportError:  # a tree from before it (commit 0c8e8dd)
    from edvae.train import BatchOrder, load_splits, step_seed

RECORD = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300)


@torch.no_grad()
def measure(quantizer, z_e: torch.Tensor) -> dict:
    z = z_e.detach().float()
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    scale = flat.pow(2).mean().sqrt().item()
    spread = flat.var(0, unbiased=False).mean().sqrt().item()
    book = quantizer.codebook.detach().float()
    q = quantizer.probabilities(z_e)
    k = q.shape[1]
    entropy = -(q * q.clamp_min(1e-30).log()).sum(1).mean().item()
    aggregate = q.mean((0, 2, 3))
    agg_entropy = -(aggregate * aggregate.clamp_min(1e-30).log()).sum().item()
    return {"encoder_scale": scale, "encoder_spread": spread,
            "spread_ratio": spread / scale if scale else 0.0,
            "sigma_z": quantizer.prior_variance().sqrt().item(),
            "kmeans_done": int(quantizer.kmeans_done), "sigma_z_done": int(quantizer.sigma_z_done),
            "codebook_spread": book.var(0, unbiased=False).mean().sqrt().item(),
            "posterior_entropy": entropy, "uniform_entropy": math.log(k),
            "max_probability": q.max(1).values.mean().item(),
            "aggregate_perplexity": math.exp(agg_entropy),
            "codes_above_0.1_over_K": int((aggregate >= 0.1 / k).sum()),
            "warmup_passes": int(getattr(quantizer, "warmup_passes", 0))}


def run(args) -> list[dict]:
    data = load_file(args.config)
    for assignment in ["model.method=gm-vq", *args.set]:
        apply_override(data, assignment)
    cfg = from_dict(data)
    t = cfg.train
    torch.set_num_threads(1)
    train_set, _ = load_splits(cfg, torch.device("cpu"))
    cfg.model.channels, cfg.model.image_size = train_set.channels, train_set.size
    torch.manual_seed(t.seed)
    model = DiscreteVAE(cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    sched = Schedules(t.steps, t.schedule_steps, t.lr, t.lr_min, t.lr_anneal_steps, t.beta_max,
                      t.beta_ramp_steps, t.temperature_decay, t.temperature_min)
    order = BatchOrder(len(train_set), t.batch_size, t.seed)
    seen: dict = {}
    model.quantizer.register_forward_hook(lambda m, inp, out: seen.update(z_e=inp[0], out=out))
    rows = []
    for step in range(args.steps):
        torch.manual_seed(step_seed(t.seed, step))
        x = to_model_input(train_set.batch(order.indices(step)))
        lr, beta, tau = sched.lr_at(step), sched.beta_at(step), sched.temperature_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        x_hat, out = model(x, temperature=tau, beta=beta)
        mse = torch.nn.functional.mse_loss(x_hat.float(), x)
        loss = model.quantizer.reconstruction_loss(x_hat, x) + out.loss
        if step + 1 in args.record:  # measured after the forward that may have initialised
            row = {"step": step + 1, "mse": mse.item(), "beta": beta,
                   "batch_perplexity": perplexity(code_counts(out.indices, cfg.model.codebook_size)),
                   **measure(model.quantizer, seen["z_e"])}
            rows.append(row)
            print(json.dumps(row), flush=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return rows


def markdown(label: str, rows: list[dict]) -> str:
    head = ("| step | encoder scale | encoder spread | ratio | sigma_z | "
            "K-means / sigma_z done (warm-up passes) | codebook spread | posterior entropy (nats) | "
            "max q | q(c) perplexity | codes >= 0.1/K | "
            "batch ppl | MSE x 1e3 |")
    lines = [f"### {label}", "", head, "|" + "---|" * 13]
    for r in rows:
        done = f"{r['kmeans_done']} / {r['sigma_z_done']} ({r.get('warmup_passes', 0)})"
        lines.append(f"| {r['step']} | {r['encoder_scale']:.3g} | {r['encoder_spread']:.3g} | "
                     f"{r['spread_ratio']:.3g} | {r['sigma_z']:.3g} | {done} | {r['codebook_spread']:.3g} | "
                     f"{r['posterior_entropy'] + 0.0:.3g} | {r['max_probability']:.3f} | "
                     f"{r['aggregate_perplexity']:.1f} | {r['codes_above_0.1_over_K']} | "
                     f"{r['batch_perplexity']:.1f} | {1e3 * r['mse']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/fashion-mnist-cpu.yaml")
    p.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--record", type=int, nargs="*", default=list(RECORD))
    p.add_argument("--label", required=True)
    p.add_argument("--out", required=True, help="JSON file; a .md table is written beside it")
    args = p.parse_args()
    args.record = set(args.record)
    rows = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"label": args.label, "config": args.config, "set": args.set, "steps": args.steps}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(args.label, rows))


if __name__ == "__main__":
    main()
