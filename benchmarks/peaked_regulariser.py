"""Cost of dVAE's KL-to-uniform regulariser, sum_k p_k log(K p_k), from flat to peaked softmaxes.

On CPUs, exp takes a scalar slow path for results below float32's smallest normal number; a peaked
softmax (late in training) produces millions of them. Three variants, forward + backward on logits
(64, 512, 8, 8) = N(0, scale^2), measured alternately, median of --repeats:
- autograd: log_softmax, exp, product and sum through autograd (the straightforward formula);
- autograd-floored: the same with log p floored at -87 before the exp;
- edvae: `quantizers.softmax_kl.softmax_kl_uniform` (floored, closed-form gradient).
Results go to benchmarks/results/peaked_regulariser.json (or --out).

    python benchmarks/peaked_regulariser.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from edvae.quantizers.base import probs_from_log
from edvae.quantizers.softmax_kl import softmax_kl_uniform


def autograd_kl(logits: torch.Tensor, floored: bool) -> torch.Tensor:
    log_p = logits.log_softmax(1)
    p = probs_from_log(log_p) if floored else log_p.exp()
    return (p * (log_p + math.log(logits.shape[1]))).sum(1).mean()


VARIANTS = {"autograd": lambda z: autograd_kl(z, False),
            "autograd-floored": lambda z: autograd_kl(z, True),
            "edvae": lambda z: softmax_kl_uniform(z, 1).mean()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "peaked_regulariser.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for scale in (1.0, 10.0, 30.0, 100.0):
        torch.manual_seed(0)
        z = (torch.randn(64, 512, 8, 8) * scale).requires_grad_()
        times = {name: [] for name in VARIANTS}
        for _ in range(a.repeats):
            for name, fn in VARIANTS.items():
                t = time.perf_counter()
                fn(z).backward()
                times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(v) for name, v in times.items()}
        rows.append({"logit_scale": scale, "median_seconds": med,
                     "speedup_over_autograd": {n: med["autograd"] / v for n, v in med.items()}})
    result = {"threads": a.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
