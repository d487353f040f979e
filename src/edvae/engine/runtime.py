"""Where and how a loop runs: device, precision, per-step seeding, batch order, and the session
(CPU threads, subnormal floats, the data-parallel group) a training run holds while it runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from ..denormals import flush_denormals
from ..errors import EdvaeError
from . import ddp


def pick_device(name: str) -> torch.device:
    """auto: CUDA, then MPS, then the CPU; a device asked for by name must exist."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdvaeError("device cuda was asked for, but torch sees no CUDA device")
    if name == "mps" and not mps:
        raise EdvaeError("device mps was asked for, but it is not available")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA devices that support it (precision auto or bf16); else fp32."""
    if precision == "fp32":
        return nullcontext()
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# torch's CPU capabilities without native bf16 (x86 below AVX-512; DEFAULT: no vector extension
# torch dispatches to, on any architecture): bf16 arithmetic there is emulated
SLOW_BF16_CAPABILITIES = ("DEFAULT", "NO AVX", "AVX", "AVX2")


def slow_bf16_warning(device: torch.device, precision: str) -> str | None:
    """A one-line warning when bf16 autocast is asked for on a CPU that emulates it, else None.
    There a width-64 step took 12x as long as in fp32 (benchmarks/results/cpu_precision_avx2.json),
    where a CPU with native bf16 about halves it (docs/results.md, protocol B)."""
    if precision != "bf16" or device.type != "cpu":
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in SLOW_BF16_CAPABILITIES:
        return None
    return (f"warning: bf16 autocast on this CPU (torch capability {capability}) is "
            "emulated: about 12x the fp32 step time (benchmarks/results/cpu_precision_avx2.json); "
            "train.precision=fp32 or auto avoids it")


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The RNG seed of one step (and data-parallel rank: each draws its own noise)."""
    return (seed * 1_000_003 + step * 7_919 + 12_345 + rank * 1_000_000_007) % (2**63 - 1)


class BatchOrder:
    """Batch `step` of a run: a slice of the permutation of epoch step // steps_per_epoch. Only
    full batches: the last partial batch of an epoch is dropped."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str = "cpu"):
        if n < batch_size:
            raise EdvaeError(f"the training set has {n} images, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self.device = torch.device(device)
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        """On `device`: the permutation (drawn on the CPU, the same on every device) is copied there
        once per epoch, not a batch of indices per step."""
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).to(self.device)
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]


@contextmanager
def session(device_name: str, threads: int = 0, flush: bool = True,
            batch_size: int = 1) -> Iterator[tuple[ddp.Group, torch.device]]:
    """The device, the CPU threads, subnormal floats flushed on the CPU (denormals.py; set before
    torch starts its thread pool), and the torchrun group (left together on exit)."""
    device = pick_device(device_name)
    with flush_denormals(flush and device.type == "cpu"):
        if threads:
            torch.set_num_threads(threads)
        group, device = ddp.start(device, batch_size)
        try:
            yield group, device
        finally:
            ddp.stop(group)
