"""The VAE trainer: a discrete VAE's step functions on the engine's loop (engine/loop.py).

The loop reseeds the global RNG by (seed, step) before each step and the batch is a slice of a
per-epoch permutation seeded by (seed, epoch) (engine/runtime.py), so a checkpoint needs only the
parameters, Adam's moments and the step, and `--resume` continues a run exactly.

Pretrain-then-quantize (train.pretrain_steps = P > 0; arXiv 2411.16550, kmeans.py) is a phase of
its own: steps 0..P-1 train encoder -> decoder on the MSE without the quantizer, which they leave
untouched; at the phase's end (right after step P-1) the codebook is set to the K-means centres of
the encoder's outputs on the batches of steps P..P+3 (k-means++ seeded by (seed, P)), before the
checkpoint of step P is written; steps P.. train with quantization. The schedules stay functions of
the global step. Only codebook methods (D-channel encoder outputs) can do it: config.py refuses the
logit methods.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .config import RunConfig, merge_for_resume
from .data import ImageSet, to_model_input
from .engine import ddp
from .engine.loop import Fit, Phase, StepOutput, fit
from .engine.runtime import BatchOrder, autocast_for, pick_device, session, slow_bf16_warning, step_seed
from .errors import EdvaeError
from .evaluate import evaluate, write_eval
from .metrics import code_counts, perplexity
from .model import DiscreteVAE
from .quantizers import kmeans
from .run_folder import load_splits, run_config, run_model_file
from .schedules import Schedules

FIELDS = ("step", "loss", "mse", "kl", "batch_perplexity", "temperature", "beta", "lr",
          "test_perplexity", "test_mse", "test_entropy_mean", "test_entropy_std", "test_uncertainty",
          "seconds")


class Autoencoder(nn.Module):
    """encoder -> decoder without the quantizer: the pretraining phase's network. It has its own
    DDP wrapper, since DDP refuses a step in which the quantizer's parameters get no gradient."""

    def __init__(self, model: DiscreteVAE):
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x).to(x.dtype))


class VAESteps:
    """The step functions of one VAE run, its schedules and what its logged rows add."""

    def __init__(self, cfg: RunConfig, model: DiscreteVAE, train_set: ImageSet, test_set: ImageSet,
                 group: ddp.Group, device: torch.device):
        t = cfg.train
        self.cfg, self.model, self.train_set, self.test_set = cfg, model, train_set, test_set
        self.group, self.device = group, device
        self.layout = torch.channels_last if t.channels_last else torch.contiguous_format
        # indices where the set takes them: one held on the GPU is indexed with no copy per step
        self.order = BatchOrder(len(train_set), t.batch_size, t.seed, train_set.index_device)
        self.sched = Schedules.from_train(t)
        self.net = self.autoencoder = None

    def wrap(self, start: int) -> None:
        """The data-parallel wrappers, once the parameters are final (resumed or not)."""
        self.net = ddp.wrap(self.model, self.group, self.device)
        if start < self.cfg.train.pretrain_steps:
            self.autoencoder = ddp.wrap(Autoencoder(self.model), self.group, self.device)

    def phases(self) -> list[Phase]:
        t = self.cfg.train
        quantized = Phase(t.steps, self.quantized_step)
        if not t.pretrain_steps:
            return [quantized]
        return [Phase(t.pretrain_steps, self.pretrain_step, self.init_codebook), quantized]

    def schedule(self, step: int) -> dict[str, float]:
        s = self.sched
        return {"lr": s.lr_at(step), "temperature": s.temperature_at(step), "beta": s.beta_at(step)}

    def batch(self, step: int) -> torch.Tensor:
        x = self.train_set.batch(self.group.shard(self.order.indices(step)))
        return to_model_input(x).contiguous(memory_format=self.layout)

    def pretrain_step(self, step: int, values: dict[str, float], report: bool) -> StepOutput:
        x = self.batch(step)
        self.model.train()
        mse = F.mse_loss(self.autoencoder(x).float(), x)
        return StepOutput(mse, {"mse": mse, "kl": torch.zeros((), device=self.device)})

    def quantized_step(self, step: int, values: dict[str, float], report: bool) -> StepOutput:
        x = self.batch(step)
        self.model.train()
        quantizer = self.model.quantizer
        quantizer.reporting = report
        x_hat, q = self.net(x, temperature=values["temperature"], beta=values["beta"])
        mse = F.mse_loss(x_hat.float(), x)
        loss = quantizer.reconstruction_loss(x_hat, x, mse) + q.loss  # the MSE unless overridden
        if not report:
            return StepOutput(loss)
        kl = q.stats.get("kl")
        metrics = {"mse": mse, "kl": torch.zeros((), device=self.device) if kl is None else kl,
                   **{f"quantizer_{k}": v for k, v in q.stats.items() if k != "kl"}}  # in metrics.jsonl
        return StepOutput(loss, metrics, {"counts": code_counts(q.indices, self.cfg.model.codebook_size)})

    def init_codebook(self, done: int) -> None:
        """K-means (over all ranks) on the encoder outputs of the kmeans.INIT_BATCHES batches that
        follow `done`, k-means++ seeded by (seed, done)."""
        batches = [self.batch(s) for s in range(done, done + kmeans.INIT_BATCHES)]
        with autocast_for(self.device, self.cfg.train.precision):
            kmeans.init_codebook_from_encoder(self.model, batches, seed=step_seed(self.cfg.train.seed, done))

    def on_log(self, row: dict[str, Any], sums: dict[str, torch.Tensor]) -> None:
        """The batch's code perplexity, and the test-subset metrics every eval_every steps."""
        t, done = self.cfg.train, row["step"]
        if "counts" in sums:  # no codes in pretraining
            row["batch_perplexity"] = perplexity(sums["counts"])
        if t.eval_every and done > t.pretrain_steps and (done % t.eval_every == 0 or done == t.steps):
            r = evaluate(self.model, self.test_set, t.eval_batch_size, limit=t.eval_subset, sampled=False,
                         keep_images=1)
            row["test_perplexity"], row["test_mse"] = r["perplexity"], r["mse"]
            # the entropy of pi and the uncertainty over training (the paper's Figures 2a and 3), and
            # the per-position entropy of the first test image (Figure 2b; metrics.jsonl only)
            row["test_entropy_mean"], row["test_entropy_std"] = r["entropy_mean"], r["entropy_std"]
            row["test_uncertainty"] = r["uncertainty_mean"]
            first = r["_images"]["entropy"]
            if first is not None:
                row["test_entropy_map"] = [[round(v, 5) for v in line] for line in first[0].tolist()]


def check_run_dir(out: Path, resume: bool) -> None:
    """A new run needs a new (or empty) folder; a resumed one its checkpoint. Nothing is created:
    the folder is made once the data has loaded."""
    if resume:
        state = out / checkpoint.STATE_FILE
        if not state.is_file():
            raise EdvaeError(f"--resume: no checkpoint to resume in {out} ({state.name} missing)")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdvaeError(f"--out {out} already holds files; pick a new folder or pass --resume")


def resumed_config(out: Path, given: dict[str, Any]) -> RunConfig:
    """The stored config of the run in `out`, with what was given again on the command line
    (`given`, a config mapping): the same values, a larger train.steps, or another device or
    thread count; any other difference is refused, naming the keys."""
    check_run_dir(out, resume=True)
    stored = checkpoint.read_state_config(out / checkpoint.STATE_FILE)
    return merge_for_resume(stored, given, f"--resume in {out}")


def train(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True,
          evaluate_at_end: bool = True) -> dict[str, Any] | None:
    """Train (or resume: `cfg` is then the stored config, config.resumed_config) a run in `out`;
    returns the final evaluation when asked for (rank 0)."""
    out = Path(out)
    check_run_dir(out, resume)
    t = cfg.train
    with session(t.device, t.threads, t.flush_denormals, t.batch_size) as (group, device):
        return _train(cfg, out, resume, progress and group.main, evaluate_at_end, group, device)


def _train(cfg: RunConfig, out: Path, resume: bool, progress: bool, evaluate_at_end: bool,
           group: ddp.Group, device: torch.device) -> dict[str, Any] | None:
    t = cfg.train
    warning = slow_bf16_warning(device, t.precision)
    if warning and group.main:
        print(warning, file=sys.stderr)
    train_set, test_set = load_splits(cfg, device)
    cfg.model.channels, cfg.model.image_size = train_set.channels, train_set.size
    torch.manual_seed(t.seed)
    model = DiscreteVAE(cfg.model).to(device)
    steps = VAESteps(cfg, model, train_set, test_set, group, device)
    model.to(memory_format=steps.layout)
    f = Fit(model, torch.optim.Adam(model.parameters(), lr=t.lr), steps.phases(), steps.schedule, t.seed,
            device, t.precision, t.log_every, t.checkpoint_every, out, FIELDS, cfg.to_dict(), group=group,
            progress=cfg.model.method if progress else None, on_log=steps.on_log, compile=t.compile,
            cuda_graph=t.cuda_graph)
    start = f.resume() if resume else 0
    if not resume and group.main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_text(out / checkpoint.CONFIG_FILE, cfg.to_json())
    steps.wrap(start)
    try:
        fit(f, start)
    finally:
        model.quantizer.reporting = True
    if not group.main or not evaluate_at_end:
        return None
    # evaluate in the default layout, as a model loaded from the run folder is: the same numbers
    model = model.to(memory_format=torch.contiguous_format)
    return evaluate_run(out, model=model, test_set=test_set, batch_size=t.eval_batch_size)


def evaluate_run(run_dir: str | Path, model: DiscreteVAE | None = None,
                 test_set: ImageSet | None = None, batch_size: int = 128,
                 device: str = "auto") -> dict[str, Any]:
    """Evaluate a run on its test split and write eval.json and its PNGs into the run folder."""
    run_dir = Path(run_dir)
    if model is None:
        model = DiscreteVAE.load(run_model_file(run_dir), pick_device(device))
    if test_set is None:
        _, test_set = load_splits(run_config(run_dir), model.device)
    result = evaluate(model, test_set, batch_size, keep_images=32)
    write_eval(run_dir, result)
    return result
