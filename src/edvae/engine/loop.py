"""`fit`: the one training loop under every trainer of edvae.

A trainer hands it a model and optimizer and one or more phases, each a step function over a range
of global steps. `fit` owns what every loop needs:
- per-step seeding: the global RNG is reseeded by (seed, step, rank) before each step, and the
  step function takes its batch from a BatchOrder (a function of (seed, step)), so a checkpoint
  needs only the parameters, the optimizer's moments and the step;
- the schedules: `schedule(step)` gives the step's values ("lr" sets the optimizer; every value is
  passed to the step function and logged);
- autocast (runtime.autocast_for), backward and the optimizer step;
- every `log_every` steps and at the end: the step's metrics averaged over ranks, a divergence
  check on the loss, one row in metrics.jsonl/csv, the progress bar; a loss that is not finite
  ends the fit with `Diverged`, after writing diverged.json (the step and the message) in the run
  folder, so that a study counts the run as finished and reports it as diverged;
- atomic checkpoints every `checkpoint_every` steps, exact resume from the last one, and the final
  save (training state and model file);
- with `compile`, the step functions torch.compiled for the time of the fit (engine/compile.py).

A step function is `step(step, values, report) -> StepOutput`: the forward pass and the loss, run
inside autocast; `report` says whether its metrics will be read (on other steps it may skip work
that only feeds them). A phase's `on_end(done)` runs after its last optimizer step and before that
step's checkpoint (the pretrain-then-quantize switch sets the codebook there).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import checkpoint
from ..distributed import all_reduce_sum_
from ..errors import Diverged, EdvaeError
from .compile import compiled_steps
from .ddp import Group
from .metrics_log import MetricsLog
from .runtime import autocast_for, step_seed


@dataclass
class StepOutput:
    loss: torch.Tensor  # what backward runs on
    # scalar tensors to log, averaged over ranks; read on report steps only
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # tensors summed over ranks on report steps (e.g. code counts), handed to Fit.on_log
    sums: dict[str, torch.Tensor] = field(default_factory=dict)


StepFunction = Callable[[int, dict[str, float], bool], StepOutput]


@dataclass
class Phase:
    end: int  # the phase runs the global steps before `end` (and after the previous phase's end)
    step: StepFunction
    on_end: Callable[[int], None] | None = None


@dataclass
class Fit:
    model: nn.Module  # what checkpoints and the final model file hold
    optimizer: torch.optim.Optimizer
    phases: list[Phase]
    schedule: Callable[[int], dict[str, float]]  # must give "lr"
    seed: int
    device: torch.device
    precision: str = "fp32"
    log_every: int = 50
    checkpoint_every: int = 0  # 0: only the final save
    out: Path | None = None  # the run folder; None: nothing is written
    fields: tuple[str, ...] = ("step", "loss", "lr", "seconds")  # metrics.csv's columns
    config: dict[str, Any] = field(default_factory=dict)  # stored in every checkpoint
    model_file: str | None = checkpoint.MODEL_FILE  # None: no model file at the end
    group: Group = field(default_factory=Group)
    progress: str | None = None  # the progress bar's label; None: no bar
    name: str = "training"  # in the divergence message
    # adds derived values to a logged row, from the summed tensors (rank 0 only)
    on_log: Callable[[dict[str, Any], dict[str, torch.Tensor]], None] | None = None
    # torch.compile the phases' step functions for this fit; cuda_graph: replay them as CUDA graphs
    # (engine/compile.py; off: the loop is unchanged)
    compile: bool = False
    cuda_graph: bool = False

    @property
    def steps(self) -> int:
        return self.phases[-1].end

    @property
    def writes(self) -> bool:
        return self.out is not None and self.group.main

    def resume(self) -> int:
        """Load the last checkpoint into model and optimizer; the number of steps it holds."""
        if self.out is None:
            raise EdvaeError("a run without a folder cannot resume")
        return checkpoint.load_state(self.out / checkpoint.STATE_FILE, self.model, self.optimizer)

    def phase_at(self, step: int) -> Phase:
        return next(p for p in self.phases if step < p.end)

    def save_state(self, done: int) -> None:
        checkpoint.save_state(self.out / checkpoint.STATE_FILE, self.model, self.optimizer, done, self.config)


def fit(f: Fit, start: int = 0) -> None:
    """Train steps start .. f.steps - 1 (see the module docstring), then save."""
    if f.writes:
        f.out.mkdir(parents=True, exist_ok=True)
        (f.out / checkpoint.DIVERGED_FILE).unlink(missing_ok=True)  # a record of an earlier attempt
    log = MetricsLog(f.out, start, f.fields) if f.writes else None
    bar = None
    if f.progress is not None and f.group.main:
        from tqdm import tqdm

        bar = tqdm(total=f.steps, initial=start, desc=f.progress, dynamic_ncols=True)
    began = time.perf_counter()
    try:
        with compiled_steps(f):  # f.compile: the step functions compiled for this fit (engine/compile.py)
            for step in range(start, f.steps):
                row = _one_step(f, step, began, log)
                if bar is not None:
                    if row is not None:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                         if k not in ("step", "seconds") and isinstance(v, float)},
                                        refresh=False)
                    bar.update(1)
    except Diverged as exc:
        if f.writes:
            checkpoint.atomic_write_text(f.out / checkpoint.DIVERGED_FILE,
                                         json.dumps({"step": exc.step, "message": str(exc)}))
        raise
    finally:
        if log is not None:
            log.close()
        if bar is not None:
            bar.close()
    if not f.writes:
        return
    model_missing = f.model_file is not None and not (f.out / f.model_file).exists()
    if start < f.steps or model_missing:  # a finished run resumed again writes nothing
        f.save_state(f.steps)
        if f.model_file is not None:
            checkpoint.save_model(f.out / f.model_file, f.model, f.config)


def _one_step(f: Fit, step: int, began: float, log: MetricsLog | None) -> dict[str, Any] | None:
    """One optimizer step, its row logged (report steps, rank 0), then its checkpoint; the row."""
    torch.manual_seed(step_seed(f.seed, step, f.group.rank))
    values = f.schedule(step)
    for param_group in f.optimizer.param_groups:
        param_group["lr"] = values["lr"]
    done = step + 1
    report = done % f.log_every == 0 or done == f.steps
    phase = f.phase_at(step)
    with autocast_for(f.device, f.precision):
        out = phase.step(step, values, report)
    f.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    f.optimizer.step()
    if done == phase.end and phase.on_end is not None:
        phase.on_end(done)
    row = _report(f, out, values, done, began) if report else None
    if row is not None and log is not None:
        log.write(row)
    if f.writes and f.checkpoint_every and done % f.checkpoint_every == 0 and done < f.steps:
        f.save_state(done)
    return row


def _report(f: Fit, out: StepOutput, values: dict[str, float], done: int,
            began: float) -> dict[str, Any] | None:
    """The step's metrics over all ranks (every rank takes part), checked and made a row."""
    names = ["loss", *out.metrics]
    means = f.group.mean_(torch.stack([out.loss.detach().float(),
                                       *(out.metrics[k].detach().float() for k in out.metrics)]))
    sums = {k: all_reduce_sum_(v) for k, v in out.sums.items()}
    loss = float(means[0])
    if not math.isfinite(loss):
        raise Diverged(f"{f.name} diverged at step {done} (loss {loss})", done)
    if not f.group.main:
        return None
    row: dict[str, Any] = {"step": done, **{k: float(v) for k, v in zip(names, means, strict=True)},
                           **values, "seconds": round(time.perf_counter() - began, 2)}
    if f.on_log is not None:
        f.on_log(row, sums)
    return row
