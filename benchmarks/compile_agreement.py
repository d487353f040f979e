"""How far a compiled training run lands from the eager one, against how far eager runs of other seeds
land from each other: the scale that tests/test_compile.py's tolerances are set from.

Each method trains the opt-in test's setting (Fashion-MNIST, width 16, batch 32, K = 512, 300 steps,
test subset of 1,000 images) eagerly with seeds 0, 1, 2 and compiled (train.compile, inductor) with
seed 0; the test MSE and perplexity of each run, the eager seeds' spread (max - min) and the
compiled run's distance from the eager seed-0 run are written to OUT (JSON).

    python benchmarks/compile_agreement.py --methods edvae dvae
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_compile import fashion_config  # noqa: E402

from edvae.train import train  # noqa: E402


def one(method: str, compile: bool, seed: int, steps: int, folder: Path) -> dict:
    cfg = fashion_config(compile, method, steps)
    cfg.train.seed = seed
    began = time.perf_counter()
    result = train(cfg, folder / f"{method}-{'compiled' if compile else 'eager'}-{seed}", progress=False)
    return {"method": method, "compile": compile, "seed": seed, "mse": result["mse"],
            "perplexity": result["perplexity"], "seconds": time.perf_counter() - began}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["edvae", "dvae"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default="benchmarks/results/compile_agreement.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = {"command": "python benchmarks/compile_agreement.py " + " ".join(sys.argv[1:]),
           "torch": torch.__version__, "load_before": os.getloadavg(), "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in a.methods:
            runs = [one(method, False, seed, a.steps, Path(tmp)) for seed in (0, 1, 2)]
            runs.append(one(method, True, 0, a.steps, Path(tmp)))
            eager, compiled = runs[:3], runs[3]
            summary = {"runs": runs}
            for key in ("mse", "perplexity"):
                values = [r[key] for r in eager]
                summary[f"{key}_seed_spread_relative"] = (max(values) - min(values)) / eager[0][key]
                summary[f"{key}_compiled_gap_relative"] = abs(compiled[key] - eager[0][key]) / eager[0][key]
            out["methods"][method] = summary
            print(json.dumps({k: v for k, v in summary.items() if k != "runs"}), file=sys.stderr)
    out["load_after"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
