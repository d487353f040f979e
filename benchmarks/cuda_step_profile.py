"""Where a CUDA training step's time goes: host time per step against the GPU's busy time, and how
many kernels a step launches. A step whose host time far exceeds its kernel time is bound by
launching (Python and dispatch), not by the GPU; more width or batch then costs little.

    python benchmarks/cuda_step_profile.py --method edvae --width 64 --batch 32 \\
        --out benchmarks/results/cuda_step_profile.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from edvae.config import ModelConfig
from edvae.model import DiscreteVAE


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="edvae")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cuda_step_profile.json"))
    a = p.parse_args()
    torch.manual_seed(0)
    model = DiscreteVAE(ModelConfig(method=a.method, channels=1, width=a.width)).cuda()
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = (torch.rand(a.batch, 1, 32, 32, device="cuda") - 0.5).contiguous(memory_format=torch.channels_last)

    def step():
        model.quantizer.reporting = False  # a step between logs
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x_hat, q = model(x, temperature=0.9, beta=5e-7)
        loss = model.quantizer.reconstruction_loss(x_hat, x) + q.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(a.steps):
        step()
    queued = time.perf_counter() - began  # the host's time to issue the steps
    torch.cuda.synchronize()
    wall = time.perf_counter() - began
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(a.steps):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e6  # kernels, copies and fills
    result = {"method": a.method, "width": a.width, "batch": a.batch, "steps": a.steps,
              "torch": torch.__version__, "machine": torch.cuda.get_device_name(),
              "wall_seconds_per_step": wall / a.steps, "host_seconds_per_step": queued / a.steps,
              "kernel_seconds_per_step": busy / a.steps, "kernels_per_step": len(kernels) / a.steps,
              "gpu_busy_fraction": busy / wall}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
