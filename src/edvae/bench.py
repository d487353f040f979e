"""The study runner's engine: the one grid engine under `edvae bench`, `edvae compare` and `edvae demo`.

A study is a list of runs (`RunSpec`: a method, a seed, a config file and overrides). The engine
- builds and validates every run's config in this process before any run starts (a bad one is an
  EdvaeError naming its entry: exit 2, nothing written);
- turns each run into tasks, child processes of `edvae`: `train`, and for generation studies
  (Table 3) `prior train`, `sample` and `fid`, in waves (every training first, then every prior...);
- skips a finished task (its result file exists, or its record of a diverged training: such a run
  is finished, reported as diverged, and the tasks that need it are skipped), resumes an
  interrupted one from its checkpoint (`--resume`: training is a function of (seed, step), so the
  result is the one an uninterrupted run gives) and restarts one killed before its first
  checkpoint from an empty folder;
- runs `jobs` tasks at once (several may share one GPU) with `threads` CPU threads each;
- shows one live progress line for the whole study (progress.py), read from the children's
  metrics.jsonl.
Killing the runner and its children at any moment (SIGKILL included) loses at most the steps since
each run's last checkpoint: start the same command again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import CONFIG_FILE, DIVERGED_FILE, STATE_FILE, divergence
from .config import RunConfig, config_data, from_dict, run_settings, with_stored_defaults
from .engine.runtime import pick_device, slow_bf16_warning
from .errors import EdvaeError
from .progress import LiveDisplay, Snapshot, last_step

EVAL_FILE = "eval.json"
# where a run runs, and what the trainer reads from its data (channels, size): not what it computes
NOT_SETTINGS = {"train.device", "train.threads", "model.channels", "model.image_size"}
POLL_SECONDS = 0.5  # how often the runner looks at its children and redraws the display


@dataclass
class RunSpec:
    name: str  # the run's folder below the study's output folder, e.g. "cifar10/edvae-seed42"
    method: str
    seed: int
    config: str | None  # YAML file, or None for the defaults
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE after the method and seed, in order
    labels: dict[str, Any] = field(default_factory=dict)  # what the reports group by


def warn_slow_bf16(configs) -> None:
    """Once per grid, on stderr: the first CPU run under bf16 autocast on a CPU that emulates it."""
    for cfg in configs:
        if cfg.train.device in ("auto", "cpu"):
            warning = slow_bf16_warning(pick_device(cfg.train.device), cfg.train.precision)
            if warning:
                print(warning, file=sys.stderr)
                return


def config_of(spec: RunSpec) -> RunConfig:
    return from_dict(config_data(spec.config, {"model.method": spec.method, "train.seed": spec.seed},
                                 spec.overrides))


def validate_runs(specs: list[RunSpec], what: str = "study entry") -> dict[str, RunConfig]:
    """Every run's config built and validated, before any run starts; {name: config}."""
    configs: dict[str, RunConfig] = {}
    for spec in specs:
        if spec.name in configs:
            raise EdvaeError(f"{what} {spec.name}: named twice")
        try:
            configs[spec.name] = config_of(spec)
        except EdvaeError as exc:
            raise EdvaeError(f"{what} {spec.name}: {exc}") from None
    return configs


def settings_differ(spec: RunSpec, config: RunConfig, run_dir: Path, what: str = "study entry") -> list[str]:
    """The settings in which the run stored in `run_dir` differs from `config` (`key (stored there,
    planned)`), [] when they agree or nothing is stored; an unreadable config is an EdvaeError."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return []
    try:
        stored = run_settings(from_dict(with_stored_defaults(json.loads(path.read_text()))))
    except (ValueError, EdvaeError) as exc:
        raise EdvaeError(f"{what} {spec.name}: {path} is not a run config ({exc})") from None
    planned = run_settings(config)
    return [f"{k} ({stored.get(k)!r} there, {planned.get(k)!r} planned)"
            for k in sorted(set(stored) | set(planned))
            if k not in NOT_SETTINGS and stored.get(k) != planned.get(k)]


def check_existing(specs: list[RunSpec], configs: dict[str, RunConfig], out: Path,
                   what: str = "study entry") -> None:
    """A run folder already in `out` (finished, or to resume) must hold the run planned for it: one
    with other settings is an error naming the keys, so a finished run is never reused by mistake."""
    for spec in specs:
        differ = settings_differ(spec, configs[spec.name], out / spec.name, what)
        if differ:
            raise EdvaeError(f"{what} {spec.name}: {out / spec.name} holds a run with other settings: "
                             f"{', '.join(differ[:3])}; move it away or pick another --out")


@dataclass
class Task:
    """One child process `edvae ARGV`; finished when `done` (its result) or `ended` exists."""

    name: str
    argv: list[str]
    done: Path
    log: Path
    folder: Path  # where its metrics.jsonl is written (the progress display reads it)
    steps: int = 0  # optimizer steps it logs (0: none counted)
    checkpoint: Path | None = None  # exists: resume with --resume
    clear: Path | None = None  # emptied before a fresh start (a task killed before its checkpoint)
    wave: int = 0  # every task of a wave finishes before the next wave starts
    after: str | None = None  # the task it needs (not started when that one failed)
    alone: bool = False  # runs with no other task of its wave (it may write a file the others read)
    ended: Path | None = None  # exists: it finished without its result (a diverged training)

    def diverged(self) -> bool:
        return self.ended is not None and self.ended.is_file() and not self.done.is_file()

    def finished(self) -> bool:
        return self.done.is_file() or self.diverged()

    def command(self) -> list[str] | None:
        """The arguments to run now, None when it has finished; clears a fresh start's folder."""
        if self.finished():
            return None
        if self.checkpoint is not None and self.checkpoint.is_file():
            return [*self.argv, "--resume"]
        if self.clear is not None and self.clear.exists():
            shutil.rmtree(self.clear)
        return list(self.argv)


def train_task(spec: RunSpec, run_dir: Path, steps: int, threads: int) -> Task:
    argv = ["train", "--method", spec.method, "--seed", str(spec.seed), "--out", str(run_dir),
            "--no-progress", "--set", f"train.threads={threads}"]
    if spec.config:
        argv += ["--config", str(spec.config)]
    for o in spec.overrides:
        argv += ["--set", o]
    return Task(spec.name, argv, run_dir / EVAL_FILE, run_dir.parent / f"{run_dir.name}.log", run_dir,
                steps, checkpoint=run_dir / STATE_FILE, clear=run_dir, ended=run_dir / DIVERGED_FILE)


class Runner:
    """Runs tasks wave by wave, `jobs` at a time, with one live display over all of them."""

    def __init__(self, tasks: list[Task], jobs: int, threads: int, display: LiveDisplay | None = None):
        if jobs < 1:
            raise EdvaeError(f"--jobs must be at least 1, got {jobs}")
        self.tasks, self.jobs = tasks, jobs
        self.display = display or LiveDisplay(enabled=False)
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.failed: list[str] = []  # tasks that ended in an error
        self.skipped: set[str] = set()  # diverged trainings and the tasks that need them
        self.steps_seen = {t.name: (t.steps if t.finished() else min(last_step(t.folder), t.steps))
                           for t in tasks if t.steps}

    def snapshot(self, running: list[tuple[Task, subprocess.Popen]]) -> Snapshot:
        for task, _ in running:
            if task.steps:
                self.steps_seen[task.name] = min(last_step(task.folder), task.steps)
        done = sum(t.finished() or t.name in self.skipped for t in self.tasks)
        # the steps of tasks that failed or were skipped will never run: not in the ETA
        gone = self.skipped | set(self.failed)
        counted = [t for t in self.tasks if t.steps and t.name not in gone]
        return Snapshot(done, len(self.tasks), len(running), sum(self.steps_seen[t.name] for t in counted),
                        sum(t.steps for t in counted), len(self.failed))

    def run(self) -> list[str]:
        """Every wave in order; the names of the tasks that failed."""
        for wave in sorted({t.wave for t in self.tasks}):
            self._wave([t for t in self.tasks if t.wave == wave])
        self.display.show(self.snapshot([]), force=True)
        self.display.close()
        return self.failed

    def _wave(self, tasks: list[Task]) -> None:
        # a task that needs a failed one fails; one that needs a diverged (or skipped) one is skipped
        self.skipped |= {t.name for t in self.tasks if t.diverged()}
        self.failed += [t.name for t in tasks if t.after in self.failed]
        self.skipped |= {t.name for t in tasks if t.after in self.skipped}
        pending = [(t, cmd) for t in tasks if t.name not in self.skipped and t.name not in self.failed
                   and (cmd := t.command()) is not None]
        running: list[tuple[Task, subprocess.Popen]] = []
        while pending or running:
            while pending and len(running) < self.jobs and not any(t.alone for t, _ in running):
                if pending[0][0].alone and running:
                    break
                task, cmd = pending.pop(0)
                running.append((task, self._start(task, cmd)))
            self.display.show(self.snapshot(running))
            time.sleep(POLL_SECONDS)
            for task, proc in [r for r in running if r[1].poll() is not None]:
                running.remove((task, proc))
                if task.diverged():
                    self.display.note(f"diverged {task.name}: {divergence(task.folder)['message']}")
                elif proc.returncode != 0 or not task.done.is_file():
                    self.failed.append(task.name)
                if task.steps and task.finished():
                    self.steps_seen[task.name] = task.steps
                self.display.note(f"done  {task.name} (exit {proc.returncode})")
                self.display.show(self.snapshot(running), force=True)

    def _start(self, task: Task, cmd: list[str]) -> subprocess.Popen:
        task.log.parent.mkdir(parents=True, exist_ok=True)
        self.display.note(f"start {task.name}")
        with open(task.log, "a") as log:  # the child keeps its own handle
            return subprocess.Popen([sys.executable, "-m", "edvae", *cmd], stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env)


def run_specs(specs: list[RunSpec], out: Path, jobs: int, threads: int, what: str = "study entry",
              display: LiveDisplay | None = None, extra_tasks=None) -> dict[str, RunConfig]:
    """Validate every run, then train (and run `extra_tasks(specs, configs)`'s later stages); raises
    naming the failed runs. {name: config}."""
    configs = validate_runs(specs, what)
    check_existing(specs, configs, out, what)
    warn_slow_bf16(configs.values())
    out.mkdir(parents=True, exist_ok=True)
    tasks = [train_task(s, out / s.name, configs[s.name].train.steps, threads) for s in specs]
    if extra_tasks is not None:
        tasks += extra_tasks(specs, configs)
    failed = Runner(tasks, jobs, threads, display).run()
    if failed:
        raise EdvaeError(f"runs failed: {', '.join(failed)} (see their .log files in {out})")
    return configs
