"""bf16 autocast against fp32 on this CPU: one training step of dVAE and EdVAE, side by side.

Whether bf16 autocast pays on a CPU depends on its vector units: with native bf16 (AVX-512 BF16 or
AMX) it about halves the step (docs/results.md, protocol B); on a CPU with AVX2 and no AVX-512 it
is many times slower than fp32. The four variants (method x precision) alternate step by step, so
drifts of the machine hit all alike; medians after one warm-up step are reported, with the ratio
bf16 / fp32 per method, torch's CPU capability and the CPU's bf16-related flags. Results go to
benchmarks/results/cpu_precision_<capability>.json (or --out).

    python benchmarks/cpu_precision.py --width 64 --batch 32 --threads 1 --steps 5
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

from edvae.config import ModelConfig
from edvae.model import DiscreteVAE

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str]:
    """Those of FLAGS that /proc/cpuinfo lists (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return [f for f in FLAGS if f in present]


def timed_step(model, opt, x, beta: float, bf16: bool) -> float:
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        x_hat, q = model(x, temperature=0.9, beta=beta)
    loss = F.mse_loss(x_hat.float(), x) + q.loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    capability = torch.backends.cpu.get_cpu_capability()
    x = (torch.rand(a.batch, 1, 32, 32) - 0.5).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {}
    models = {}
    for method in ("dvae", "edvae"):
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = DiscreteVAE(ModelConfig(method=method, channels=1, width=a.width))
            model = model.to(memory_format=torch.channels_last)
            models[f"{method}/{precision}"] = (model, torch.optim.Adam(model.parameters(), 1e-3))
    for i in range(a.steps + 1):
        for name, (model, opt) in models.items():
            method, precision = name.split("/")
            seconds = timed_step(model, opt, x, 5e-5 if method == "dvae" else 5e-7, precision == "bf16")
            if i:  # the first step warms up
                times.setdefault(name, []).append(seconds)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    result = {"width": a.width, "batch": a.batch, "threads": a.threads, "steps": a.steps,
              "torch": torch.__version__, "cpu_capability": capability, "cpu_flags": cpu_flags(),
              "machine": platform.processor() or platform.machine(),
              "median_step_seconds": med,
              "bf16_over_fp32": {m: med[f"{m}/bf16"] / med[f"{m}/fp32"] for m in ("dvae", "edvae")}}
    out = Path(a.out or Path(__file__).parent / "results" / f"cpu_precision_{capability.lower()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
