"""The test report of a run, written by a Lightning callback so the module writes no files.

Per test batch, from the :class:`~uaseg.models.module.CaseOutput` list that ``test_step`` returns:
``predictions/<case>.npz`` (``save_arrays``; the main score's arrays plus ``uncertainty_<score>`` /
``prediction_<score>`` per score), ``predictions/<case>_seg`` / ``_uncertainty`` on each case's original
file grid (``export``; NIfTI with the file's header, PNG for 2-D), and the first case of each test
group for the qualitative figure. After the test (the module has computed ``test_results``):
``summary.json`` with the run identity, the main score's report at the top level and every score's
under ``scores`` (with its cost), ``curves.csv``, ``figures/``, the figures and curve sent to
W&B/TensorBoard, and the Table-1 row printed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from uaseg.inference.files import file_kind, output_paths, write_segmentation
from uaseg.io import write_text
from uaseg.runs.loggers import log_test_report
from uaseg.shift.report import console_text, format_shift, plot_shift
from uaseg.report.curves import run_figure
from uaseg.uncertainty import SCORES
from uaseg.selective import (
    format_risk_control,
    format_table,
    plot_case_panel,
    plot_dice_coverage,
    plot_risk_coverage,
    save_case_arrays,
    write_score_outputs,
)

log = logging.getLogger(__name__)


def per_score_arrays(case) -> dict:
    """``uncertainty_<score>`` for every score, ``prediction_<score>`` where a score is evaluated with
    another prediction than the main one (TTA, MC dropout: the argmax of the mean)."""
    main = SCORES[next(iter(case.scores))].prediction
    out = {}
    for name, (u, pred) in case.scores.items():
        out[f"uncertainty_{name}"] = u
        if SCORES[name].prediction != main:
            out[f"prediction_{name}"] = pred
    return out


def panel_name(group: str, case_id: str) -> str:
    """The case panel's file name: ``<group>_<case>`` (``test_case_002``), the case id alone when it
    already starts with its group (GlaS ``testA_1``)."""
    return case_id if str(case_id).startswith(str(group)) else f"{group}_{case_id}"


class SelectiveReportWriter(Callback):
    """Writes what a run's test produced (see the module docstring). Options are the ``eval``
    config's ``save_arrays``, ``export``, ``figures`` and ``panel_coverage`` (defaults:
    ``conf/eval/default.yaml``); ``output_dir`` defaults to the trainer's ``default_root_dir``."""

    OPTIONS = ("save_arrays", "export", "figures", "panel_coverage")

    def __init__(self, *, save_arrays: bool, export: bool, figures: bool, panel_coverage: float,
                 output_dir: str | Path | None = None) -> None:
        self.save_arrays = bool(save_arrays)
        self.export = bool(export)
        self.figures = bool(figures)
        self.panel_coverage = float(panel_coverage)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._panels: dict[str, dict[str, Any]] = {}
        self._export_warned = False

    @classmethod
    def from_eval_config(cls, evaluation: Mapping[str, Any], output_dir: str | Path | None = None) -> "SelectiveReportWriter":
        return cls(**{k: evaluation[k] for k in cls.OPTIONS}, output_dir=output_dir)

    def _out(self, trainer: L.Trainer) -> Path:
        return self.output_dir if self.output_dir is not None else Path(trainer.default_root_dir)

    # ------------------------------------------------------------------ per batch
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._panels = {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        cases = outputs or []
        if self.export and cases:
            self._export(trainer, batch, cases)
        for i, c in enumerate(cases):
            if self.save_arrays:
                save_case_arrays(self._out(trainer), c.case_id, c.uncertainty, c.prediction, c.label,
                                 **per_score_arrays(c))
            if self.figures and c.group not in self._panels:  # first case of each group
                self._panels[c.group] = dict(
                    case_id=c.case_id, image=batch["image"][i].detach().cpu().float().numpy(),
                    label=c.label.cpu().numpy(), prediction=c.prediction.cpu().numpy(),
                    uncertainty=c.uncertainty.cpu().numpy(),
                )

    def _export(self, trainer: L.Trainer, batch: dict, cases: list) -> None:
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "invert_to_original"):
            if not self._export_warned:
                log.warning("eval.export: %s has no original files to export onto", type(datamodule).__name__)
                self._export_warned = True
            return
        arrays = {"seg": torch.stack([c.prediction for c in cases])[:, None].float(),
                  "u": torch.stack([c.uncertainty for c in cases])[:, None].float()}
        originals = datamodule.invert_to_original(arrays, batch, nearest=["seg"])
        sources = batch["image"].meta["filename_or_obj"]
        folder = self._out(trainer) / "predictions"
        for c, original, source in zip(cases, originals, sources):
            source = Path(source)
            write_segmentation(
                output_paths(folder, c.case_id, file_kind(source), refer=False), source,
                original["seg"][0].round().long().numpy(), original["u"][0].float().numpy(),
            )

    # ------------------------------------------------------------------ after the test
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        result = getattr(pl_module, "test_result", None)
        if result is None or not trainer.is_global_zero:
            return
        out = self._out(trainer)
        # the foreground classes, in the order of every ``class_dice`` list
        names = getattr(trainer.datamodule, "class_names", None) or (
            (pl_module.dataset_cfg or {}).get("meta") or {}).get("class_names")
        extra = {"class_names": list(names or [])}
        if pl_module.temperature is not None:
            extra["temperature"] = pl_module.temperature
        if getattr(trainer, "ckpt_path", None):
            extra["checkpoint"] = str(trainer.ckpt_path)
        shift = getattr(pl_module, "shift_report", None)
        if shift is not None:  # the shift testbed (eval.shift): its block, table and figure
            extra["shift"] = shift
        write_score_outputs(pl_module.test_results, out, pl_module.run_identity, pl_module.test_costs,
                            {n: SCORES[n].prediction for n in pl_module.test_results}, extra)
        figures = {}
        if self.figures:
            fig_dir = out / "figures"
            figures["risk_coverage"] = plot_risk_coverage(result, fig_dir / "risk_coverage.png")
            figures["dice_coverage"] = plot_dice_coverage(result, fig_dir / "dice_coverage.png")
            threshold = result.threshold_at(self.panel_coverage)
            for group, p in self._panels.items():
                figures[f"case_{group}"] = plot_case_panel(
                    p["image"], p["label"], p["prediction"], p["uncertainty"], threshold,
                    fig_dir / f"{panel_name(group, p['case_id'])}.png",
                    title=f"{p['case_id']} ({group}), referral at coverage {self.panel_coverage}",
                    class_names=list(names or []) + (["ignore (not annotated)"] if getattr(pl_module, "ignore_label", None) is not None else []),
                )
            curves = run_figure(out, fig_dir / "learning_curves.png", pl_module.run_identity)
            if curves is not None:
                figures["learning_curves"] = curves
        if shift is not None:
            write_text(out / "shift.md", format_shift(shift) + "\n")
            if self.figures and (fig := plot_shift(shift, out / "figures" / "shift.png")) is not None:
                figures["shift"] = fig
        log_test_report(trainer.loggers, result, figures, step=pl_module.global_step)
        print(format_table(result))
        if result.risk_control:
            print(format_risk_control(result.risk_control))
        if shift is not None:
            print(console_text(shift, out / "shift.md"))
        log.info("selective test report written to %s", out)
        self._panels = {}
