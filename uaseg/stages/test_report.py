"""The test of the checkpoint the run selected; the report (summary.json, curves, figures) is written
by :class:`uaseg.callbacks.SelectiveReportWriter` during it, and :func:`closing_block` tells the user
where it is and what its main numbers mean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from uaseg.io import write_json
from uaseg.stages.base import Stage, StageContext


class TestReport(Stage):
    """``trainer.test`` on the selected checkpoint (``test=true``); its metrics join the run's."""

    name = "test"
    __test__ = False  # not a pytest test class

    def enabled(self, ctx: StageContext) -> bool:
        return bool(ctx.cfg.get("test", True))

    def run(self, ctx: StageContext) -> None:
        # Lightning's own metric table (raw values: Dice as a fraction next to AURC in %) is replaced by
        # the selective table (everything in %) and the runner's closing block
        ctx.trainer.test(ctx.model, datamodule=ctx.datamodule, ckpt_path=ctx.checkpoint or None,
                         weights_only=True, verbose=False)
        ctx.metrics.update({k: float(v) for k, v in ctx.trainer.callback_metrics.items()})


def add_stage_seconds(summary: Path, seconds: dict[str, float]) -> None:
    """``stage_seconds`` (the training's and each stage's wall seconds, parts as ``<stage>/<part>``)
    added to the summary.json the test just wrote: the test's own time is known only after it."""
    record = json.loads(summary.read_text())
    record["stage_seconds"] = seconds
    write_json(summary, record, indent=2)


def closing_block(out: Path, result: Any, checkpoint: str, next_step: str | None = None) -> str:
    """The last lines of a run: where its folder is and what the main numbers mean (units: Dice and
    AURC in %, coverage as a fraction), and what to run next (:func:`uaseg.runs.start_block.next_commands`)."""
    lines = [f"Run folder: {out}"]
    if checkpoint:
        lines.append(f"  checkpoint tested: {Path(checkpoint).name} (predict.py ckpt={out} picks it)")
    if result is None:
        lines.append("  no test report (test=false): summary.json is written by the test")
        return "\n".join(lines)
    lines.append(f"  summary.json, curves.csv, figures/: the selective test report on {result.n_cases} test cases")
    lines.append(f"  Dice {100 * result.dice_full.mean:.2f} %: mean test-case Dice with every voxel segmented by the network")
    at90 = result.at_coverage.get("0.90")
    if at90 is not None:
        lines.append(f"  Dice {100 * at90.dice_mean:.2f} % at coverage 0.90: the 10 % most uncertain voxels referred "
                     "to a radiologist (counted as correct)")
    lines.append(f"  AURC {result.aurc_dice:.3f} %: area under the Dice risk-coverage curve (risk = 1 - Dice); "
                 "lower is better (the network's errors are among the voxels it refers first)")
    lines.append("  units: Dice and AURC in %, coverage as a fraction")
    lines.append(f"  next: {next_step or f'python predict.py ckpt={out} input=<images> output=<folder> coverage=0.9'}"
                 " (README 'Prediction')")
    return "\n".join(lines)
