"""Copy the record of every finished run of a study's output folder into DEST:

    python scripts/study_records.py STUDY_OUT docs/results/STUDY-cpu-small/runs

A record is a run's config.json, eval.json and metrics.jsonl (diverged.json for a run that
diverged), and for a generation study (Table 3) the results of its stages that finished: the
prior's config, metrics and evaluation, the samples' settings and grid, the FD/FID results; with
the study's shared FD classifier (fd-classifier-DATASET.safetensors), so that later runs are
measured in the same features. Not the weights, checkpoints, code caches or sample images. Copied
back into an output folder (`cp -r DEST/. STUDY_OUT/`), the records are finished runs and stages
to `edvae bench`, which checks each stored config against its plan and runs only what has no
record; so a study can be finished over several sessions or machines. A run whose record lacks a
stage cannot run that stage from the record (it needs the run's model)."""

import argparse
import shutil
import sys
from pathlib import Path

from edvae.bench import EVAL_FILE
from edvae.checkpoint import CONFIG_FILE, DIVERGED_FILE
from edvae.progress import METRICS
from edvae.study_generation import stage_files

RECORD = (CONFIG_FILE, EVAL_FILE, METRICS, DIVERGED_FILE)


def record_files(run: Path) -> list[Path]:
    """The files of a run folder that its record keeps (those that exist)."""
    stages = stage_files(run)
    prior = stages["prior"].parent
    files = [run / name for name in RECORD] + [prior / CONFIG_FILE, prior / METRICS, stages["prior"],
                                              stages["samples"], stages["samples"].parent / "samples.png",
                                              stages["FD"], stages["FID"]]
    return [f for f in files if f.is_file()]


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
    for file in record_files(run):
        target = dest / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    copied.append(str(run.relative_to(source)))
for classifier in sorted(source.glob("fd-classifier-*.safetensors")):  # the study's shared FD features
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(classifier, dest / classifier.name)
print(f"{len(copied)} finished runs recorded in {dest}: {', '.join(copied) or 'none'}")
