"""Fit a PixelSNAIL prior (Chen et al. 2018) to the code maps of a trained run, as the EdVAE paper
does before measuring FID (Section 5.2.5), and report its test negative log-likelihood in bits per
code beside two baselines: uniform (log2 K) and unigram (the training-set code histogram).

Training is a step function on the engine's loop (engine/loop.py), as the VAE trainer's is. Batch
`step` is a slice of a permutation seeded by (seed, epoch), and the global RNG (dropout) is
reseeded by (seed, step). A checkpoint therefore holds only the parameters, Adam's moments and the
step, and a resumed fit ends exactly where an uninterrupted one does.

A prior folder holds:
- config.json (model, train, source);
- checkpoint.safetensors and prior.safetensors;
- metrics.jsonl and metrics.csv;
- codes-train.safetensors and codes-test.safetensors, unless another cache folder is given;
- prior_eval.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import checkpoint
from ..config import DEVICES, PRECISIONS, _build, lay_over, resume_differences
from ..data.download import sha256sum
from ..engine.loop import Fit, Phase, StepOutput, fit
from ..engine.runtime import BatchOrder, session
from ..errors import EdvaeError
from ..model import DiscreteVAE
from ..run_folder import read_json, run_config, run_model_file
from ..schedules import cosine_anneal
from ..train import check_run_dir
from ..yaml_values import parse_value
from .codes import cached_codes, unigram_bits
from .pixelsnail import PRESETS, PixelSNAIL, PixelSNAILConfig, preset_for

PRIOR_FILE = "prior.safetensors"
EVAL_FILE = "prior_eval.json"
KIND = "pixelsnail-prior"
PRESET_NAMES = {f"{s}x{s}": s for s in PRESETS}
PRIOR_FIELDS = ("step", "bits_per_code", "test_bits_per_code", "lr", "seconds")


@dataclass
class PriorTrainConfig:
    steps: int = 20_000  # edvae's default budget; the paper gives none for its prior
    batch_size: int = 32  # rosinality/vq-vae-2-pytorch's PixelSNAIL batch
    lr: float = 3e-4  # rosinality/vq-vae-2-pytorch's PixelSNAIL learning rate (Adam)
    lr_min: float = 0.0  # cosine annealing lr -> lr_min over `steps` (edvae's choice)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast where the device supports it; attention stays float32
    threads: int = 0  # CPU threads; 0 leaves torch's default
    log_every: int = 50
    eval_every: int = 0  # test bits per code on `eval_subset` maps during training; 0 = at the end only
    eval_subset: int = 2048
    eval_batch_size: int = 256
    checkpoint_every: int = 1000  # 0 = only at the end
    compile: bool = False  # torch.compile of the training step (engine/compile.py)


@dataclass
class PriorRunConfig:
    model: PixelSNAILConfig = field(default_factory=PixelSNAILConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)
    source: dict[str, Any] = field(default_factory=dict)  # run, model_sha256, dataset

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "model": dataclasses.asdict(self.model),
                "train": dataclasses.asdict(self.train), "source": dict(self.source)}


def prior_config_from_dict(data: dict[str, Any]) -> PriorRunConfig:
    unknown = sorted(set(data) - {"kind", "model", "train", "source"})
    if unknown:
        raise EdvaeError(f"unknown prior config section {unknown[0]!r} (known: model, train)")
    model = _build(PixelSNAILConfig, "model", data.get("model") or {})
    train = _build(PriorTrainConfig, "train", data.get("train") or {})
    for key, value, valid in (("device", train.device, DEVICES), ("precision", train.precision, PRECISIONS)):
        if value not in valid:
            raise EdvaeError(f"config key train.{key} must be one of {valid}, got {value!r}")
    if not 0.0 <= model.dropout < 1.0:
        raise EdvaeError(f"config key model.dropout must lie in [0, 1), got {model.dropout}")
    if model.channels % model.heads:
        raise EdvaeError(f"config key model.heads ({model.heads}) must divide model.channels "
                         f"({model.channels})")
    return PriorRunConfig(model, train, dict(data.get("source") or {}))


def parse_overrides(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """`model.channels=64`, `train.steps=500` (YAML values) -> {"model": {...}, "train": {...}}."""
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for a in assignments:
        if "=" not in a:
            raise EdvaeError(f"--set expects section.key=value, got {a!r}")
        key, raw = a.split("=", 1)
        section, _, name = key.strip().partition(".")
        if section not in out or not name:
            raise EdvaeError(f"unknown prior config key {key!r} (use model.KEY or train.KEY)")
        out[section][name] = parse_value(raw)
    return out


def build_prior_config(vae: DiscreteVAE, overrides: list[str] | None = None,
                       preset: str = "auto") -> PriorRunConfig:
    """Codebook size and map size from the VAE, the rest from the preset and the overrides."""
    k, size = vae.config.codebook_size, vae.latent_size
    if preset != "auto" and preset not in PRESET_NAMES:
        raise EdvaeError(f"unknown prior preset {preset!r} (auto, {', '.join(PRESET_NAMES)})")
    model = preset_for(size if preset == "auto" else PRESET_NAMES[preset])
    given = parse_overrides(overrides or [])
    for key, value in (("codebook_size", k), ("size", size)):
        if key in given["model"] and given["model"][key] != value:
            raise EdvaeError(f"model.{key} is set by the run's VAE ({value}), got {given['model'][key]}")
    model.update(given["model"], codebook_size=k, size=size)
    return prior_config_from_dict({"model": model, "train": given["train"]})


@torch.no_grad()
def code_bits(prior: PixelSNAIL, codes: torch.Tensor, batch_size: int = 256,
              limit: int | None = None) -> float:
    """Mean -log2 p(code) over every position of the first `limit` code maps (teacher forcing)."""
    prior.check_codes(codes)
    was_training = prior.training
    prior.eval()
    device = next(prior.parameters()).device
    n = len(codes) if limit is None else min(limit, len(codes))
    total = 0.0
    for start in range(0, n, batch_size):
        x = codes[start:min(start + batch_size, n)].to(device).long()
        total += float(prior.nll_bits(x).double().sum())
    prior.train(was_training)
    return total / (n * codes.shape[1] * codes.shape[2])


def evaluate_prior(prior: PixelSNAIL, train_codes: torch.Tensor, test_codes: torch.Tensor,
                   batch_size: int = 256) -> dict[str, Any]:
    k, s = prior.config.codebook_size, prior.config.size
    bits = code_bits(prior, test_codes, batch_size)
    unigram, unigram_entropy = unigram_bits(train_codes, test_codes, k)
    return {
        "bits_per_code": bits,  # test negative log-likelihood per code
        "uniform_bits_per_code": math.log2(k),
        "unigram_bits_per_code": unigram,  # test codes under the training histogram (add-one)
        "unigram_train_entropy_bits": unigram_entropy,
        "bits_per_map": bits * s * s,
        "nats_per_code": bits * math.log(2),
        "codebook_size": k,
        "map_size": s,
        "n_test_maps": int(test_codes.shape[0]),
        "n_train_maps": int(train_codes.shape[0]),
        "used_codes_train": int(torch.unique(train_codes).numel()),
    }


class PriorSteps:
    """The prior's step function: teacher-forced cross-entropy on a batch of training code maps."""

    def __init__(self, prior: PixelSNAIL, data: torch.Tensor, cfg: PriorTrainConfig,
                 test_codes: torch.Tensor, device: torch.device):
        self.prior, self.data, self.cfg, self.test_codes = prior, data, cfg, test_codes
        self.order = BatchOrder(len(data), cfg.batch_size, cfg.seed, device)  # indices beside the codes

    def schedule(self, step: int) -> dict[str, float]:
        return {"lr": cosine_anneal(step, self.cfg.steps, self.cfg.lr, self.cfg.lr_min)}

    def step(self, step: int, values: dict[str, float], report: bool) -> StepOutput:
        x = self.data[self.order.indices(step)].long()
        self.prior.train()
        return StepOutput(F.cross_entropy(self.prior(x).float(), x))

    def on_log(self, row: dict[str, Any], sums: dict[str, torch.Tensor]) -> None:
        t, done = self.cfg, row["step"]
        row["bits_per_code"] = row.pop("loss") / math.log(2)
        if t.eval_every and (done % t.eval_every == 0 or done == t.steps):
            row["test_bits_per_code"] = code_bits(self.prior, self.test_codes, t.eval_batch_size,
                                                  t.eval_subset)


def _prior_config(run_dir: Path, out: Path, resume: bool, overrides: list[str], preset: str,
                  sha: str) -> PriorRunConfig:
    """A new prior's config from the VAE, the preset and the overrides; a resumed one's as stored,
    where the overrides may only change the device, the threads or grow the steps."""
    if not resume:
        check_run_dir(out, resume=False)
        cfg = build_prior_config(DiscreteVAE.load(run_dir, "cpu"), overrides, preset)
        vae_cfg = run_config(run_dir)
        cfg.source = {"run": str(run_dir), "model_sha256": sha, "dataset": vae_cfg.train.dataset,
                      "method": vae_cfg.model.method}
        return cfg
    if not (out / checkpoint.CONFIG_FILE).is_file():
        raise EdvaeError(f"--resume: no prior to resume in {out} ({checkpoint.CONFIG_FILE} missing)")
    data = read_json(out / checkpoint.CONFIG_FILE)
    if data.get("kind") != KIND:
        raise EdvaeError(f"{out} does not hold a prior (kind {data.get('kind')!r})")
    stored = prior_config_from_dict(data)
    if stored.source.get("model_sha256") != sha:
        raise EdvaeError(f"the prior in {out} was fitted to another model than {run_model_file(run_dir)}")
    old = stored.to_dict()
    new = prior_config_from_dict(lay_over(old, parse_overrides(overrides)))
    differ = resume_differences({k: old[k] for k in ("model", "train")},
                                {k: new.to_dict()[k] for k in ("model", "train")})
    if differ:
        raise EdvaeError(f"--resume in {out}: the prior was started with other settings: {', '.join(differ)}")
    return new


def train_prior(run_dir: str | Path, out: str | Path, overrides: list[str] | None = None,
                preset: str = "auto", resume: bool = False, codes_cache: str | Path | None = None,
                progress: bool = True, log=print) -> dict[str, Any]:
    """Fit (or resume) the prior of `run_dir` in `out`; returns the test evaluation."""
    run_dir, out = Path(run_dir), Path(out)
    sha = sha256sum(run_model_file(run_dir))
    cfg = _prior_config(run_dir, out, resume, overrides or [], preset, sha)
    t = cfg.train
    with session(t.device, t.threads, flush=False) as (_, dev):
        vae = DiscreteVAE.load(run_dir, dev)
        out.mkdir(parents=True, exist_ok=True)
        config = cfg.to_dict()
        if not resume:
            checkpoint.atomic_write_text(out / checkpoint.CONFIG_FILE, json.dumps(config, indent=2))
        cache = Path(codes_cache) if codes_cache is not None else out
        train_codes = cached_codes(run_dir, cache, "train", model=vae, device=dev, log=log)
        test_codes = cached_codes(run_dir, cache, "test", model=vae, device=dev, log=log)
        del vae
        torch.manual_seed(t.seed)
        prior = PixelSNAIL(cfg.model).to(dev)
        prior.check_codes(train_codes)
        prior.check_codes(test_codes)
        steps = PriorSteps(prior, train_codes.to(dev), t, test_codes, dev)
        f = Fit(prior, torch.optim.Adam(prior.parameters(), lr=t.lr), [Phase(t.steps, steps.step)],
                steps.schedule, t.seed, dev, t.precision, t.log_every, t.checkpoint_every, out, PRIOR_FIELDS,
                config, model_file=PRIOR_FILE, progress="prior" if progress else None,
                name="prior training", on_log=steps.on_log, compile=t.compile)
        start = f.resume() if resume and (out / checkpoint.STATE_FILE).is_file() else 0
        fit(f, start)
        result = evaluate_prior(prior, train_codes, test_codes, t.eval_batch_size)
    checkpoint.atomic_write_text(out / EVAL_FILE, json.dumps(result, indent=2))
    return result


def load_prior(prior_dir: str | Path,
               device: str | torch.device = "cpu") -> tuple[PixelSNAIL, PriorRunConfig]:
    """A fitted prior (folder or prior.safetensors) and its config."""
    path = Path(prior_dir)
    if path.is_dir():
        path = path / PRIOR_FILE
    if not path.is_file():
        raise EdvaeError(f"prior not found: {path} (fit one with `edvae prior train`)")
    tensors, data = checkpoint.load_model_tensors(path)
    if data.get("kind") != KIND:
        raise EdvaeError(f"{path} is not a PixelSNAIL prior (kind {data.get('kind')!r})")
    cfg = prior_config_from_dict(data)
    prior = PixelSNAIL(cfg.model)
    checkpoint.load_into(prior, tensors, f"{path} does not fit its own config")
    return prior.to(device).eval(), cfg
