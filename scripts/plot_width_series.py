"""Argmax test perplexity against network width, one line per method, from `edvae compare` results.

    python scripts/plot_width_series.py --out docs/results/beta-and-width/width-series.png \
        16=docs/results/beta-and-width/fmnist-bf16-w16/results.json \
        32=docs/results/beta-and-width/fmnist-bf16-w32/results.json \
        64=docs/results/beta-and-width/fmnist-bf16-w64-7seeds/results.json

Each WIDTH=results.json names one compare run; every seed is drawn as a dot and the mean as a line.
It also prints a Markdown table: per width and method the mean +- population std of the argmax
perplexity, the number of seeds, and the ratio of the first method's mean to the second's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from edvae.study_report import mean_std


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_series(specs: list[str], methods: list[str]) -> dict[int, dict[str, list[float]]]:
    series: dict[int, dict[str, list[float]]] = {}
    for spec in specs:
        width, sep, path = spec.partition("=")
        if not sep or not width.isdigit():
            fail(f"expected WIDTH=results.json, got {spec!r}")
        try:
            rows = json.loads(Path(path).read_text())
            per_method = {m: [float(r["perplexity"]) for r in rows if r["method"] == m] for m in methods}
        except (OSError, ValueError, KeyError, TypeError) as err:
            fail(f"{path}: not a readable compare results.json ({err})")
        for m, values in per_method.items():
            if not values:
                fail(f"{path}: no runs of method {m!r}")
        series[int(width)] = per_method
    return dict(sorted(series.items()))


def table(series: dict[int, dict[str, list[float]]], methods: list[str]) -> str:
    lines = ["| width | " + " | ".join(f"{m} (seeds, mean +- std)" for m in methods)
             + f" | ratio {methods[0]} / {methods[1]} |", "|---" * (len(methods) + 2) + "|"]
    for width, per_method in series.items():
        cells = [f"{len(v)}: {mean_std(v)}" for v in per_method.values()]
        ratio = statistics.fmean(per_method[methods[0]]) / statistics.fmean(per_method[methods[1]])
        lines.append(f"| {width} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="WIDTH=results.json")
    parser.add_argument("--methods", nargs=2, default=["edvae", "dvae"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    series = load_series(args.runs, args.methods)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    widths = list(series)
    for method, colour in zip(args.methods, ("tab:red", "tab:blue"), strict=True):
        for w in widths:
            values = series[w][method]
            ax.scatter([w] * len(values), values, color=colour, alpha=0.5, s=14)
        ax.plot(widths, [statistics.fmean(series[w][method]) for w in widths], color=colour,
                marker="o", label=f"{method} (mean)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("network width n")
    ax.set_ylabel("test perplexity (argmax codes)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(table(series, args.methods))


if __name__ == "__main__":
    main()
