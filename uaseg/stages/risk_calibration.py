"""Risk calibration of a checkpoint on its run's validation cases: the referral threshold with a
guarantee on the Dice risk (:mod:`uaseg.selective.risk_control`), stored in the checkpoint.

Used by the runner between fit and test (``eval.risk_control``: :class:`RiskCalibration`) and by
``uaseg calibrate``. The score is the module's ``u = 1 - max softmax`` computed as prediction computes
it (``module.segment``, float32), on the *whole* validation split (trainer batch limits do not apply).
The calibrations are stored as plain dicts under ``uaseg_risk_control`` (``weights_only`` loading keeps
working), the checkpoint rewritten atomically with everything else in it unchanged. Caveat: the run's
validation split also selected the checkpoint, which makes the calibration slightly optimistic in
principle.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from uaseg.errors import ConfigError, UserError
from uaseg.io import check_checkpoint_file, save_torch
from uaseg.selective.case_losses import risk_losses
from uaseg.selective.risk_control import alpha_key, calibrate, split_key
from uaseg.selective.risk_settings import RiskControlSettings, count_units
from uaseg.stages.base import Stage, StageContext
from uaseg.stages.validation import validation_stats

log = logging.getLogger(__name__)


def _describe(m: str, key: str, d: dict) -> str:
    kind, alpha = split_key(key)
    return (f"{m} " + ("" if kind == "dice" else f"{kind} ") + f"alpha={alpha:g}" + (f" delta={d['delta']:g} ({d.get('pvalue') or 'hb'})" if d.get("delta") is not None else "")
            + f": threshold {d['threshold']:.6g}, validation coverage {d['coverage']:.4f}, risk {d['risk']:.4f}"
            + f" on {d['n_calibration']} {d.get('unit', 'case')}s"
            + ("" if d.get("expected_coverage") is None else f" (expected coverage at this n {d['expected_coverage']:.4f})"))


def calibrate_checkpoint(ckpt: str | Path, settings: RiskControlSettings, datamodule=None,
                         device: str | torch.device = "cpu", overwrite: bool = False,
                         write: bool = True, trust_checkpoint: bool = False,
                         seconds: dict[str, float] | None = None) -> tuple[dict, list[str]]:
    """Calibrate ``ckpt`` on its validation cases (per patient when the dataset names them and
    ``settings.unit`` is ``patient``) and add the result to it.

    ``datamodule``: the run's (default: rebuilt from the dataset config in the checkpoint). An
    existing calibration of the same (method, risk, alpha) is replaced only with ``overwrite``. Returns
    the stored record and one line per change; ``write=False`` computes without writing (DDP ranks > 0).
    The classes the checkpoint names are checked before any is built (:mod:`uaseg.runs.trust`).
    ``seconds``: given, its ``calibrate_with_leave_one_out`` entry is set to the wall seconds of the
    calibrations (each with its leave-one-out expected coverage: n more calibrations); the rest of the
    work is loading the checkpoint and segmenting the validation cases.
    """
    from uaseg.runs.trust import read_checkpoint
    from uaseg.data import build_datamodule
    from uaseg.models.module import RISK_CONTROL_KEY, SelectiveSegModule

    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    check_checkpoint_file(path)  # a truncated copy: one line naming it
    checkpoint = read_checkpoint(path, trust=trust_checkpoint)  # checked: no code runs, sound records
    if checkpoint is None:  # trusted, but only weights_only=False reads it
        raise UserError(f"{path}: calibrate rewrites checkpoints of plain data only (weights_only=True)")
    old = checkpoint.get(RISK_CONTROL_KEY) or {}
    old_cals = old.get("calibrations") or {}
    clash = [f"{m} {k} alpha={a:g}" for k, m, a in settings.triples() if alpha_key(a, k) in old_cals.get(m, {})]
    if clash and not overwrite:
        raise UserError(f"{path} is already calibrated for {', '.join(clash)}; pass overwrite=true to replace it")
    if datamodule is None:
        dataset_cfg = (checkpoint.get("hyper_parameters") or {}).get("dataset")
        if not dataset_cfg:
            raise UserError(f"{path} holds no dataset config (hyper-parameter 'dataset'); train it with a current train.py")
        datamodule = build_datamodule(dataset_cfg)
    datamodule.setup()
    units = settings.units(datamodule)
    val_ids = [str(c["case_id"]) for c in datamodule.splits["val"]]
    what = "validation patients" if units else "validation cases"
    settings.check_size(count_units(val_ids, units), datamodule.num_classes, what)   # before any segmentation
    if settings.unit == "patient" and not units:
        log.info("risk control: the dataset names no patient, so each validation case is its own unit")
    module = SelectiveSegModule.load_from_checkpoint(str(path), map_location="cpu", weights_only=True,
                                                     trust_checkpoint=trust_checkpoint)
    stats = validation_stats(module, datamodule, device)
    names = list(getattr(datamodule, "class_names", []) or [])
    names = ["background", *names] if len(names) == module.num_classes - 1 else None
    cals = {m: dict(by) for m, by in old_cals.items()}
    changes = []
    start = time.perf_counter()
    for kind in settings.kinds:
        losses = risk_losses(stats, kind, units)
        for m, a in settings.pairs():
            cal = calibrate(losses, a, m, settings.delta, pvalue=settings.pvalue, stats=stats, units=units,
                            expected_coverage=True, class_names=names)
            new = cal.to_dict()
            key = alpha_key(a, kind)
            prev = cals.setdefault(m, {}).get(key)
            changes.append(("replaced " if prev else "added ") + _describe(m, key, new)
                           + (f" (was threshold {prev['threshold']:.6g})" if prev else ""))
            if not cal.feasible or cal.threshold == float("-inf"):
                log.warning("%s", cal.statement)
            if cal.warning:
                log.warning("risk control: %s", cal.warning)
            cals[m][key] = new
    if seconds is not None:
        seconds["calibrate_with_leave_one_out"] = time.perf_counter() - start
    record = {"score": "u = 1 - max softmax", "split": "val", "n_calibration": len(stats),
              "case_ids": [s.case_id for s in stats], "units": units, "calibrations": cals}
    if write:
        checkpoint[RISK_CONTROL_KEY] = record
        save_torch(path, checkpoint)
        for c in changes:
            log.info("%s: %s", path.name, c)
    return record, changes


def risk_control_settings(cfg: DictConfig, datamodule) -> RiskControlSettings | None:
    """``eval.risk_control``, checked before training: the selected checkpoint is calibrated on the
    validation cases after fit, so they must suffice for every requested alpha (and delta)."""
    settings = RiskControlSettings.from_config(cfg.eval.get("risk_control"))
    if settings is None:
        return None
    if not cfg.get("train", True):
        raise ConfigError("eval.risk_control calibrates the checkpoint a training run selects; for an "
                          "existing checkpoint use: uaseg calibrate <run folder> alpha=...")
    if cfg.eval.get("quantize_bits") is not None:
        raise ConfigError("eval.risk_control evaluates the calibrated thresholds exactly: set eval.quantize_bits=null")
    if "max_softmax" not in cfg.eval.scores:
        raise ConfigError("eval.risk_control calibrates u = 1 - max softmax: list max_softmax in eval.scores")
    datamodule.setup()
    units = settings.units(datamodule)
    settings.check_size(count_units([c["case_id"] for c in datamodule.splits["val"]], units),
                        datamodule.num_classes, "validation patients" if units else "validation cases")
    return settings


class RiskCalibration(Stage):
    """``eval.risk_control`` on the checkpoint this run selected (settings checked before training by
    :func:`risk_control_settings`)."""

    name = "risk_calibration"

    def enabled(self, ctx: StageContext) -> bool:
        return ctx.risk_control is not None and bool(ctx.checkpoint)

    def run(self, ctx: StageContext) -> None:
        # every rank computes (same weights, same cases), rank 0 writes, all load it in trainer.test
        parts: dict[str, float] = {}
        calibrate_checkpoint(ctx.checkpoint, ctx.risk_control, ctx.datamodule, ctx.device,
                             write=ctx.trainer.is_global_zero, trust_checkpoint=ctx.trust, seconds=parts)
        ctx.seconds.update({f"{self.name}/{k}": v for k, v in parts.items()})
        ctx.trainer.strategy.barrier()
