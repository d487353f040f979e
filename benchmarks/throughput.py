"""Training images per second and peak step memory of edvae's training step, per method and mode,
beside a reference that follows the EdVAE authors' code path (benchmarks/authors_step.py), all
measured side by side in one process; and the tokenizer's encode images per second.

    python benchmarks/throughput.py                       # CIFAR10 paper config, edvae and dvae
    python benchmarks/throughput.py --methods all --batch-size 32 --steps 3 --out benchmarks/results/x
    python benchmarks/throughput.py --device cuda --precision bf16 --steps 50 \
        --modes eager compiled captured reference --out benchmarks/results/throughput_cuda

Modes: `eager` (train.compile off), `compiled` (train.compile), `captured` (train.compile and
train.cuda_graph, CUDA only), `reference` (the authors' path; edvae and dvae only, always float32,
NCHW). edvae's modes run the trainer's own step: configs/cifar10-METHOD.yaml with the batch size,
width, device and precision given here, VAESteps and the engine's loop (engine/loop.py), on random
CIFAR10-shaped images (uint8, held in memory as the trainer holds a data set). Their steps are
steps between logs (the timed steps come before the config's first logged step); the reference
computes its perplexity and KL every step, as the authors' code does.

Each method's modes alternate step by step, so drifts of a shared machine hit all alike. The first
`--warmup` steps of each mode (torch.compile's compiling included) are not timed; the median of the
next `--steps` is. Peak step memory: the bytes allocated during one further step beyond what was
held before it (the torch profiler's allocation events on the CPU, torch.cuda's peak on CUDA).
Results: OUT.json and OUT.md, with the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors_step import METHODS as REFERENCE_METHODS  # noqa: E402
from authors_step import AuthorsStep  # noqa: E402

from edvae.config import from_dict, load_file  # noqa: E402
from edvae.data import InMemoryImages  # noqa: E402
from edvae.denormals import flush_denormals  # noqa: E402
from edvae.engine import loop  # noqa: E402
from edvae.engine.compile import compiled_steps  # noqa: E402
from edvae.engine.ddp import Group  # noqa: E402
from edvae.model import DiscreteVAE  # noqa: E402
from edvae.quantizers import QUANTIZERS  # noqa: E402
from edvae.train import FIELDS, VAESteps  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MODES = ("eager", "compiled", "captured", "reference")


@dataclass
class Run:
    method: str
    mode: str
    step: object  # step(i): one training step
    model: torch.nn.Module
    warmup: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    clock: object = None  # the CompileClock of a compiled mode
    peak_bytes: int | None = None


def run_config(method: str, mode: str, a: argparse.Namespace):
    data = load_file(CONFIGS / f"cifar10-{method}.yaml")
    data["model"].update(width=a.width, channels=3, image_size=32)
    data["train"].update(dataset="synthetic", batch_size=a.batch_size, precision=a.precision, device=a.device,
                         threads=a.threads, eval_every=0, checkpoint_every=0, compile=mode != "eager",
                         cuda_graph=mode == "captured")
    return from_dict(data)


def edvae_run(method: str, mode: str, a: argparse.Namespace, images: InMemoryImages, device: torch.device,
              stack: ExitStack) -> Run:
    """The trainer's step (train.py's VAESteps on the engine's loop), one call per step."""
    cfg = run_config(method, mode, a)
    t = cfg.train
    torch.manual_seed(t.seed)
    model = DiscreteVAE(cfg.model).to(device)
    steps = VAESteps(cfg, model, images, images, Group(), device)
    model.to(memory_format=steps.layout)
    f = loop.Fit(model, torch.optim.Adam(model.parameters(), lr=t.lr), steps.phases(), steps.schedule, t.seed,
                 device, t.precision, t.log_every, 0, None, FIELDS, cfg.to_dict(), on_log=steps.on_log,
                 compile=t.compile, cuda_graph=t.cuda_graph)
    steps.wrap(0)
    clock = stack.enter_context(compiled_steps(f))
    began = time.perf_counter()
    return Run(method, mode, lambda i: loop._one_step(f, i, began, None), model, clock=clock)


def reference_run(method: str, a: argparse.Namespace, images: InMemoryImages, device: torch.device) -> Run:
    cfg = run_config(method, "eager", a)
    step = AuthorsStep(cfg.model, images.images.permute(0, 2, 3, 1).contiguous().numpy(), a.batch_size,
                       device, cfg.train.beta_max, cfg.train.lr, cfg.train.seed)
    return Run(method, "reference", step, step.model)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_step_bytes(run: Run, i: int, device: torch.device) -> int:
    """Bytes allocated during step i beyond what was allocated before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run.step(i)
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run.step(i)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


def step_flops(run: Run, i: int) -> float:
    """The floating-point operations of step i (forward and backward), counted by torch's FLOP counter
    (convolutions and matrix products; an eager step: the counter does not see into compiled code)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run.step(i)
    return float(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """The device's measured FLOP/s of an n x n matrix product in `dtype` (median of 5)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times = []
    for k in range(7):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if k >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def cuda_profile(run: Run, first: int, steps: int, device: torch.device) -> dict:
    """Kernels per step and the GPU-busy fraction of `steps` steps, as the torch profiler sees them
    (kernels, copies and fills; benchmarks/cuda_step_profile.py's measure). CUDA only."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    began = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(first, first + steps):
            run.step(i)
        sync(device)
    wall = time.perf_counter() - began
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e6
    return {"kernels_per_step": len(kernels) / steps, "gpu_busy_seconds_per_step": busy / steps,
            "gpu_busy_fraction": busy / wall}


def encode_rate(model: DiscreteVAE, images: InMemoryImages, a: argparse.Namespace,
                device: torch.device) -> float:
    """Images per second of model.encode (the tokenizer: uint8 images in, codes out), batch a.batch_size."""
    model.eval()
    batch = images.images[:a.batch_size].to(device)
    model.encode(batch)
    times = []
    for _ in range(a.encode_batches):
        sync(device)
        t0 = time.perf_counter()
        model.encode(batch)
        sync(device)
        times.append(time.perf_counter() - t0)
    model.train()
    return a.batch_size / statistics.median(times)


def measure_method(method: str, a: argparse.Namespace, images: InMemoryImages,
                   device: torch.device) -> list[dict]:
    modes = [m for m in a.modes if m != "reference" or method in REFERENCE_METHODS]
    with ExitStack() as stack:
        runs = [reference_run(method, a, images, device) if m == "reference"
                else edvae_run(method, m, a, images, device, stack) for m in modes]
        for i in range(a.warmup + a.steps):
            for run in runs:
                sync(device)
                t0 = time.perf_counter()
                run.step(i)
                sync(device)
                (run.warmup if i < a.warmup else run.times).append(time.perf_counter() - t0)
            took = ", ".join(f"{r.mode} {(r.warmup + r.times)[-1]:.2f} s" for r in runs)
            print(f"{method} step {i}: {took}", file=sys.stderr)
        after = a.warmup + a.steps
        for run in runs:
            run.peak_bytes = peak_step_bytes(run, after, device)
        cuda = device.type == "cuda"
        profiles = {r.mode: cuda_profile(r, after + 1, 5, device) for r in runs} if cuda else {}
        counted = [r for r in runs if r.mode == "eager"] or [r for r in runs if r.mode == "reference"]
        flops = step_flops(counted[0], after + 6) if counted else None
        eager = next((r for r in runs if r.mode == "eager"), None)
        encode = None if eager is None else encode_rate(eager.model, images, a, device)
    rows = []
    for run in runs:
        median = statistics.median(run.times)
        rows.append({"method": method, "mode": run.mode, "step_seconds": median,
                     "images_per_second": a.batch_size / median, "step_times": run.times,
                     "warmup_times": run.warmup, "peak_step_mb": run.peak_bytes / 2**20,
                     "compile_seconds": None if run.clock is None else run.clock.seconds,
                     "encode_images_per_second": encode if run.mode == "eager" else None,
                     "flops_per_step": flops,
                     **profiles.get(run.mode, {})})
    by_mode = {r["mode"]: r for r in rows}
    for r in rows:
        for base in ("eager", "reference"):
            if base in by_mode:
                r[f"vs_{base}"] = r["images_per_second"] / by_mode[base]["images_per_second"]
    return rows


def markdown(result: dict) -> str:
    a, m = result["args"], result["machine"]
    lines = [f"# Training throughput: width {a['width']}, batch {a['batch_size']}, {a['precision']}, "
             f"{a['device']}", "",
             f"`{result['command']}`", "",
             f"torch {m['torch']}, {m['cpu']}, {m['threads']} thread(s); load average (1, 5, 15 min) "
             f"{m['load_before']} before, {m['load_after']} after, on {m['cores']} cores. Median of "
             f"{a['steps']} steps after {a['warmup']} warm-up step(s) per mode, modes alternating. "
             f"Matrix-product rate ({m['matmul_flops_per_second']['dtype']}, the best of "
             f"{len(m['matmul_flops_per_second']['all'])} measurements): "
             f"{m['matmul_flops_per_second']['value'] / 1e9:.1f} GFLOP/s.", ""]
    cuda = any("kernels_per_step" in r for r in result["rows"])
    head = ["method", "mode", "s/step", "images/s", "vs reference", "vs eager", "of matmul rate",
            "peak step MB", "compile s", "encode images/s"]
    head += ["kernels/step", "GPU busy"] if cuda else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['mode']} | {r['step_seconds']:.3f} | "
                     f"{r['images_per_second']:.1f} | "
                     f"{fmt(r.get('vs_reference'), '.2f')} | {fmt(r.get('vs_eager'), '.2f')} | "
                     f"{fmt(r['matmul_fraction'], '.1%')} | "
                     f"{r['peak_step_mb']:.0f} | {fmt(r['compile_seconds'], '.0f')} | "
                     f"{fmt(r['encode_images_per_second'], '.0f')} |"
                     + (f" {r['kernels_per_step']:.0f} | {r['gpu_busy_fraction']:.0%} |" if cuda else ""))
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["edvae", "dvae"], help="method names, or all")
    p.add_argument("--modes", nargs="+", default=["eager", "compiled", "reference"], choices=MODES)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps per mode first: a compiled step compiles at step 0, and its first "
                        "small frames again at step 1 (the step number becomes a symbol)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    p.add_argument("--encode-batches", dest="encode_batches", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/throughput", help="writes OUT.json and OUT.md")
    a = p.parse_args(argv)
    a.methods = sorted(QUANTIZERS) if a.methods == ["all"] else a.methods
    unknown = [m for m in a.methods if m not in QUANTIZERS]
    if unknown or "captured" in a.modes and a.device != "cuda":
        p.error(f"unknown methods {unknown}" if unknown else "mode captured needs --device cuda")
    return a


def machine(a: argparse.Namespace) -> dict:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    if a.device == "cuda":
        cpu += f"; GPU {torch.cuda.get_device_name()}"
    return {"torch": torch.__version__, "cpu": cpu, "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "load_before": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    given = sys.argv[1:] if argv is None else argv
    result = {"command": "python benchmarks/throughput.py " + " ".join(given),
              "args": vars(a), "machine": machine(a), "rows": []}
    g = torch.Generator().manual_seed(0)
    n = a.batch_size * max(8, a.warmup + a.steps + 2)
    images = InMemoryImages(name="random CIFAR10-shaped", channels=3, size=32,
                            images=torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8))
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    rates = []  # measured before each method and at the end; the highest (least disturbed) is used
    with flush_denormals(device.type == "cpu"):  # as the trainer's session does
        for method in [*a.methods, None]:
            rates.append(matmul_rate(device, dtype, 4096 if device.type == "cuda" else 1024))
            if method is not None:
                result["rows"] += measure_method(method, a, images.to(device), device)
    result["machine"]["matmul_flops_per_second"] = {"dtype": str(dtype), "value": max(rates), "all": rates}
    for r in result["rows"]:
        r["matmul_fraction"] = r["flops_per_step"] and r["flops_per_step"] / r["step_seconds"] / max(rates)
    result["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
