"""metrics.jsonl and metrics.csv of a run (TensorBoard too when it is installed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text, read_jsonl

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


class MetricsLog:
    """Rows appended to metrics.jsonl and metrics.csv (the columns `fields`); a resumed run first
    drops the rows logged after the step it resumes from."""

    def __init__(self, run_dir: Path, start_step: int, fields: tuple[str, ...]):
        self.fields = fields
        self.jsonl = run_dir / METRICS_JSONL
        self.csv = run_dir / METRICS_CSV
        if start_step > 0:
            self._truncate(start_step)
        new_csv = not self.csv.exists()
        self._csv_file = open(self.csv, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, self.fields, extrasaction="ignore")
        if new_csv:
            self._csv.writeheader()
        self._jsonl_file = open(self.jsonl, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
        except Exception:  # tensorboard is optional
            self._tb = None

    def _truncate(self, step: int) -> None:
        """Drop rows logged after the checkpoint a resumed run starts from."""
        if self.jsonl.exists():
            keep = [r for r in read_jsonl(self.jsonl) if r["step"] <= step]
            atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in keep))
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                rows = list(csv.DictReader(f))
            with open(self.csv, "w", newline="") as f:
                w = csv.DictWriter(f, self.fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(r for r in rows if int(r["step"]) <= step)

    def write(self, row: dict[str, Any]) -> None:
        self._jsonl_file.write(json.dumps(row) + "\n")
        self._jsonl_file.flush()
        self._csv.writerow(row)
        self._csv_file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self._csv_file.close()
        self._jsonl_file.close()
        if self._tb is not None:
            self._tb.close()
