"""The training loop: device and precision, exact resume, atomic checkpoints, metrics, progress.

The batch order and every random draw are functions of (seed, step): the data order comes from a
per-epoch permutation seeded by (seed, epoch), and the global RNG is reseeded with (seed, step)
before each step. A checkpoint therefore needs only the parameters, Adam's moments and the step.

Pretrain-then-quantize (train.pretrain_steps = P > 0; arXiv 2411.16550, kmeans.py): steps 0..P-1
train encoder -> decoder on the MSE without the quantizer, which they leave untouched; right after
step P-1 the codebook is set to the K-means centres of the encoder's outputs on the batches of
steps P..P+3 (k-means++ seeded by (seed, P)), before the checkpoint of step P is written; steps
P.. train with quantization. The schedules stay functions of the global step. Only codebook
methods (D-channel encoder outputs) can do it: config.py refuses the logit methods.
"""

from __future__ import annotations

import csv
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint, ddp, kmeans
from .config import RunConfig, from_dict
from .data import ImageSet, load_dataset, to_model_input
from .denormals import flush_denormals
from .errors import EdvaeError
from .metrics import code_counts, perplexity
from .model import DiscreteVAE
from .schedules import Schedules

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CSV_FIELDS = ("step", "loss", "mse", "kl", "batch_perplexity", "temperature", "beta", "lr",
              "test_perplexity", "test_mse", "seconds")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdvaeError("device cuda was asked for, but torch sees no CUDA device")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EdvaeError("device mps was asked for, but it is not available")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA devices that support it (precision auto or bf16); else fp32."""
    if precision == "fp32":
        return nullcontext()
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The RNG seed of one step (and data-parallel rank: each draws its own noise)."""
    return (seed * 1_000_003 + step * 7_919 + 12_345 + rank * 1_000_000_007) % (2**63 - 1)


class BatchOrder:
    """Batch `step` of a run: a slice of the permutation of epoch step // steps_per_epoch."""

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


def load_splits(cfg: RunConfig, device: torch.device) -> tuple[ImageSet, ImageSet]:
    t = cfg.train
    common = dict(root=t.data_dir, download=t.download, seed=t.seed,
                  size=cfg.model.image_size if t.dataset in ("celeba", "lsun-church", "folder",
                                                             "synthetic") else None)
    train = load_dataset(t.dataset, "train", limit=t.limit_train, **common)
    test = load_dataset(t.dataset, "test", limit=t.limit_test, **common)
    return train.to(device), test.to(device)


def _fit_model_to_data(cfg: RunConfig, data: ImageSet) -> None:
    cfg.model.channels = data.channels
    cfg.model.image_size = data.size


class MetricsLog:
    """metrics.jsonl and metrics.csv always; TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, start_step: int, fields: tuple[str, ...] = CSV_FIELDS):
        self.fields = fields
        self.jsonl = run_dir / METRICS_JSONL
        self.csv = run_dir / METRICS_CSV
        if start_step > 0:
            self._truncate(start_step)
        new_csv = not self.csv.exists()
        self._csv_file = open(self.csv, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, self.fields, extrasaction="ignore")
        if new_csv:
            self._csv.writeheader()
        self._jsonl_file = open(self.jsonl, "a")
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
        except Exception:  # tensorboard is optional
            self._tb = None

    def _truncate(self, step: int) -> None:
        """Drop rows logged after the checkpoint a resumed run starts from."""
        if self.jsonl.exists():
            rows = [r for r in self.jsonl.read_text().splitlines() if r.strip()]
            keep = [r for r in rows if json.loads(r)["step"] <= step]
            checkpoint.atomic_write_text(self.jsonl, "".join(r + "\n" for r in keep))
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                rows = list(csv.DictReader(f))
            with open(self.csv, "w", newline="") as f:
                w = csv.DictWriter(f, self.fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(r for r in rows if int(r["step"]) <= step)

    def write(self, row: dict[str, Any]) -> None:
        self._jsonl_file.write(json.dumps(row) + "\n")
        self._jsonl_file.flush()
        self._csv.writerow(row)
        self._csv_file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self._csv_file.close()
        self._jsonl_file.close()
        if self._tb is not None:
            self._tb.close()


class Autoencoder(nn.Module):
    """encoder -> decoder without the quantizer: the pretraining phase's network. It has its own
    DDP wrapper, since DDP refuses a step in which the quantizer's parameters get no gradient."""

    def __init__(self, model: DiscreteVAE):
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x).to(x.dtype))


def init_codebook(model: DiscreteVAE, train_set: ImageSet, order: BatchOrder, group: ddp.Group,
                  layout: torch.memory_format, step: int, seed: int) -> kmeans.KMeansResult:
    """K-means (over all ranks) on the encoder outputs of the kmeans.INIT_BATCHES batches that
    follow `step`, k-means++ seeded by (seed, step)."""
    batches = [to_model_input(train_set.batch(group.shard(order.indices(s)))).contiguous(memory_format=layout)
               for s in range(step, step + kmeans.INIT_BATCHES)]
    return kmeans.init_codebook_from_encoder(model, batches, seed=step_seed(seed, step))


def prepare_run_dir(out: Path, resume: bool) -> None:
    state = out / checkpoint.STATE_FILE
    if resume:
        if not state.is_file():
            raise EdvaeError(f"--resume: no checkpoint to resume in {out} ({state.name} missing)")
        return
    if out.exists() and any(out.iterdir()):
        raise EdvaeError(f"--out {out} already holds files; pick a new folder or pass --resume")
    out.mkdir(parents=True, exist_ok=True)


def train(cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = True,
          evaluate_at_end: bool = True) -> dict[str, Any] | None:
    """Train (or resume) a run in `out`; returns the final evaluation when asked for."""
    out = Path(out)
    prepare_run_dir(out, resume)
    if resume:
        stored = from_dict(checkpoint.read_state_config(out / checkpoint.STATE_FILE))
        stored.train.device, stored.train.threads = cfg.train.device, cfg.train.threads
        cfg = stored
    t = cfg.train
    device = pick_device(t.device)
    with flush_denormals(t.flush_denormals and device.type == "cpu"):
        if t.threads:
            torch.set_num_threads(t.threads)
        group, device = ddp.start(device, t.batch_size)
        try:
            return _train(cfg, out, resume, progress and group.main, evaluate_at_end, group, device)
        finally:
            ddp.stop(group)


def _train(cfg: RunConfig, out: Path, resume: bool, progress: bool, evaluate_at_end: bool,
           group: ddp.Group, device: torch.device) -> dict[str, Any] | None:
    t = cfg.train
    train_set, test_set = load_splits(cfg, device)
    _fit_model_to_data(cfg, train_set)
    torch.manual_seed(t.seed)
    model = DiscreteVAE(cfg.model).to(device)
    layout = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    start = 0
    if resume:
        start = checkpoint.load_state(out / checkpoint.STATE_FILE, model, optimizer)
    elif group.main:
        checkpoint.atomic_write_text(out / checkpoint.CONFIG_FILE, cfg.to_json())
    net = ddp.wrap(model, group, device)
    pretrain = t.pretrain_steps
    autoencoder = ddp.wrap(Autoencoder(model), group, device) if start < pretrain else None
    sched = Schedules(t.steps, t.schedule_steps, t.lr, t.lr_min, t.lr_anneal_steps, t.beta_max,
                      t.beta_ramp_steps, t.temperature_decay, t.temperature_min)
    # indices where the set takes them: one held on the GPU is indexed with no copy per step
    order = BatchOrder(len(train_set), t.batch_size, t.seed, train_set.index_device)
    log = MetricsLog(out, start) if group.main else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=t.steps, initial=start, desc=f"{cfg.model.method}", dynamic_ncols=True)
    began = time.perf_counter()
    config = cfg.to_dict()
    try:
        for step in range(start, t.steps):
            torch.manual_seed(step_seed(t.seed, step, group.rank))
            x = train_set.batch(group.shard(order.indices(step)))
            x = to_model_input(x).contiguous(memory_format=layout)
            lr, beta, tau = sched.lr_at(step), sched.beta_at(step), sched.temperature_at(step)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            done = step + 1
            report = done % t.log_every == 0 or done == t.steps
            model.train()
            model.quantizer.reporting = report
            with autocast_for(device, t.precision):
                if step < pretrain:  # pretraining: no quantizer
                    x_hat, q = autoencoder(x), None
                else:
                    x_hat, q = net(x, temperature=tau, beta=beta)
            mse = F.mse_loss(x_hat.float(), x)
            if q is None:
                loss = mse
            else:
                loss = model.quantizer.reconstruction_loss(x_hat, x) + q.loss  # MSE unless overridden
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if done == pretrain:  # the switch: the codebook from the pretrained encoder's outputs
                with autocast_for(device, t.precision):
                    init_codebook(model, train_set, order, group, layout, done, t.seed)
            if report:
                # means over the global batch, and its code counts, from every rank
                kl = q.stats.get("kl") if q is not None else None
                kl = torch.zeros((), device=device) if kl is None else kl
                means = group.sum_(torch.stack([loss.detach(), mse.detach(), kl.float()])) / group.world
                counts = None if q is None else group.sum_(code_counts(q.indices, cfg.model.codebook_size))
                if not math.isfinite(float(means[0])):
                    raise EdvaeError(f"training diverged at step {done} (loss {float(means[0])})")
            if report and group.main:
                row = {"step": done, "loss": float(means[0]), "mse": float(means[1]), "kl": float(means[2]),
                       "temperature": tau, "beta": beta, "lr": lr,
                       "seconds": round(time.perf_counter() - began, 2)}
                if counts is not None:  # no codes in pretraining
                    row["batch_perplexity"] = perplexity(counts)
                if t.eval_every and done > pretrain and (done % t.eval_every == 0 or done == t.steps):
                    from .evaluate import evaluate

                    r = evaluate(model, test_set, t.eval_batch_size, limit=t.eval_subset, sampled=False)
                    row["test_perplexity"], row["test_mse"] = r["perplexity"], r["mse"]
                log.write(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", mse=f"{row['mse']:.4f}",
                                    ppl=f"{row.get('batch_perplexity', math.nan):.1f}", tau=f"{tau:.3f}",
                                    beta=f"{beta:.1e}", refresh=False)
            if group.main and t.checkpoint_every and done % t.checkpoint_every == 0 and done < t.steps:
                checkpoint.save_state(out / checkpoint.STATE_FILE, model, optimizer, done, config)
            if bar is not None:
                bar.update(1)
    finally:
        model.quantizer.reporting = True
        if log is not None:
            log.close()
        if bar is not None:
            bar.close()
    if not group.main:
        return None
    if start < t.steps or not (out / checkpoint.MODEL_FILE).exists():
        checkpoint.save_state(out / checkpoint.STATE_FILE, model, optimizer, t.steps, config)
        checkpoint.save_model(out / checkpoint.MODEL_FILE, model, config)
    if not evaluate_at_end:
        return None
    # evaluate in the default layout, as a model loaded from the run folder is: the same numbers
    model = model.to(memory_format=torch.contiguous_format)
    return evaluate_run(out, model=model, test_set=test_set, batch_size=t.eval_batch_size)


def evaluate_run(run_dir: str | Path, model: DiscreteVAE | None = None,
                 test_set: ImageSet | None = None, batch_size: int = 128,
                 device: str = "auto") -> dict[str, Any]:
    """Evaluate a run on its test split and write eval.json and its PNGs into the run folder."""
    from .evaluate import evaluate, write_eval

    run_dir = Path(run_dir)
    if model is None:
        if not (run_dir / checkpoint.MODEL_FILE).is_file():
            raise EdvaeError(f"{run_dir} is not a finished run ({checkpoint.MODEL_FILE} missing)")
        model = DiscreteVAE.load(run_dir, pick_device(device))
    if test_set is None:
        cfg = from_dict(json.loads((run_dir / checkpoint.CONFIG_FILE).read_text()))
        _, test_set = load_splits(cfg, model.device)
    result = evaluate(model, test_set, batch_size, keep_images=32)
    write_eval(run_dir, result)
    return result
