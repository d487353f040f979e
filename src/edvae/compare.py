"""Method x seed grids: train each run (in parallel processes), then one table and one figure.

Writes into OUT: one run folder per (method, seed), results.json (every run's evaluation),
summary.md (mean +- std per method) and perplexity.png (test perplexity over training).

A grid entry is a registered method or a variant: a label naming a method plus config overrides
(e.g. `vq-ema+pretrain` = vq-ema with train.pretrain_steps=1000), so that a recipe is one row of the table.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .config import config_data, from_dict
from .errors import EdvaeError
from .plots import save_grouped_curves
from .quantizers import QUANTIZERS

COLUMNS = (("perplexity", "perplexity (argmax)", 1.0, 1),
           ("perplexity_sampled", "perplexity (sampled)", 1.0, 1),
           ("used_codes", "used codes", 1.0, 1), ("mse", "MSE x 1e3", 1e3, 2),
           ("mse_sampled", "MSE sampled x 1e3", 1e3, 2), ("entropy_mean", "entropy of pi", 1.0, 2))


def parse_variants(specs: list[list[str]]) -> dict[str, tuple[str, list[str]]]:
    """`--variant LABEL METHOD [KEY=VALUE ...]` specs -> {label: (method, overrides)}."""
    variants: dict[str, tuple[str, list[str]]] = {}
    for spec in specs:
        if len(spec) < 2:
            raise EdvaeError(f"--variant needs LABEL METHOD [KEY=VALUE ...], got {' '.join(spec)!r}")
        label, method, *overrides = spec
        if label in QUANTIZERS or label in variants or "/" in label:
            raise EdvaeError(f"--variant label {label!r} is a method name, a repeat or not a folder name")
        if method not in QUANTIZERS:
            raise EdvaeError(f"--variant {label}: unknown method {method!r} (known: {', '.join(QUANTIZERS)})")
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise EdvaeError(f"--variant {label}: expected KEY=VALUE, got {bad[0]!r}")
        variants[label] = (method, overrides)
    return variants


def check_grid(methods: list[str], seeds: list[int], config: str | None, overrides: list[str],
               variants: dict[str, tuple[str, list[str]]]) -> None:
    """Every run's config built and validated here, before any run starts; a bad one names its
    grid entry."""
    unknown = [m for m in methods if m not in QUANTIZERS and m not in variants]
    if unknown:
        raise EdvaeError(f"unknown method or variant {unknown[0]!r} (methods: {', '.join(QUANTIZERS)}; "
                         f"variants: {', '.join(variants) or 'none given'})")
    for seed in seeds:
        for entry in methods:
            method, extra = variants.get(entry, (entry, []))
            try:
                from_dict(config_data(config, {"model.method": method, "train.seed": seed},
                                      [*overrides, *extra]))
            except EdvaeError as exc:
                raise EdvaeError(f"grid entry {entry}-seed{seed}: {exc}") from None


def run_grid(methods: list[str], seeds: list[int], out: Path, config: str | None,
             overrides: list[str], jobs: int, threads: int,
             variants: dict[str, tuple[str, list[str]]] | None = None) -> list[dict[str, Any]]:
    variants = variants or {}
    check_grid(methods, seeds, config, overrides, variants)
    out.mkdir(parents=True, exist_ok=True)
    pending = []
    for seed in seeds:  # seed-major: the methods of one seed run side by side
        for entry in methods:
            method, extra = variants.get(entry, (entry, []))
            run_dir = out / f"{entry}-seed{seed}"
            if (run_dir / "eval.json").is_file():
                continue  # finished earlier: the grid is resumable
            cmd = [sys.executable, "-m", "edvae", "train", "--method", method, "--seed", str(seed),
                   "--out", str(run_dir), "--no-progress", "--set", f"train.threads={threads}"]
            if config:
                cmd += ["--config", config]
            for o in [*overrides, *extra]:  # a variant's own settings win
                cmd += ["--set", o]
            if (run_dir / "checkpoint.safetensors").is_file():
                cmd.append("--resume")
            elif run_dir.exists():
                for f in run_dir.iterdir():  # a run killed before its first checkpoint
                    f.unlink() if f.is_file() else None
            pending.append((run_dir, cmd))
    running: list[tuple[Path, subprocess.Popen]] = []
    failed = []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    while pending or running:
        while pending and len(running) < jobs:
            run_dir, cmd = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir.parent / f"{run_dir.name}.log", "w")
            print(f"start {run_dir.name}", flush=True)
            running.append((run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        while all(proc.poll() is None for _, proc in running):
            time.sleep(0.5)
        run_dir, proc = next(r for r in running if r[1].returncode is not None)
        running.remove((run_dir, proc))
        if proc.returncode != 0:
            failed.append(run_dir.name)
        print(f"done  {run_dir.name} (exit {proc.returncode})", flush=True)
    if failed:
        raise EdvaeError(f"runs failed: {', '.join(failed)} (see their .log files in {out})")
    return collect(out, methods, seeds)


def collect(out: Path, methods: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for method in methods:
        for seed in seeds:
            path = out / f"{method}-seed{seed}" / "eval.json"
            if not path.is_file():
                raise EdvaeError(f"missing result {path}")
            r = json.loads(path.read_text())
            r.pop("code_counts", None)
            rows.append({"method": method, "seed": seed, **r})
    return rows


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """Mean +- population std of the values that are not None, scaled; "-" when there are none."""
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} +- {std:.{digits}f}"


def summary_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    head = "| method | runs | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for method in methods:
        rs = [r for r in rows if r["method"] == method]
        cells = [mean_std([r.get(key) for r in rs], scale, d) for key, _, scale, d in COLUMNS]
        lines.append(f"| {method} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def training_curves(out: Path, rows: list[dict[str, Any]]) -> dict[str, list[list[tuple[int, float]]]]:
    """{method: one (step, test perplexity) series per seed}, from each run's metrics.jsonl."""
    groups: dict[str, list[list[tuple[int, float]]]] = {}
    for r in rows:
        path = out / f"{r['method']}-seed{r['seed']}" / "metrics.jsonl"
        points = []
        for line in path.read_text().splitlines():
            m = json.loads(line)
            if m.get("test_perplexity") is not None:
                points.append((m["step"], m["test_perplexity"]))
        groups.setdefault(r["method"], []).append(points)
    return groups


def write_report(out: Path, rows: list[dict[str, Any]], methods: list[str], command: str) -> str:
    table = summary_table(rows, methods)
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2))
    curves = training_curves(out, rows)
    if any(any(runs) for runs in curves.values()):
        save_grouped_curves(out / "perplexity.png", curves, "test perplexity (argmax)",
                            "test-subset perplexity during training (one line per seed)")
    text = f"Command: `{command}`\n\n{table}"
    atomic_write_text(out / "summary.md", text)
    return table
