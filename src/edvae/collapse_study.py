"""The synthetic study of representation collapse in vector quantization (`edvae study collapse`).

Zhao, Zou, Shah, Liu, "Representation collapsing problems in vector quantization" (arXiv 2411.16550):
tokens collapse (the codewords gather on a few
encoder outputs) comes from initialising the codebook before the encoder has learned anything, and
is cured by pretraining the autoencoder without quantization, then initialising the codebook by
K-means on its encoder outputs; embeddings collapse (encoder outputs of different modes merge) comes
from too narrow an encoder. This is a study of its own, CPU-sized, not the image pipeline:

- data: a mixture of `components` isotropic Gaussians in `data_dim` dimensions (means uniform in
  [-spread, spread]^d, standard deviation `std`), fresh samples every step from a seeded generator;
  a fixed test set of `test_points` samples;
- model: MLP encoder data_dim -> width -> width -> latent_dim and its mirror as decoder (ReLU);
  latent_dim = 2 so the latent space can be drawn;
- quantizer: VQ-VAE with the EMA codebook ('statistical update', as in the paper): edvae's vq-ema
  (commitment 0.25, decay 0.99, debiased EMA) on (B, latent_dim, 1, 1) latents;
- arms, each `steps` steps of Adam in total (the same budget):
    random   - vq-ema's own initialisation (uniform in +-1/K, EdVAE protocol), quantized from step 0;
    kmeans   - codebook = K-means (kmeans.py: k-means++ then Lloyd) of the untrained encoder's
               outputs, quantized from step 0 (the paper's baseline: initialised from an encoder
               that does not know the data yet);
    pretrain - `pretrain_steps` steps of encoder -> decoder on the MSE without quantization, then the
               codebook = K-means of the trained encoder's outputs, then quantized training;
- sweeps: codebook sizes at width `width`, and encoder/decoder widths at `width_sweep_codebook` codes;
  every point for every seed;
- measures on the test set: perplexity of the code histogram (exp of its entropy; K = all codes used
  equally), used codes, and the MSE of the reconstruction through the quantizer.

Writes results.json (every run and the means), summary.md (tables and the command), codebook-sweep.png
and width-sweep.png (perplexity and MSE), latents.png (data, encoder outputs and codewords of the
three arms at the largest codebook: tokens collapse and its cure).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_write_text, read_jsonl
from .collapse_plots import plot_latents, plot_sweeps
from .engine.loop import Fit, Phase, StepOutput, fit
from .errors import EdvaeError
from .metrics import perplexity
from .quantizers.kmeans import kmeans
from .quantizers.vq_ema import EMAVQQuantizer

ARMS = ("random", "kmeans", "pretrain")
STUDY_FILE = "study.json"  # the settings of the study a folder holds
RUNS_FILE = "runs.jsonl"  # its finished runs, one row each


@dataclass
class StudyConfig:
    # data: a mixture of Gaussians in a low dimension (the paper's synthetic setting; sizes ours)
    components: int = 16
    data_dim: int = 2
    spread: float = 4.0  # component means uniform in [-spread, spread]^data_dim
    std: float = 0.3  # every component's standard deviation
    data_seed: int = 0  # the mixture (means); the seeds below draw models, batches and K-means
    test_points: int = 8192
    # model
    latent_dim: int = 2  # 2: the latent space is drawn in latents.png
    width: int = 64  # hidden width of the codebook-size sweep
    widths: tuple[int, ...] = (4, 8, 16, 32, 64)  # encoder/decoder hidden widths swept
    codebook_sizes: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    width_sweep_codebook: int = 256  # codebook size of the width sweep
    commitment: float = 0.25  # vq-ema's default (van den Oord et al. 2017)
    decay: float = 0.99  # vq-ema's default (van den Oord et al. 2017)
    # training: Adam (the paper: AdamW), the same total budget in every arm
    steps: int = 1000
    pretrain_steps: int = 500  # of `steps`, in the pretrain arm
    batch_size: int = 256
    lr: float = 1e-3
    init_points: int = 8192  # encoder outputs K-means initialises the codebook from
    kmeans_iters: int = 20
    arms: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1

    def check(self) -> StudyConfig:
        positive = ("components", "data_dim", "test_points", "latent_dim", "width", "width_sweep_codebook",
                    "steps", "batch_size", "init_points")
        for name in positive:
            if getattr(self, name) < 1:
                raise EdvaeError(f"study option {name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.pretrain_steps < self.steps:
            raise EdvaeError(f"study option pretrain_steps must be in [0, steps), got {self.pretrain_steps}")
        if not self.codebook_sizes or min(self.codebook_sizes) < 2:
            raise EdvaeError(f"codebook sizes must be at least 2, got {self.codebook_sizes}")
        if not self.widths or min(self.widths) < 1 or not self.seeds:
            raise EdvaeError("the study needs at least one width and one seed")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise EdvaeError(f"unknown arm {unknown[0] if unknown else None!r} (known: {', '.join(ARMS)})")
        if self.spread <= 0 or self.std <= 0 or self.lr <= 0:
            raise EdvaeError("spread, std and lr must be positive")
        return self


# ------------------------------------------------------------------ data and model


def mixture_means(cfg: StudyConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(cfg.data_seed)
    return (2 * torch.rand(cfg.components, cfg.data_dim, generator=g) - 1) * cfg.spread


def sample(cfg: StudyConfig, means: torch.Tensor, n: int,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of the mixture (equal weights) and their components."""
    labels = torch.randint(cfg.components, (n,), generator=generator)
    noise = torch.randn(n, cfg.data_dim, generator=generator)
    return means[labels] + cfg.std * noise, labels


def mlp(d_in: int, width: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, d_out))


class VQAutoencoder(nn.Module):
    def __init__(self, cfg: StudyConfig, width: int, codebook_size: int):
        super().__init__()
        self.encoder = mlp(cfg.data_dim, width, cfg.latent_dim)
        self.decoder = mlp(cfg.latent_dim, width, cfg.data_dim)
        self.vq = EMAVQQuantizer(codebook_size, cfg.latent_dim, commitment=cfg.commitment, decay=cfg.decay)

    def forward(self, x: torch.Tensor):
        """(encoder outputs, quantizer output, reconstruction through the quantizer) of points x."""
        z = self.encoder(x)
        out = self.vq(z[:, :, None, None])  # vectors as (B, D, 1, 1) latent maps
        return z, out, self.decoder(out.z_q[:, :, 0, 0])


def _stream(seed: int, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + purpose)


# ------------------------------------------------------------------ one run


class CollapseSteps:
    """One arm's step functions: batches and K-means data from their own seeded streams."""

    def __init__(self, cfg: StudyConfig, means: torch.Tensor, model: VQAutoencoder, codebook_size: int,
                 seed: int):
        self.cfg, self.means, self.model, self.k, self.seed = cfg, means, model, codebook_size, seed
        self.batches, self.init_data = _stream(seed, 1), _stream(seed, 2)
        self.init: dict[str, Any] = {}

    def init_codebook(self, done: int = 0) -> None:
        """The codebook from K-means of the encoder's outputs, as they are now."""
        with torch.no_grad():
            z = self.model.encoder(sample(self.cfg, self.means, self.cfg.init_points, self.init_data)[0])
        result = kmeans(z, self.k, iters=self.cfg.kmeans_iters, seed=self.seed)
        self.model.vq.init_codebook(result.centroids)
        self.init = {"kmeans_inertia": result.inertia, "kmeans_used": int((result.counts > 0).sum())}

    def autoencoder_step(self, step: int, values: dict[str, float], report: bool) -> StepOutput:
        x, _ = sample(self.cfg, self.means, self.cfg.batch_size, self.batches)
        return StepOutput(F.mse_loss(self.model.decoder(self.model.encoder(x)), x))

    def quantized_step(self, step: int, values: dict[str, float], report: bool) -> StepOutput:
        x, _ = sample(self.cfg, self.means, self.cfg.batch_size, self.batches)
        _, out, x_hat = self.model(x)
        return StepOutput(F.mse_loss(x_hat, x) + out.loss)


def train_one(cfg: StudyConfig, means: torch.Tensor, test: torch.Tensor, arm: str, codebook_size: int,
              width: int, seed: int, keep_latents: bool = False) -> dict[str, Any]:
    """Train one arm at one (codebook size, width, seed); its test measures."""
    torch.manual_seed(seed)
    model = VQAutoencoder(cfg, width, codebook_size)
    params = [*model.encoder.parameters(), *model.decoder.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr, foreach=True)
    run = CollapseSteps(cfg, means, model, codebook_size, seed)
    pretrain = cfg.pretrain_steps if arm == "pretrain" else 0
    phases = [Phase(cfg.steps, run.quantized_step)]
    if pretrain:  # encoder -> decoder alone, then the codebook from the trained encoder
        phases.insert(0, Phase(pretrain, run.autoencoder_step, run.init_codebook))
    elif arm in ("kmeans", "pretrain"):  # the codebook from the untrained encoder
        run.init_codebook()
    model.train()
    fit(Fit(model, opt, phases, lambda _: {"lr": cfg.lr}, seed, torch.device("cpu"), log_every=cfg.steps,
            out=None, name=f"collapse study run {arm} K={codebook_size} width={width} seed={seed}"))
    model.eval()
    with torch.no_grad():
        z, out, x_hat = model(test)
        counts = torch.bincount(out.indices.reshape(-1), minlength=codebook_size)
        row = {"arm": arm, "codebook_size": codebook_size, "width": width, "seed": seed,
               "perplexity": perplexity(counts), "used_codes": int((counts > 0).sum()),
               "mse": float(F.mse_loss(x_hat, test)), **run.init}
    if keep_latents:
        row["_latents"] = z.clone()
        row["_codebook"] = model.vq.codebook.clone()
        row["_counts"] = counts
    return row


# ------------------------------------------------------------------ the sweep


def plan(cfg: StudyConfig) -> list[tuple[str, int, int, int]]:
    """Every (arm, codebook size, width, seed) to train, each once."""
    points = [(k, cfg.width) for k in cfg.codebook_sizes]
    points += [(cfg.width_sweep_codebook, w) for w in cfg.widths]
    unique = list(dict.fromkeys(points))
    return [(arm, k, w, s) for k, w in unique for arm in cfg.arms for s in cfg.seeds]


def _finished_runs(cfg: StudyConfig, out: Path) -> dict[tuple, dict[str, Any]]:
    """The runs an earlier, interrupted call of the same study finished (runs.jsonl), by key; a folder
    that holds a study with other settings is refused."""
    settings = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    stored = out / STUDY_FILE
    if stored.is_file() and stored.read_text() != settings:
        raise EdvaeError(f"{out} holds a collapse study with other settings ({stored}); pick another --out")
    atomic_write_text(stored, settings)
    return {(r["arm"], r["codebook_size"], r["width"], r["seed"]): r for r in read_jsonl(out / RUNS_FILE)}


def run_study(cfg: StudyConfig, out: str | Path, command: str = "",
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the sweep, one run after the other, and write results.json, summary.md and the PNGs into
    `out`. Each finished run is appended to runs.jsonl: a call interrupted and started again with
    the same settings trains only the runs not finished (every run is a function of its settings
    and seed, so the results are those of an uninterrupted call); the runs drawn in latents.png are
    trained again for their latents."""
    cfg.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = _finished_runs(cfg, out)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        means = mixture_means(cfg)
        test, test_labels = sample(cfg, means, cfg.test_points, _stream(cfg.data_seed, 99))
        todo = plan(cfg)
        picture = (max(cfg.codebook_sizes), cfg.width, cfg.seeds[0])
        began = time.perf_counter()
        rows, latents = [], {}
        with open(out / RUNS_FILE, "a") as runs:
            for i, (arm, k, w, s) in enumerate(todo):
                keep = (k, w, s) == picture
                row = done.get((arm, k, w, s)) if not keep else None
                if row is None:
                    row = train_one(cfg, means, test, arm, k, w, s, keep_latents=keep)
                    if keep:
                        latents[arm] = {key: row.pop(key) for key in ("_latents", "_codebook", "_counts")}
                    if (arm, k, w, s) not in done:
                        runs.write(json.dumps(row) + "\n")
                        runs.flush()
                rows.append(row)
                if log:
                    log(f"[{i + 1}/{len(todo)}] {arm:8s} K={k:<5d} width={w:<3d} seed={s}: perplexity "
                        f"{row['perplexity']:.1f}, used {row['used_codes']}, mse {row['mse']:.4f} "
                        f"({time.perf_counter() - began:.0f} s)")
    finally:
        torch.set_num_threads(threads)
    summary = summarise(cfg, rows)
    result = {"command": command, "config": dataclasses.asdict(cfg), "runs": rows, "summary": summary,
              "seconds": round(time.perf_counter() - began, 1)}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "summary.md", summary_markdown(cfg, summary, command, result["seconds"]))
    plot_sweeps(cfg, summary, out)
    plot_latents(cfg, means, test, test_labels, latents, picture, out / "latents.png")
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(cfg: StudyConfig, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Mean and standard deviation over seeds of each sweep point and arm."""

    def point(arm: str, k: int, w: int) -> dict[str, Any]:
        rs = [r for r in rows if (r["arm"], r["codebook_size"], r["width"]) == (arm, k, w)]
        entry = {"arm": arm, "codebook_size": k, "width": w, "seeds": len(rs)}
        for key in ("perplexity", "used_codes", "mse"):
            entry[key], entry[key + "_std"] = _mean_std([float(r[key]) for r in rs])
        return entry

    return {"codebook": [point(a, k, cfg.width) for k in cfg.codebook_sizes for a in cfg.arms],
            "width": [point(a, cfg.width_sweep_codebook, w) for w in cfg.widths for a in cfg.arms]}


def summary_markdown(cfg: StudyConfig, summary: dict[str, list[dict[str, Any]]], command: str,
                     seconds: float) -> str:
    lines = [f"Command: `{command}`" if command else "", "",
             f"{cfg.components} Gaussians in {cfg.data_dim}-D (spread {cfg.spread}, std {cfg.std}); MLP "
             f"autoencoder, {cfg.latent_dim}-D latent, VQ with EMA codebook; {cfg.steps} Adam steps "
             f"(pretrain arm: {cfg.pretrain_steps} without quantization first), batch {cfg.batch_size}; "
             f"seeds {list(cfg.seeds)}; mean +- std over seeds on {cfg.test_points} test points; "
             f"{seconds:.0f} s.", ""]
    width_title = f"Encoder/decoder width ({cfg.width_sweep_codebook} codes)"
    for sweep, title, key in (("codebook", f"Codebook size (width {cfg.width})", "codebook_size"),
                              ("width", width_title, "width")):
        lines += [f"### {title}", "",
                  "| " + key.replace("_", " ") + " | " + " | ".join(
                      f"{a}: perplexity | {a}: MSE" for a in cfg.arms) + " |",
                  "|---|" + "---|---|" * len(cfg.arms)]
        for value in dict.fromkeys(e[key] for e in summary[sweep]):
            at = {e["arm"]: e for e in summary[sweep] if e[key] == value}
            cells = [f"{at[a]['perplexity']:.1f} +- {at[a]['perplexity_std']:.1f} | "
                     f"{at[a]['mse']:.4f} +- {at[a]['mse_std']:.4f}" for a in cfg.arms]
            lines.append(f"| {value} | " + " | ".join(cells) + " |")
        lines.append("")
    verdict = pretraining_margin(cfg, summary)
    if verdict:
        lines += [verdict, ""]
    return "\n".join(lines)


def pretraining_margin(cfg: StudyConfig, summary: dict[str, list[dict[str, Any]]]) -> str:
    """One line: perplexity at the largest codebook, pretraining against each other arm."""
    k = max(cfg.codebook_sizes)
    at = {e["arm"]: e for e in summary["codebook"] if e["codebook_size"] == k}
    if "pretrain" not in at or len(at) < 2:
        return ""
    p = at["pretrain"]["perplexity"]
    others = ", ".join(f"{a} {e['perplexity']:.1f} (x{p / max(e['perplexity'], 1e-9):.1f})"
                       for a, e in at.items() if a != "pretrain")
    return f"At K = {k}: pretrain perplexity {p:.1f} against {others}."


def config_from_args(**values: Any) -> StudyConfig:
    """A StudyConfig from keyword arguments; None keeps the default, lists become tuples."""
    return StudyConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in values.items() if v is not None}).check()

