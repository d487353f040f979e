"""`edvae bench STUDY.yaml`: a study file at a scale, through the engine (bench.py) to its report.

Load and check the study (study_file.py), build and validate every run's config before any starts,
train them and run the generation stages where the study has them (study_generation.py), then
write results.json, tables.md and the figures (study_report.py). Started again after any
interruption it skips what finished and resumes what did not.
"""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase
from pathlib import Path

from .bench import RunSpec, Task, run_specs, settings_differ, train_task, validate_runs
from .checkpoint import divergence
from .config import RunConfig
from .errors import EdvaeError
from .progress import LiveDisplay, last_step
from .study_file import Plan, load_study, plan
from .study_generation import generation_tasks, stage_files
from .study_report import collect_rows, write_report


def study_plan(path: str | Path, scale: str, extra_set: list[str] | None = None,
               only: list[str] | None = None) -> Plan:
    """The study's runs at the scale, every config validated (EdvaeError naming the entry); with
    `only`, just the runs whose names match one of its patterns (`fashion-mnist/edvae-*`), so that
    a study can be split over machines or sessions into one output folder."""
    p = plan(load_study(path), scale, extra_set)  # every run's config built, the names unique
    for pattern in only or []:
        if not any(fnmatchcase(r.name, pattern) for r in p.runs):
            raise EdvaeError(f"--only {pattern}: no run of {p.study.name} at {scale} has that name "
                             "(edvae bench --list shows them)")
    if only:
        p = dataclasses.replace(p, runs=[r for r in p.runs if any(fnmatchcase(r.name, o) for o in only)])
    return p


def run_state(task: Task) -> str:
    """Where a training task stands in its folder, by the runner's own rules (bench.Task): finished,
    diverged, stopped part-way (and whether it resumes), or not started."""
    if task.done.is_file():
        return "finished"
    if task.diverged():
        return f"diverged at step {divergence(task.folder)['step']}"
    if not task.folder.is_dir():
        return "not started"
    resumes = "a checkpoint to resume from" if task.checkpoint.is_file() else "no checkpoint: restarts"
    return f"at step {last_step(task.folder):,} of {task.steps:,} ({resumes})"


def generation_state(run_dir: Path) -> str:
    """Which of a run's generation stages have their results: prior, samples, FD, FID."""
    done = [name for name, path in stage_files(run_dir).items() if path.is_file()]
    return f"generation done: {', '.join(done)}" if done else "no generation stage done"


def folder_state(spec: RunSpec, config: RunConfig, run_dir: Path, generation: bool) -> str:
    """What the bench finds for one run in its folder (`edvae bench --list`)."""
    differ = settings_differ(spec, config, run_dir)
    if differ:
        return f"holds a run with other settings ({', '.join(differ[:3])}): the bench stops on it"
    state = run_state(train_task(spec, run_dir, config.train.steps, threads=1))
    return state + ("; " + generation_state(run_dir) if generation else "")


def run_lines(p: Plan, out: Path) -> list[str]:
    """One line per run: its folder and its settings (`edvae bench --list`), and where the output
    folder `out` exists, where each run stands there."""
    configs = validate_runs(p.runs)
    here = out.is_dir()
    lines = [f"{p.study.name} at scale {p.scale}: {len(p.runs)} run{'s' * (len(p.runs) != 1)}"
             + (", then a prior, samples and FD per run" if p.generation else "")
             + (f"; in {out}:" if here else "")]
    for spec in p.runs:
        cfg = configs[spec.name]
        state = f": {folder_state(spec, cfg, out / spec.name, p.generation)}" if here else ""
        lines.append(f"  {spec.name}  ({cfg.train.steps} steps, batch {cfg.train.batch_size}, "
                     f"width {cfg.model.width}; {spec.config}){state}")
    return lines


def run_bench(path: str | Path, scale: str, out: Path, jobs: int, threads: int, command: str,
              extra_set: list[str] | None = None, inception_weights: str | None = None,
              progress: bool = True, only: list[str] | None = None) -> str:
    """Run (or finish) the study, or its runs matching `only`, in `out`; the Markdown of its tables
    (of those runs)."""
    p = study_plan(path, scale, extra_set, only)

    def stages(specs, configs):
        return generation_tasks(specs, configs, out, p.generation, threads, inception_weights)

    run_specs(p.runs, out, jobs, threads, "study entry", LiveDisplay(enabled=progress), extra_tasks=stages)
    return write_report(out, p, collect_rows(p.runs, out), command)
