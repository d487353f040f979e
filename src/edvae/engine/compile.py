"""torch.compile of the training step (train.compile), and its CUDA-graph form (train.cuda_graph).

What is compiled: each phase's step function, i.e. the forward pass and the loss, the part `fit` runs
inside autocast, with TorchDynamo and inductor (Ansel et al., "PyTorch 2: faster machine learning
through dynamic Python bytecode transformation and graph compilation", ASPLOS 2024). Its backward
pass runs through the compiled graphs' own (AOTAutograd) backward; the optimizer step, the
schedules, logging and checkpoints stay as they are. Everything outside a step function (evaluation
during training, K-means initialisation, the final evaluation) runs eagerly: the step functions are
compiled for the time of one `fit` and handed back unchanged.

Where TorchDynamo hands back to Python (graph breaks; the code still runs, between graphs):
- the batch order (engine/runtime.py: a torch.Generator per epoch);
- the code counts of logged steps (a bincount of data-dependent size).
(EdVAE's KL skips its host-side clamp check under compile, so it traces whole.)
The schedules' values (temperature, beta, ...) are handed to the step functions as 0-d float32
tensors on the run's device, refilled in place each step: a Python float would be specialised on
(one recompile per new value until TorchDynamo makes it a symbol) and, on CUDA, would become a
CPU scalar input of the graphs, which inductor's CUDA graphs may refuse to capture. Recompiles
left: the second step's (the step number becomes a symbol: only the frames before the batch order's
graph break see it), and a logged step's own variant (`quantizer.reporting`), once each.

Random numbers: inductor's own random kernels draw other numbers than eager code from the same
seed. `fallback_random` keeps torch's generators, so a compiled step draws the same noise as an
eager one and every draw stays a function of (seed, step): a compiled run resumes exactly wherever
an eager one does (tests/test_compile.py).

Compile time: TorchDynamo's compile callbacks (start and end of every compile, including the lazy
backward compiles and CUDA-graph recordings) are timed and summed. The sum is printed once, at the
first logged step, subtracted from every logged row's `seconds` and logged as `compile_seconds`.

train.cuda_graph (CUDA only) compiles the same step functions with CUDA graphs (inductor's
`triton.cudagraphs`, torch.compile's "reduce-overhead" mode): each graph's forward and backward are
recorded once and replayed. THIS PATH HAS NEVER RUN ON A GPU: no GPU was available when it was
written; docs/performance.md lists what a GPU session has to measure and check.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ..errors import EdvaeError

if TYPE_CHECKING:
    from .loop import Fit, StepFunction, StepOutput

BACKEND = "inductor"  # tests swap in "aot_eager" (the same graphs, no code generation)


class CompileClock:
    """Wall-clock seconds spent compiling while it is installed (TorchDynamo's compile callbacks)."""

    def __init__(self) -> None:
        self.seconds, self.compiles, self._began = 0.0, 0, None
        self.reported, self.available = False, True

    def _start(self, _args: Any) -> None:
        self._began = time.perf_counter()

    def _end(self, _args: Any) -> None:
        if self._began is not None:
            self.seconds += time.perf_counter() - self._began
            self.compiles += 1
            self._began = None

    @contextmanager
    def installed(self) -> Iterator[CompileClock]:
        handler = getattr(torch._dynamo, "callback_handler", None)  # absent from older torch releases
        self.available = handler is not None
        if handler is None:
            yield self
            return
        handler.register_start_callback(self._start)
        handler.register_end_callback(self._end)
        try:
            yield self
        finally:
            for callbacks, fn in ((handler.start_callbacks, self._start), (handler.end_callbacks, self._end)):
                if fn in callbacks:  # torch._dynamo.reset() clears them
                    callbacks.remove(fn)


class DeviceValues:
    """The schedules' values as 0-d float32 tensors on the device, one buffer per name, refilled
    in place each step (no host read; the same addresses every step)."""

    def __init__(self, device: torch.device):
        self.device, self.buffers = device, {}

    def __call__(self, values: dict[str, float]) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            buf = self.buffers.get(key)
            if buf is None:
                buf = self.buffers[key] = torch.zeros((), dtype=torch.float32, device=self.device)
            out[key] = buf.fill_(value)
        return out


def compile_step(step: StepFunction, cuda_graph: bool, device: torch.device) -> StepFunction:
    """`step` compiled (see the module docstring), its schedules' values handed to it as tensors;
    with `cuda_graph`, replayed as CUDA graphs."""
    options = {"fallback_random": True}
    if cuda_graph:
        options["triton.cudagraphs"] = True
    kwargs = {"options": options} if BACKEND == "inductor" else {}
    compiled = torch.compile(step, backend=BACKEND, **kwargs)
    as_tensors = DeviceValues(device)

    def run(i: int, values: dict[str, float], report: bool) -> StepOutput:
        if cuda_graph:
            torch.compiler.cudagraph_mark_step_begin()  # one training iteration per call
        return compiled(i, as_tensors(values), report)

    return run


@contextmanager
def compiled_steps(f: Fit) -> Iterator[CompileClock | None]:
    """For the time of one `fit`: the phases' step functions compiled (f.compile), logged rows given
    `compile_seconds`, the total printed once; everything as it was afterwards. Off: nothing."""
    if f.cuda_graph and not f.compile:
        raise EdvaeError("train.cuda_graph needs train.compile: true (the captured step is a compiled one)")
    if f.cuda_graph and f.device.type != "cuda":
        raise EdvaeError(f"train.cuda_graph needs a CUDA device; this run is on {f.device.type}")
    if not f.compile:
        yield None
        return
    originals = [p.step for p in f.phases]
    on_log = f.on_log
    clock = CompileClock()

    def log_compile_time(row: dict[str, Any], sums: dict[str, torch.Tensor]) -> None:
        row["seconds"] = round(row["seconds"] - clock.seconds, 2)
        row["compile_seconds"] = round(clock.seconds, 2)
        if not clock.reported:
            clock.reported = True
            print(f"edvae: torch.compile: {clock.seconds:.1f} s compiling ({clock.compiles} compiles) by "
                  f"step {row['step']}, not counted in the logged seconds" if clock.available else
                  f"edvae: torch.compile: torch {torch.__version__} has no compile callbacks to time the "
                  "compiling with; the logged seconds include it", file=sys.stderr)
        if on_log is not None:
            on_log(row, sums)

    try:
        with clock.installed():
            for p in f.phases:
                p.step = compile_step(p.step, f.cuda_graph, f.device)
            f.on_log = log_compile_time
            yield clock
    finally:
        for p, step in zip(f.phases, originals, strict=True):
            p.step = step
        f.on_log = on_log
