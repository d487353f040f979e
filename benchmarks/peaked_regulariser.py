"""Cost of dVAE's KL-to-uniform regulariser when the softmax is peaked, as late in training.

On CPUs, exp takes a scalar slow path for results below float32's smallest normal number; a peaked
softmax produces millions of them. The regulariser floors log-probabilities at -87 before the exp
(`quantizers.base.probs_from_log`). This measures forward + backward of sum_k p_k log(K p_k) with
and without the floor, on logits (64, 512, 8, 8) = N(0, scale^2), side by side, median of 7.
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


def kl(logits: torch.Tensor, floored: bool) -> torch.Tensor:
    log_p = logits.log_softmax(1)
    p = probs_from_log(log_p) if floored else log_p.exp()
    return (p * (log_p + math.log(logits.shape[1]))).sum(1).mean()


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
        times = {False: [], True: []}
        for _ in range(a.repeats):
            for floored in (False, True):
                t = time.perf_counter()
                kl(z, floored).backward()
                times[floored].append(time.perf_counter() - t)
        plain, floor = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"logit_scale": scale, "plain_seconds": plain, "floored_seconds": floor,
                     "speedup": plain / floor})
    result = {"threads": a.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
