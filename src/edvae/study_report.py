"""A study's report: results.json (every run's evaluation, labels and curves), its tables in the
paper's layout (mean +- population std over seeds) as Markdown, and its figures as PNG.

A table names a metric (a key of eval.json, or of the generation stages: bits_per_code,
fd_edvae_classifier, fid) and what its rows and columns are: `method` (the entry), `dataset`, or a
swept config key; `sweep: i` keeps the runs of one sweep. Runs that differ in anything else (a
data set, another swept key) get a table each. Figures: `curves` (metrics over training, from each
run's metrics.jsonl, one line per seed), `sweep` (a metric against a swept key, mean +- std) and
`maps` (per-position maps over training, e.g. the entropy of pi of one test image: the paper's
Figure 2b; one row per entry, its first run, one colour scale).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .bench import EVAL_FILE
from .checkpoint import atomic_write_text, divergence, read_jsonl
from .engine.metrics_log import METRICS_JSONL
from .errors import EdvaeError
from .plots import _pyplot, save_figure
from .study_generation import stage_files

CURVE_KEYS = ("test_perplexity", "test_mse", "test_entropy_mean", "test_entropy_std", "test_uncertainty",
              "batch_perplexity", "loss", "mse", "kl", "lr", "temperature", "beta")
MAP_KEYS = ("test_entropy_map",)  # logged as (h, w) lists
NAMES = {"perplexity": "perplexity", "mse": "MSE", "used_codes": "used codes",
         "entropy_mean": "entropy of pi", "uncertainty_mean": "uncertainty u = K/S",
         "batch_perplexity": "batch perplexity", "fid": "FID",
         "fd_edvae_classifier": "FD_edvae-classifier (not FID)", "bits_per_code": "prior bits/code"}


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """Mean +- population std of the values that are not None, scaled; one value alone (a spread
    of one run would read as 0), "-" when there are none."""
    values = [v * scale for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.fmean(values):.{digits}f} +- {statistics.pstdev(values):.{digits}f}"


def cell(runs: list[dict[str, Any]], metric: str, scale: float = 1.0, digits: int = 1) -> str:
    """mean_std of the runs' metric, followed by how many of them diverged (they have no value)."""
    diverged = sum(r.get("diverged_at") is not None for r in runs)
    if diverged and diverged == len(runs):
        return f"diverged ({diverged} of {diverged})"
    text = mean_std([r.get(metric) for r in runs], scale, digits)
    return f"{text} ({diverged} of {len(runs)} diverged)" if diverged else text


def read_curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """{key: [[step, value], ...]} for the CURVE_KEYS (numbers) and MAP_KEYS (lists) a run's
    metrics.jsonl holds."""
    curves: dict[str, list[list[float]]] = {}
    for row in read_jsonl(run_dir / METRICS_JSONL):
        for keys, kind in ((CURVE_KEYS, (int, float)), (MAP_KEYS, list)):
            for key in keys:
                if isinstance(row.get(key), kind):
                    curves.setdefault(key, []).append([row["step"], row[key]])
    return curves


def run_result(run: Path) -> dict[str, Any]:
    """A finished run's evaluation (eval.json less its code counts), or {"diverged_at": STEP} for a
    training that diverged (it finished without an evaluation); an EdvaeError when it has neither."""
    if (run / EVAL_FILE).is_file():
        return {k: v for k, v in json.loads((run / EVAL_FILE).read_text()).items() if k != "code_counts"}
    if (diverged := divergence(run)) is None:
        raise EdvaeError(f"missing result {run / EVAL_FILE}")
    return {"diverged_at": diverged["step"]}


def collect_rows(specs, out: Path) -> list[dict[str, Any]]:
    """One row per finished run: its labels, name, evaluation, generation results and curves."""
    rows = []
    for spec in specs:
        run = out / spec.name
        result = run_result(run)
        stages = stage_files(run)
        if stages["prior"].is_file():
            result["bits_per_code"] = json.loads(stages["prior"].read_text()).get("bits_per_code")
        for file in (stages["FD"], stages["FID"]):  # `edvae fid -o` {"metric", "value"}: never mixed
            if file.is_file():
                found = json.loads(file.read_text())
                result[found["metric"]] = found["value"]
        rows.append({"name": spec.name, **spec.labels, **result, "curves": read_curves(run)})
    return rows


def key_of(row: dict[str, Any], key: str) -> Any:
    if key in ("method", "entry", "dataset"):
        return row["entry" if key == "method" else key]
    return row.get("axes", {}).get(key)


def _order(values) -> list[Any]:
    values = list(dict.fromkeys(values))
    return sorted(values) if all(isinstance(v, (int, float)) for v in values) else values


def table(rows: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    """Markdown table(s) of spec['metric'], mean +- std over seeds per (row, column) cell."""
    metric, rk, ck = spec["metric"], spec.get("rows", "method"), spec.get("columns", "dataset")
    scale, digits = float(spec.get("scale", 1.0)), int(spec.get("digits", 2 if spec.get("scale") else 1))
    if "sweep" in spec:
        rows = [r for r in rows if spec["sweep"] in r.get("sweeps", [])]
    others = ["dataset"] * (rk != "dataset" and ck != "dataset") + sorted(
        {k for r in rows for k in r.get("axes", {}) if k not in (rk, ck)})
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(key_of(r, k) for k in others), []).append(r)
    varying = [i for i, k in enumerate(others) if len({g[i] for g in groups}) > 1]
    name = NAMES.get(metric, metric) + (f" x {scale:.0e}".replace("e+0", "e") if scale != 1 else "")
    out = []
    for group, members in groups.items():
        title = spec.get("title", name)
        if varying:
            title += " (" + ", ".join(f"{others[i]} {group[i]}" for i in varying) + ")"
        cols = _order(key_of(r, ck) for r in members)
        lines = [f"**{title}**", "", f"| {rk} | " + " | ".join(str(c) for c in cols) + " |",
                 "|" + "---|" * (len(cols) + 1)]
        for rv in _order(key_of(r, rk) for r in members):
            cells = [cell([r for r in members if key_of(r, rk) == rv and key_of(r, ck) == cv], metric,
                          scale, digits) for cv in cols]
            lines.append(f"| {rv} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def curves_figure(path: Path, rows: list[dict[str, Any]], metrics: list[str], title: str) -> bool:
    """One panel per metric, one colour per entry, one line per run; False when nothing was logged."""
    if not any(r["curves"].get(m) for r in rows for m in metrics):
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 3 * len(metrics)), sharex=True, squeeze=False)
    entries = list(dict.fromkeys(r["entry"] for r in rows))
    cmap = plt.get_cmap("tab10" if len(entries) <= 10 else "tab20")
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        for r in rows:
            points = r["curves"].get(metric)
            if points:
                i = entries.index(r["entry"])
                first = r is next(x for x in rows if x["entry"] == r["entry"])
                ax.plot(*zip(*points, strict=True), color=cmap(i % cmap.N), alpha=0.8,
                        label=r["entry"] if first else None)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(title)
    save_figure(fig, path)
    return True


def sweep_figure(path: Path, rows: list[dict[str, Any]], metric: str, axis: str, title: str) -> bool:
    """The metric's mean (error bars: std over seeds) against a swept key, one line per entry; runs
    that diverged are crosses on the lower edge."""
    rows = [r for r in rows if key_of(r, axis) is not None]
    diverged = [key_of(r, axis) for r in rows if r.get("diverged_at") is not None]
    rows = [r for r in rows if r.get(metric) is not None]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for entry in dict.fromkeys(r["entry"] for r in rows):
        xs = _order(key_of(r, axis) for r in rows if r["entry"] == entry)
        vals = [[r[metric] for r in rows if r["entry"] == entry and key_of(r, axis) == x] for x in xs]
        ax.errorbar(xs, [statistics.fmean(v) for v in vals], yerr=[statistics.pstdev(v) for v in vals],
                    marker="o", capsize=3, label=entry)
    if diverged:
        ax.plot(diverged, [ax.get_ylim()[0]] * len(diverged), "x", color="red", clip_on=False,
                label="diverged")
    xs = [*(key_of(r, axis) for r in rows), *diverged]
    if all(isinstance(x, (int, float)) and x > 0 for x in xs) and max(xs) >= 10 * min(xs):
        ax.set_xscale("log")  # a sweep over decades (K, D, beta); a clamp of 10 .. 30 stays linear
    ax.set_xlabel(axis)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return True


def maps_figure(path: Path, rows: list[dict[str, Any]], metric: str, title: str, columns: int = 6) -> bool:
    """Each entry's first run: its maps at up to `columns` evenly spaced logged steps, one colour
    scale over all; False when no run logged the metric."""
    series = {}
    for r in rows:
        if r["curves"].get(metric) and r["entry"] not in series:
            series[r["entry"]] = r["curves"][metric]
    if not series:
        return False
    plt = _pyplot()
    picked = {e: [s[round(i * (len(s) - 1) / max(columns - 1, 1))] for i in range(min(columns, len(s)))]
              for e, s in series.items()}
    vmax = max(max(max(line) for line in m) for maps in picked.values() for _, m in maps)
    width = max(len(m) for m in picked.values())
    fig, axes = plt.subplots(len(picked), width, figsize=(1.8 * width, 1.9 * len(picked)), squeeze=False)
    for axes_row, (entry, maps) in zip(axes, picked.items(), strict=True):
        for j, ax in enumerate(axes_row):
            ax.axis("off")
            if j < len(maps):
                image = ax.imshow(maps[j][1], vmin=0, vmax=vmax, cmap="viridis")
                ax.set_title(f"{entry}, step {maps[j][0]}", fontsize=7)
    fig.colorbar(image, ax=list(axes.flat), shrink=0.8, label=metric)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, tight=False)
    return True


def figures(out: Path, rows: list[dict[str, Any]], specs: list[dict[str, Any]]) -> list[str]:
    """Draw the study's figures, one per spec and data set; the file names written."""
    written = []
    for i, spec in enumerate(specs):
        for dataset in dict.fromkeys(r["dataset"] for r in rows):
            members = [r for r in rows if r["dataset"] == dataset and
                       ("sweep" not in spec or spec["sweep"] in r.get("sweeps", []))]
            name = f"{spec.get('name', f'figure{i + 1}')}-{dataset}.png"
            title = f"{spec.get('title', '')} ({dataset})".strip()
            kind = spec.get("kind", "curves")
            if kind == "curves":
                ok = curves_figure(out / name, members, list(spec.get("metrics", ["test_perplexity"])), title)
            elif kind == "maps":
                ok = maps_figure(out / name, members, spec.get("metric", MAP_KEYS[0]), title)
            else:
                ok = sweep_figure(out / name, members, spec["metric"], spec["axis"], title)
            if ok:
                written.append(name)
    return written


def write_report(out: Path, plan, rows: list[dict[str, Any]], command: str) -> str:
    """results.json, tables.md and the figures in `out`; the tables' Markdown."""
    study = plan.study
    meta = {k: v for k, v in study.meta.items() if v is not None}
    atomic_write_text(out / "results.json", json.dumps(
        {**meta, "scale": plan.scale, "command": command, "runs": rows}, indent=1))
    text = "\n".join(table(rows, t) for t in study.tables)
    drawn = figures(out, rows, study.figures)
    head = [f"# {meta.get('title', study.name)}", "",
            f"Paper: {meta.get('paper', '-')}; scale: {plan.scale}; {len(rows)} runs. A cell is the mean +- "
            "population std over its seeds, or one run's value where it shows no +-.", "",
            f"Command: `{command}`", ""]
    tail = ["", "Figures: " + (", ".join(drawn) if drawn else "none (no logged values to draw)"), ""]
    atomic_write_text(out / "tables.md", "\n".join(head) + text + "\n".join(tail))
    return text
