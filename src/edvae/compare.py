"""Method x seed grids: train each run (in parallel processes), then one table and one figure.

A thin front of the study engine (bench.py): the grid is a list of runs that the engine validates,
trains and resumes; this module names them and writes the grid's report.

Writes into OUT: one run folder per (method, seed), results.json (every run's evaluation),
summary.md (mean +- std per method) and perplexity.png (test perplexity over training).

A grid entry is a registered method or a variant: a label naming a method plus config overrides
(e.g. `vq-ema+pretrain` = vq-ema with train.pretrain_steps=1000), so that a recipe is one row of the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .bench import RunSpec, run_specs
from .checkpoint import atomic_write_text
from .errors import EdvaeError
from .progress import LiveDisplay
from .quantizers import QUANTIZERS
from .study_report import cell, curves_figure, read_curves, run_result

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


def grid_specs(methods: list[str], seeds: list[int], config: str | None, overrides: list[str],
               variants: dict[str, tuple[str, list[str]]]) -> list[RunSpec]:
    """The grid's runs, seed-major (the methods of one seed run side by side), named ENTRY-seedSEED;
    a variant's own settings come after the shared ones, so they win."""
    unknown = [m for m in methods if m not in QUANTIZERS and m not in variants]
    if unknown:
        raise EdvaeError(f"unknown method or variant {unknown[0]!r} (methods: {', '.join(QUANTIZERS)}; "
                         f"variants: {', '.join(variants) or 'none given'})")
    specs = []
    for seed in seeds:
        for entry in methods:
            method, extra = variants.get(entry, (entry, []))
            specs.append(RunSpec(f"{entry}-seed{seed}", method, seed, config, [*overrides, *extra],
                                 {"entry": entry, "seed": seed}))
    return specs


def run_grid(methods: list[str], seeds: list[int], out: Path, config: str | None,
             overrides: list[str], jobs: int, threads: int,
             variants: dict[str, tuple[str, list[str]]] | None = None,
             display: LiveDisplay | None = None) -> list[dict[str, Any]]:
    """Train the grid on the bench engine (bench.py: validated first, finished runs skipped,
    interrupted ones resumed, `jobs` at once, one live display) and collect its evaluations."""
    specs = grid_specs(methods, seeds, config, overrides, variants or {})
    run_specs(specs, out, jobs, threads, "grid entry", display)
    return collect(out, methods, seeds)


def collect(out: Path, methods: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Every run's row: its method, seed and result (study_report.run_result), method-major."""
    return [{"method": m, "seed": s, **run_result(out / f"{m}-seed{s}")} for m in methods for s in seeds]


def summary_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    head = "| method | runs | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for method in methods:
        rs = [r for r in rows if r["method"] == method]
        cells = [cell(rs, key, scale, d) for key, _, scale, d in COLUMNS]
        lines.append(f"| {method} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, rows: list[dict[str, Any]], methods: list[str], command: str,
                 closing: list[str] | None = None) -> str:
    """results.json, summary.md (the command, the table, then the `closing` sentences) and
    perplexity.png; the table."""
    table = summary_table(rows, methods)
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2))
    runs = [{"entry": r["method"], "curves": read_curves(out / f"{r['method']}-seed{r['seed']}")}
            for r in rows]
    curves_figure(out / "perplexity.png", runs, ["test_perplexity"],
                  "test-subset perplexity (argmax) during training, one line per seed")
    text = f"Command: `{command}`\n\n{table}" + ("\n" + "\n\n".join(closing) + "\n" if closing else "")
    atomic_write_text(out / "summary.md", text)
    return table
