"""Send the test report's figures and risk-coverage curve to whichever loggers are active, and a CSV
logger that a resumed run appends to.

Scalars go through ``LightningModule.log``; this covers what Lightning has no common API for:
images (W&B, TensorBoard) and the curve as a W&B table with a line plot.

:class:`CSVLogger` (``logger=csv``): Lightning's own deletes an existing ``metrics.csv`` when it
starts, so ``resume=`` lost every row logged before the kill. Ours keeps them and appends, with an
``attempt`` column (a resumed run logs the killed attempt's last epoch again: filter on the last
attempt per (epoch, step) to plot); when new columns appear, the file is rewritten with the wider
header through :mod:`uaseg.io` (atomically).
TensorBoard and W&B write new event files / runs beside the old ones, so they keep theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import csv
import io
import os

import numpy as np
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from uaseg.io import write_text
from uaseg.selective import SelectiveResult

#: points of the curve sent to W&B (the exact curve can have millions; AURC is computed on all)
MAX_CURVE_POINTS = 500


def log_test_report(loggers: Sequence[Logger], result: SelectiveResult, figures: dict[str, Path], step: int = 0) -> None:
    coverage = np.asarray(result.curve.coverage, dtype=float)
    risk = np.asarray(result.curve.risk, dtype=float)
    keep = np.unique(np.linspace(0, len(coverage) - 1, min(len(coverage), MAX_CURVE_POINTS)).astype(int))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            if figures:
                logger.log_image("test/figures", [str(p) for p in figures.values()], caption=list(figures))
            table = wandb.Table(
                columns=["coverage", "risk", "dice"],
                data=[[float(c), float(r), float(1 - r)] for c, r in zip(coverage[keep], risk[keep])],
            )
            logger.experiment.log(
                {
                    "test/risk_coverage": wandb.plot.line(table, "coverage", "risk", title="Dice risk-coverage"),
                    "test/risk_coverage_table": table,
                }
            )
        elif isinstance(logger, TensorBoardLogger):
            import matplotlib.image

            for name, path in figures.items():
                image = matplotlib.image.imread(str(path))[..., :3]
                logger.experiment.add_image(f"test/{name}", image, step, dataformats="HWC")


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing ``metrics.csv`` instead of deleting it. Each row
    says which ``attempt`` of the run logged it (1, then 2 after the first ``resume=``, ...): a killed
    attempt's last epoch is logged again by the next, with the same (epoch, step)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.attempt = 1
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                reader = csv.DictReader(f)
                self.metrics_keys = list(reader.fieldnames or [])
                self.attempt = 1 + max((int(r.get("attempt") or 1) for r in reader), default=0)

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        pass

    def log_metrics(self, metrics_dict, step=None) -> None:
        super().log_metrics(metrics_dict, step)
        self.metrics[-1]["attempt"] = self.attempt

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:  # a file from before the column: its rows are the first attempt's
            r["attempt"] = r.get("attempt") or "1"
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics_file_path, text.getvalue())


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` survives ``resume=``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
