"""A CSV logger that keeps what an earlier part of the run wrote, once.

Lightning's CSVLogger deletes an existing metrics.csv when it starts; a run resumed in its own
folder (auto_resume, ckpt_path=last) would lose the history of its first part. Rows the first
part logged after the checkpoint it resumes from are logged again by the resumed part, so
they are dropped first (`forget_from_step`): each step is in the file once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    """Adds rows to an existing metrics.csv (under its header, widened for new keys)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` whose metrics.csv survives a resume in the same folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    def forget_from_step(self, step: int) -> int:
        """Drop the rows of metrics.csv logged at `step` or later (the steps a resume from a
        checkpoint taken after `step` optimiser steps logs again); returns how many."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            return 0
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(kept) == len(rows):
            return 0
        from sam_train.files import write_text_atomic

        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(path, out.getvalue())
        return len(rows) - len(kept)
