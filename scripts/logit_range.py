"""How far EdVAE's logits reach, per run: what the clamp of Table E.5 cuts.

    python scripts/logit_range.py RUN_DIR [RUN_DIR ...]

For the first 1,024 test images of each run (its own data split), the encoder's logits z_e (K per
position, float32, the model as trained): the largest logit per position, as its median, 99th
percentile and maximum over positions, and the share of positions whose largest logit reaches
10, 15, 20, 25 and 30. The evidence is exp(min(z, clamp)), so a clamp binds only at positions whose
logits reach it."""

import argparse
import sys

import torch

from edvae.data import to_model_input
from edvae.errors import EdvaeError
from edvae.model import DiscreteVAE
from edvae.run_folder import load_split, run_config

LEVELS = (10, 15, 20, 25, 30)

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="EdVAE run folders (edvae train --out)")
args = parser.parse_args()
try:  # every run folder read before the first row
    runs = [(run, run_config(run)) for run in args.runs]
except EdvaeError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
print("| run | clamp | largest logit per position: median / 99% / max | "
      + " | ".join(f">= {v}" for v in LEVELS) + " |")
print("|---|---|---|" + "---|" * len(LEVELS))
torch.set_grad_enabled(False)
for run, cfg in runs:
    model = DiscreteVAE.load(run)
    test = load_split(cfg, "test")
    x = to_model_input(test.batch(torch.arange(min(1024, len(test)))))
    top = torch.cat([model.encoder(part).float().amax(1).flatten() for part in x.split(128)])
    q = torch.quantile(top, torch.tensor([0.5, 0.99]))
    shares = " | ".join(f"{float((top >= v).double().mean()):.3f}" for v in LEVELS)
    clamp = cfg.model.options.get("clamp_max", 20.0)
    name = run.rstrip("/").split("/")[-1]
    print(f"| {name} | {clamp:g} | {q[0]:.1f} / {q[1]:.1f} / {top.max():.1f} | {shares} |")
