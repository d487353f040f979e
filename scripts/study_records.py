"""Copy the record of every finished run of a study's output folder into DEST:

    python scripts/study_records.py STUDY_OUT docs/results/STUDY-cpu-small/runs

A record is a run's config.json, eval.json and metrics.jsonl (diverged.json for a run that
diverged), not its weights or checkpoints: what the study's tables, results.json and
scripts/study_curves.py read. Copied back into an output folder (`cp -r DEST/. STUDY_OUT/`), the
records are finished runs to `edvae bench`, which checks each stored config against its plan and
trains only the runs that have no record; so a study can be finished over several sessions or
machines. They do not serve generation (Table 3), which needs each run's model."""

import argparse
import shutil
import sys
from pathlib import Path

from edvae.bench import EVAL_FILE
from edvae.checkpoint import CONFIG_FILE, DIVERGED_FILE
from edvae.progress import METRICS

RECORD = (CONFIG_FILE, EVAL_FILE, METRICS, DIVERGED_FILE)

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("source", type=Path, help="the study's output folder (edvae bench --out)")
parser.add_argument("dest", type=Path, help="where the records go, e.g. docs/results/STUDY-cpu-small/runs")
args = parser.parse_args()
source, dest = args.source, args.dest
if not source.is_dir():
    print(f"error: no study folder {source}", file=sys.stderr)
    sys.exit(2)
copied = []
for config in sorted(source.rglob(CONFIG_FILE)):
    run = config.parent
    if not ((run / EVAL_FILE).is_file() or (run / DIVERGED_FILE).is_file()):
        continue  # unfinished: it has nothing to report yet (the bench's rule, bench.Task.finished)
    target = dest / run.relative_to(source)
    target.mkdir(parents=True, exist_ok=True)
    for name in RECORD:
        if (run / name).is_file():
            shutil.copy2(run / name, target / name)
    copied.append(str(run.relative_to(source)))
print(f"{len(copied)} finished runs recorded in {dest}: {', '.join(copied) or 'none'}")
