"""Send the test report's figures and risk-coverage curve to whichever loggers are active.

Scalars go through ``LightningModule.log``; this covers what Lightning has no common API for:
images (W&B, TensorBoard) and the curve as a W&B table with a line plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

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
