"""Cost of a training step late in training, with and without subnormal floats flushed to zero.

A trained run's model takes training steps (forward + backward, no optimizer update, reporting
off as on unlogged steps) on a batch of its training images, at the temperature and beta of its
last logged step. The two modes (denormals.py) alternate, one thread, median of --repeats
measurements of --steps steps each. Results go to benchmarks/results/late_step_cost.json (or --out).

    python benchmarks/late_step_cost.py runs/fmnist-cpu-all/dvae-seed0 runs/fmnist-cpu-all/edvae-seed0
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from edvae.config import from_dict
from edvae.data import load_dataset, to_model_input
from edvae.denormals import flush_denormals
from edvae.model import DiscreteVAE


def measure(run: Path, repeats: int, steps: int) -> dict:
    cfg = from_dict(json.loads((run / "config.json").read_text()))
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    model = DiscreteVAE.load(run).train().to(memory_format=torch.channels_last)
    model.quantizer.reporting = False
    data = load_dataset(cfg.train.dataset, "train", cfg.train.data_dir, limit=cfg.train.batch_size)
    x = to_model_input(data.batch(torch.arange(cfg.train.batch_size)))
    x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        x_hat, q = model(x, temperature=last["temperature"], beta=last["beta"])
        (F.mse_loss(x_hat.float(), x) + q.loss).backward()

    times: dict[str, list[float]] = {"subnormals kept": [], "subnormals flushed": []}
    for _ in range(repeats):
        for mode in times:
            with flush_denormals() if mode == "subnormals flushed" else nullcontext():
                step()  # warm-up in this mode
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                times[mode].append((time.perf_counter() - t0) / steps)
    med = {mode: statistics.median(v) for mode, v in times.items()}
    return {"run": str(run), "method": cfg.model.method, "step": last["step"],
            "temperature": last["temperature"], "batch_size": cfg.train.batch_size,
            "seconds_per_step": med, "slowdown_kept_over_flushed":
            med["subnormals kept"] / med["subnormals flushed"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "late_step_cost.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(Path(r), a.repeats, a.steps) for r in a.runs]
    result = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "threads": 1, "rows": rows}
    Path(a.out).write_text(json.dumps(result, indent=2))
    for r in rows:
        s = r["seconds_per_step"]
        print(f"{r['method']:8s} step {r['step']}: kept {s['subnormals kept']:.3f} s, "
              f"flushed {s['subnormals flushed']:.3f} s, ratio {r['slowdown_kept_over_flushed']:.2f}")


if __name__ == "__main__":
    main()
