"""One live progress line for a whole study: runs done / total, training steps, rate and ETA.

The steps are read from the runs' own metrics.jsonl (the last row's `step`; a row is written every
`train.log_every` steps), so the display needs nothing from the child processes but their files.
On a terminal the line is redrawn in place; otherwise (a log file, CI) it is printed as a plain
line at most every INTERVAL seconds and whenever a run finishes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .engine.metrics_log import METRICS_JSONL as METRICS

INTERVAL = 30.0  # seconds between two plain status lines (not on a terminal)


def last_step(folder: Path) -> int:
    """The step of the last complete row of folder/metrics.jsonl; 0 when there is none."""
    try:
        with open(folder / METRICS, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(0, end - 4096))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return 0
    for line in reversed(tail.splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a row being written, or the cut-off start of the tail
    return 0


@dataclass
class Snapshot:
    runs_done: int
    runs_total: int
    running: int
    steps_done: int
    steps_total: int
    failed: int = 0


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def status_line(s: Snapshot, rate: float | None, elapsed: float) -> str:
    """`runs 3/12 done, 2 running | steps 41,200/72,000 (57%) | 12.5 steps/s | ETA 41m04s`; the
    ETA is the remaining training steps at the rate measured since the display started."""
    parts = [f"runs {s.runs_done}/{s.runs_total} done, {s.running} running"
             + (f", {s.failed} failed" if s.failed else "")]
    if s.steps_total:
        share = 100.0 * s.steps_done / s.steps_total
        parts.append(f"steps {s.steps_done:,}/{s.steps_total:,} ({share:.0f}%)")
    remaining = s.steps_total - s.steps_done
    if rate and rate > 0:
        parts.append(f"{rate:.1f} steps/s")
        parts.append(f"ETA {duration(remaining / rate)}" if remaining > 0 else "training done")
    else:
        parts.append("ETA -")
    parts.append(f"{duration(elapsed)} elapsed")
    return " | ".join(parts)


class LiveDisplay:
    """The study's status line on stderr; `note` prints a line (to stdout) without breaking it."""

    def __init__(self, enabled: bool = True):
        self.stream = sys.stderr
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self.began = time.monotonic()
        self.first_steps: int | None = None
        self.last_print = -float("inf")
        self.shown = False

    def rate(self, steps_done: int, now: float) -> float | None:
        if self.first_steps is None:
            self.first_steps = steps_done
            return None
        elapsed = now - self.began
        return (steps_done - self.first_steps) / elapsed if elapsed > 0 else None

    def show(self, snapshot: Snapshot, force: bool = False) -> None:
        now = time.monotonic()
        rate = self.rate(snapshot.steps_done, now)
        if not self.enabled:
            return
        line = "bench: " + status_line(snapshot, rate, now - self.began)
        if self.live:
            self.stream.write("\r\033[K" + line)
            self.shown = True
        elif force or now - self.last_print >= INTERVAL:
            self.stream.write(line + "\n")
            self.last_print = now
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.live and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False
        print(text, flush=True)

    def close(self) -> None:
        if self.live and self.shown:
            self.stream.write("\n")
            self.stream.flush()
