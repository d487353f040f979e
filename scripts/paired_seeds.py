"""Seed-paired comparison of two methods in one results.json of `edvae compare` or `edvae bench`
(argmax perplexity).

    python scripts/paired_seeds.py docs/results/beta-and-width/fmnist-bf16-w64-7seeds/results.json
    python scripts/paired_seeds.py docs/results/beta-and-width/fmnist-bf16-w64-7seeds/results.json \
        --seeds 0 1 2 3 4

Prints, over the seeds both methods ran: the per-seed ratio of perplexities, the paired difference
(first method minus second) as mean +- sample std, the paired t statistic with its two-sided p-value,
and the correlation between the first method's evidential uncertainty and its perplexity (when it
reports one).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def two_sided_p(t: float, dof: int) -> float:
    """P(|T| >= |t|) for Student's t with `dof` degrees of freedom. With T = sqrt(dof) tan(theta) the
    density becomes proportional to cos(theta)^(dof - 1) on [0, pi/2), so
    p = int_{theta_t}^{pi/2} cos^(dof-1) / int_0^{pi/2} cos^(dof-1), a smooth integrand (Simpson,
    200,000 intervals); the denominator is sqrt(pi) Gamma(dof/2) / (2 Gamma((dof+1)/2))."""
    if dof < 1:
        raise ValueError("the paired t-test needs at least 2 seeds")
    theta = np.linspace(math.atan(abs(t) / math.sqrt(dof)), math.pi / 2, 200_001)
    f = np.cos(theta) ** (dof - 1)
    integral = (theta[1] - theta[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    whole = math.sqrt(math.pi) / 2 * math.exp(math.lgamma(dof / 2) - math.lgamma((dof + 1) / 2))
    return float(integral / whole)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--methods", nargs=2, default=["edvae", "dvae"])
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds (default: all)")
    args = parser.parse_args()
    try:
        rows = json.loads(args.results.read_text())
        rows = rows["runs"] if isinstance(rows, dict) else rows  # a study's results.json
        by = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in args.methods}
    except (OSError, ValueError, KeyError, TypeError) as err:
        fail(f"{args.results}: not a readable results.json of compare or bench ({err})")
    first, second = args.methods
    seeds = sorted(set(by[first]) & set(by[second]) & set(args.seeds or by[first]))
    if len(seeds) < 3:
        fail(f"{args.results}: {len(seeds)} seeds run by both {first} and {second}; need at least 3")
    a = [by[first][s]["perplexity"] for s in seeds]
    b = [by[second][s]["perplexity"] for s in seeds]
    diff = [x - y for x, y in zip(a, b, strict=True)]
    mean, sd = statistics.fmean(diff), statistics.stdev(diff)
    t = mean / (sd / math.sqrt(len(diff)))
    print(f"seeds {seeds}")
    print("ratio per seed " + ", ".join(f"{x / y:.2f}" for x, y in zip(a, b, strict=True)))
    print(f"ratio of means {statistics.fmean(a) / statistics.fmean(b):.2f}")
    print(f"paired difference {mean:.2f} +- {sd:.2f} (sample std); t = {t:.2f}, "
          f"p = {two_sided_p(t, len(diff) - 1):.3f} (two-sided)")
    u = [by[first][s].get("uncertainty_mean") for s in seeds]
    if all(v is not None for v in u):
        print(f"correlation of {first}'s uncertainty with its perplexity {statistics.correlation(u, a):.2f}")


if __name__ == "__main__":
    main()
