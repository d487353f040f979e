"""The per-run numbers and curves of a study's EdVAE/dVAE runs, as quoted in docs/results/*/README.md:

    python scripts/study_curves.py STUDY_OUT/fashion-mnist

the test-split evaluation of each run (or the step it diverged at), its test-subset curves at steps
500 .. 6,000 (as far as the runs go), the Pearson correlation of EdVAE's perplexity with u = K/S
over training, and at how many evaluations EdVAE's entropy (mean, std over positions) is above
dVAE's of the same seed."""

import argparse
import json
import statistics
import sys
from pathlib import Path

from edvae.checkpoint import read_jsonl
from edvae.progress import METRICS

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("folder", type=Path, help="a study's output folder of one data set (its *-seed* runs)")
root = parser.parse_args().folder
if not root.is_dir():
    print(f"error: no folder {root}", file=sys.stderr)
    sys.exit(2)


def rows_of(run: Path) -> dict[int, dict]:
    """{step: row} of a run's metrics.jsonl."""
    return {r["step"]: r for r in read_jsonl(run / METRICS)}


runs = sorted(p for p in root.glob("*-seed*") if p.is_dir())
print("Per run (test split, 10,000 images; argmax codes):\n")
print("| run | perplexity | used codes | MSE x 1e3 | entropy of pi (mean / std over positions) | u = K/S "
      "| training s |")
print("|---|---|---|---|---|---|---|")
for run in runs:
    if (run / "diverged.json").is_file() and not (run / "eval.json").is_file():
        print(f"| {run.name} | diverged at step {json.loads((run / 'diverged.json').read_text())['step']} |"
              + " - |" * 5)
        continue
    if not (run / "eval.json").is_file():
        continue  # still training
    r = json.loads((run / "eval.json").read_text())
    rows = list(rows_of(run).values())
    u = r.get("uncertainty_mean")
    print(f"| {run.name} | {r['perplexity']:.1f} | {r['used_codes']} | {r['mse'] * 1e3:.2f} | "
          f"{r['entropy_mean']:.2f} / {r['entropy_std']:.2f} | {'-' if u is None else f'{u:.3f}'} | "
          f"{rows[-1]['seconds']:.0f} |")
print()
last = max((max(rows_of(run), default=0) for run in runs), default=0)
steps = [s for s in (500, 1000, 2000, 3000, 4000, 5000, 6000) if s <= last]  # up to the runs' length
for key in ("test_entropy_mean", "test_entropy_std", "test_perplexity", "test_uncertainty"):
    print(f"\n{key}\n| run | " + " | ".join(map(str, steps)) + " |\n|---|" + "---|" * len(steps))
    for run in sorted(p for p in root.glob("*-seed*") if p.is_dir()):
        rows = rows_of(run)
        vals = [rows.get(s, {}).get(key) for s in steps]
        if any(v is not None for v in vals):
            print(f"| {run.name} | " + " | ".join("-" if v is None else f"{v:.3g}" for v in vals) + " |")
print()
for run in sorted(p for p in root.glob("edvae-seed*") if p.is_dir()):
    rows = [r for r in rows_of(run).values() if r.get("test_uncertainty") is not None]
    p = [r["test_perplexity"] for r in rows]
    u = [r["test_uncertainty"] for r in rows]
    if len(p) < 2:
        continue
    print(run.name, "points", len(p), "pearson(perplexity, u) over training",
          round(statistics.correlation(p, u), 3))
# EdVAE above dVAE at every evaluation, per seed?
for seed in (0, 1, 2):
    e, d = root / f"edvae-seed{seed}", root / f"dvae-seed{seed}"
    if not (e / "metrics.jsonl").is_file() or not (d / "metrics.jsonl").is_file():
        continue
    re_, rd = rows_of(e), rows_of(d)
    common = [s for s in re_ if s in rd
              and None not in (re_[s].get("test_entropy_mean"), rd[s].get("test_entropy_mean"))]
    above = sum(re_[s]["test_entropy_mean"] > rd[s]["test_entropy_mean"] for s in common)
    above_std = sum(re_[s]["test_entropy_std"] > rd[s]["test_entropy_std"] for s in common)
    print(f"seed {seed}: EdVAE entropy mean above dVAE at {above}/{len(common)} evaluations, "
          f"std above at {above_std}/{len(common)}")
