"""Selective segmentation of new files with a trained checkpoint: the library behind ``predict.py``.

For each input, :func:`predict_files` writes the segmentation, the uncertainty ``u = 1 - max softmax``
(``score=``: another one-pass score, e.g. ``margin``, or ``tcp``: 1 - the checkpoint's ConfidNet
head's predicted true-class probability)
and the referral mask ``u > t`` on the input's own grid (see :mod:`uaseg.inference.files`) and a JSON
record: the threshold and how it was chosen, the case's own coverage, voxel counts per class.

Threshold: ``threshold=t`` is used as given; ``risk=alpha`` (``risk_kind``: dice, structure, tail@b,
fnr) takes the threshold calibrated for that risk with a guarantee (:mod:`uaseg.stages.risk_calibration`) and records the guarantee. ``coverage=c`` takes the threshold of the checkpoint's
validation curve by :meth:`uaseg.selective.ThresholdGrid.threshold_at` (the point with coverage
nearest ``c``; the grid has a point for every 0.1 % of coverage), so ``c`` is honoured on the
validation images to within 0.05 % plus their tie groups; a new image's own coverage at that threshold
differs from ``c`` by however much it differs from the validation images. The referral mask is
computed on the original grid, so the mask, the written uncertainty and the reported coverage agree.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from uaseg.config.check import check_config
from uaseg.errors import ConfigError, PredictError
from uaseg.inference.files import case_name, list_inputs, output_paths, resolve_checkpoint, write_segmentation
from uaseg.inference.model import LoadedModel, load_model
from uaseg.inference.segment import segment_file
from uaseg.io import write_json
from uaseg.selective.risk_control import METHODS, Calibration, alpha_key, split_key
from uaseg.selective.risk_kinds import parse_kind

log = logging.getLogger(__name__)


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PredictError(f"device={device}: expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device={device} requested but CUDA is not available; use device=cpu")
    return dev


def check_threshold_options(coverage: float | None, threshold: float | None, risk: float | None = None,
                            risk_method: str | None = None, risk_kind: str | None = None,
                            score: str = "max_softmax") -> None:
    """Each option in its domain (:mod:`uaseg.config.check`) and exactly one of ``coverage``,
    ``threshold`` and ``risk`` given (checked before any work)."""
    try:
        check_config({"coverage": coverage, "threshold": threshold, "risk": risk, "risk_method": risk_method,
                      "risk_kind": risk_kind, "score": score})
    except ConfigError as e:
        raise PredictError(str(e)) from None
    if sum(x is not None for x in (coverage, threshold, risk)) != 1:
        raise PredictError("give exactly one of coverage=<fraction in (0, 1]>, threshold=<uncertainty> and "
                           "risk=<Dice risk alpha in (0, 1), from a calibrated checkpoint>")
    if risk_method is not None and risk is None:
        raise PredictError("risk_method= goes with risk=<alpha>")
    if risk_kind is not None and risk is None:
        raise PredictError("risk_kind= goes with risk=<alpha>")
    if risk is not None and score != "max_softmax":
        raise PredictError(f"risk= thresholds are calibrated on u = 1 - max softmax; score={score} takes coverage= "
                           "or threshold=")


def risk_threshold(record: dict | None, ckpt: Path, risk: float, method: str | None = None,
                   kind: str | None = None) -> dict:
    """Prediction's record for ``risk=alpha`` (``risk_kind``: dice by default): the calibrated threshold,
    its guarantee, and every kind's realised value on the calibration cases."""
    try:
        kind_key = parse_kind(kind or "dice").key
    except ValueError as e:
        raise PredictError(f"risk_kind: {e}") from None
    cals = (record or {}).get("calibrations") or {}
    key = alpha_key(risk, kind_key)
    found = {m: by[key] for m, by in cals.items() if key in by}
    have = ", ".join(f"{m} {' alpha='.join(map(str, split_key(k)))}" for m, by in cals.items() for k in by) or "none"
    # a run folder calibrates its best checkpoint; any other checkpoint is named as the file itself
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" and ckpt.name.startswith("best-") else ckpt
    how = (f"uaseg calibrate {run} alpha={risk:g}" + (f" method={method}" if method else "")
           + (f" risk={kind_key}" if kind_key != "dice" else ""))
    if method is not None and method not in METHODS:
        raise PredictError(f"risk_method={method}: choose from {list(METHODS)}")
    if (method not in found) if method is not None else not found:
        raise PredictError(f"{ckpt} has no {method or 'risk'} calibration for risk={risk:g} risk_kind={kind_key} "
                           f"(calibrated: {have}); calibrate it on its run's validation cases with: {how}")
    if method is None and len(found) > 1:
        raise PredictError(f"{ckpt} is calibrated for risk={risk:g} with {' and '.join(found)}: choose one with "
                           f"risk_method={'|'.join(found)}")
    cal = Calibration.from_dict(found[method if method is not None else next(iter(found))])
    out = {"threshold": cal.threshold, "threshold_source": "risk",
           "threshold_rule": f"calibrated on the validation {cal.unit}s for {cal.kind} risk {cal.alpha:g} "
                             f"({cal.method}); refer voxels with u > threshold",
           "requested_coverage": None, "validation_coverage": cal.coverage,
           "risk_control": {"risk": cal.kind, "method": cal.method, "pvalue": cal.pvalue, "alpha": cal.alpha,
                            "delta": cal.delta, "unit": cal.unit, "n_calibration": cal.n_calibration,
                            "feasible": cal.feasible, "calibration_risk": cal.risk, "threshold": cal.threshold,
                            "expected_coverage": cal.expected_coverage, "calibration_values": cal.values,
                            "components": cal.components, "guarantee": cal.statement,
                            **({"warning": cal.warning} if cal.warning else {})}}
    if cal.threshold == float("-inf"):
        out["note"] = "threshold -inf: every voxel is referred (" + cal.statement + ")"
    log.info("risk %.4g (%s %s) -> threshold %.6g: %s", risk, cal.kind, cal.method, cal.threshold, cal.statement)
    return out


def choose_threshold(model: LoadedModel, ckpt: Path, coverage: float | None, threshold: float | None,
                     risk: float | None = None, risk_method: str | None = None, risk_kind: str | None = None,
                     score: str = "max_softmax") -> dict:
    """The threshold and the record of how it was chosen (``coverage``: on the validation curve of
    ``score``)."""
    check_threshold_options(coverage, threshold, risk, risk_method, risk_kind, score)
    if score == "tcp" and not model.module.confidence:
        raise PredictError(f"{ckpt} holds no ConfidNet head ('uaseg_confidence_head'), so score=tcp is unknown; "
                           "train with confidence_head=tcp")
    if risk is not None:
        return risk_threshold(model.risk_control, ckpt, float(risk), risk_method, risk_kind)
    if threshold is not None:
        threshold = float(threshold)
        return {"threshold": threshold, "threshold_source": "explicit",
                "threshold_rule": "given by the user; refer voxels with u > threshold",
                "requested_coverage": None, "validation_coverage": None}
    coverage = float(coverage)
    curve = (model.val_curve if score == "max_softmax" else model.module.confidence.get("val_curve")
             if score == "tcp" else model.module.val_curves.get(score))
    if curve is None and score != "max_softmax":
        raise PredictError(f"{ckpt} has no validation curve of the score {score} (stored for the scores a run "
                           f"lists in eval.scores), so coverage cannot be mapped to a threshold; pass "
                           "threshold=<u> instead")
    if curve is None:
        raise PredictError(
            f"{ckpt} has no validation risk-coverage curve ('uaseg_val_curve'; saved only after a "
            "validation run), so coverage cannot be mapped to a threshold; pass threshold=<u> instead"
        )
    t, val_coverage = curve.threshold_at(coverage)
    log.info("coverage %.4g -> threshold %.6g (validation coverage %.4f)", coverage, t, val_coverage)
    record = {"threshold": t, "threshold_source": "coverage",
              "threshold_rule": "validation curve point with coverage nearest to the requested one "
                                "(ties: larger coverage); refer voxels with u > threshold",
              "requested_coverage": coverage, "validation_coverage": val_coverage}
    if t == -math.inf:
        record["note"] = "threshold -inf: the nearest validation coverage was 0, every voxel is referred"
    return record


def predict_files(
    ckpt: str | Path,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    coverage: float | None = None,
    threshold: float | None = None,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    risk: float | None = None,
    risk_method: str | None = None,
    risk_kind: str | None = None,
    score: str = "max_softmax",
) -> list[dict]:
    """Segment every input file with ``ckpt`` and write segmentation, uncertainty, referral mask and a
    JSON per file into ``output``. Exactly one of ``coverage`` (in (0, 1]; threshold from the
    checkpoint's validation curve), ``threshold`` (refer ``u > threshold``) and ``risk`` (the threshold
    calibrated for that risk level alpha of kind ``risk_kind`` (default dice), method ``risk_method`` if
    several). Refuses to overwrite
    existing outputs unless ``overwrite``; every check runs before any computation. Returns the
    per-file JSON records."""
    check_threshold_options(coverage, threshold, risk, risk_method, risk_kind, score)
    dev = _device(device)
    ckpt = resolve_checkpoint(ckpt)  # a run folder -> its selected checkpoint
    ckpt_path = Path(ckpt).expanduser().resolve() if Path(ckpt).expanduser().exists() else Path(ckpt)
    output = Path(output).expanduser().absolute()
    files, kind = list_inputs(inputs, skip_outputs_in=output)

    model = load_model(ckpt_path, "cpu", trust_checkpoint=trust_checkpoint)
    chosen = {**choose_threshold(model, ckpt_path, coverage, threshold, risk, risk_method, risk_kind, score),
              "score": score}
    cases = model.datamodule.prediction_cases(files)  # one file per case, or nnU-Net's channel files
    names: dict[str, list[Path]] = {}
    for name, channel_files in cases:
        name = name or case_name(channel_files[0])
        if name in names:
            raise PredictError(f"two inputs would write the same outputs '{name}_*': {names[name][0]} and {channel_files[0]}")
        names[name] = channel_files
        model.check_compatible(channel_files, kind)

    targets = {name: output_paths(output, name, kind) for name in names}
    if not overwrite:
        existing = [p for t in targets.values() for p in t.values() if p.exists()]
        if existing:
            shown = "\n  ".join(str(p) for p in existing[:5])
            more = f"\n  ... and {len(existing) - 5} more" if len(existing) > 5 else ""
            raise FileExistsError(
                f"{len(existing)} output file(s) already exist; pass overwrite=true to replace them, or choose "
                f"another output folder:\n  {shown}{more}"
            )
    model.module.to(dev)
    records = []
    for name, channel_files in names.items():
        log.info("segmenting %s", ", ".join(map(str, channel_files)))
        records.append(_predict_one(model, channel_files, targets[name], dev, ckpt_path, chosen, score))
    return records


def drift_of(module, u: np.ndarray, path: Path) -> dict:
    """``{"drift": ...}``: this input's case score against the validation cases' range stored in the
    checkpoint (:func:`uaseg.shift.referral.drift_check`), with a warning when it lies outside; empty
    for a checkpoint without that record."""
    from uaseg.selective.case_level import aggregate_case_uncertainty
    from uaseg.shift.referral import drift_check

    record = getattr(module, "case_scores", None)
    if not record:
        return {}
    d = drift_check(record, aggregate_case_uncertainty(record["aggregation"], u))
    if d["outside"]:
        lo, hi = d["validation_range"]
        log.warning("%s: drift warning: its case uncertainty (%s of u) %.4g lies outside the range of the %d validation "
                    "cases [%.4g, %.4g] (p = %.3g; a clean case does this with probability %.3g): its referral threshold and "
                    "any guarantee were calibrated on cases unlike it; have the whole case checked", path.name,
                    d["aggregation"], d["case_score"], d["n_validation"], lo, hi, d["p_value"], d["false_alarm_rate"])
    return {"drift": d}


def _predict_one(model: LoadedModel, files: list[Path], out: dict[str, Path], device: torch.device, ckpt_path: Path,
                 chosen: dict, score: str = "max_softmax") -> dict:
    seg, u = segment_file(model, files, device, score)
    path = files[0]
    threshold = chosen["threshold"]
    refer = u > threshold  # -inf: refer everything
    write_segmentation(out, path, seg, u, refer, refer_note=f"u > {threshold:.6g}",
                       class_names=[n for n in model.class_names[1:]])
    n = int(refer.size)
    counts = np.bincount(seg.ravel(), minlength=model.num_classes)
    counts_covered = np.bincount(seg[~refer].ravel(), minlength=model.num_classes)
    names = model.class_names if len(model.class_names) == model.num_classes else [str(i) for i in range(model.num_classes)]
    shape = seg.shape if seg.ndim == 3 else seg.T.shape  # 2-D: (height, width) as written
    record = {
        "input": str(path.resolve()),
        **({"channel_files": [str(f.resolve()) for f in files]} if len(files) > 1 else {}),
        "checkpoint": str(ckpt_path),
        "dataset": model.dataset_cfg.get("_target_"),
        **chosen,
        "coverage": float(1.0 - refer.sum() / n),
        "voxels": n,
        "referred_voxels": int(refer.sum()),
        "shape": list(shape),
        "voxel_counts": {names[i]: int(c) for i, c in enumerate(counts)},
        "voxel_counts_covered": {names[i]: int(c) for i, c in enumerate(counts_covered)},
        "uncertainty": {"mean": float(u.mean()), "max": float(u.max())},
        **(drift_of(model.module, u, path) if score == "max_softmax" else {}),
        "outputs": {k: str(p) for k, p in out.items() if k != "json"},
    }
    write_json(out["json"], record)
    log.info("%s: coverage %.4f at threshold %.6g -> %s", path.name, record["coverage"], threshold, out["seg"])
    return record
