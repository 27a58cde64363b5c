"""The ``shift`` block of ``summary.json``: one row per condition (clean, kind:severity) and test group,
each with the selective metrics, case-level failure detection, and every calibrated threshold's
realised risk against its alpha -- as calibrated (``none``) and under each remedy:

* ``case_referral``: cases whose score exceeds the case threshold (calibrated on the clean validation
  cases, :func:`.referral.calibrate_case_referral`) are referred whole, the others get the voxel
  threshold;
* ``drift_referral``: cases outside the clean validation range of the case score are referred whole
  (the drift warning of prediction, acted on);
* ``recalibrated``: the voxel threshold calibrated again, with the same method, kind and alpha, on
  validation cases of the same condition (corrupted alike, with their own draws) or, for a natural
  group, on the validation cases of that group -- the per-site calibration a site with a few labelled
  cases of its own can do. None where no such validation cases exist.

``holds``: the realised mean risk on these test cases is at most alpha. CRC promises that in
expectation over calibration and test draws, LTT with probability 1 - delta: on a finite test set a
realised risk a little above alpha is not by itself a broken guarantee (docs/shift.md).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from uaseg.selective.accumulator import summarize
from uaseg.selective.case_losses import risk_losses
from uaseg.selective.case_stats import CaseStats
from uaseg.selective.risk_control import Calibration, calibrate
from uaseg.selective.risk_evaluate import evaluate

from .referral import (
    calibrate_case_referral, case_fails, case_scores, drift_record, failure_auroc, referral_outcome, referred_whole,
)
from .settings import ShiftSettings

log = logging.getLogger(__name__)

ALL = "all"


def condition_name(kind: str, severity: int) -> str:
    return "clean" if kind == "clean" else f"{kind}:{severity}"


def _calibrations(record: dict | None) -> list[tuple[str, str, Calibration]]:
    return [(m, key, Calibration.from_dict(d)) for m, by in ((record or {}).get("calibrations") or {}).items()
            for key, d in by.items()]


def _realised(cal: Calibration, stats: list[CaseStats], units, names) -> dict:
    r = evaluate(cal, stats, units, names)
    return {"risk": r["test_risk"], "coverage": r["test_coverage"], "holds": bool(r["test_risk"] <= cal.alpha)}


def _recalibrated(cal: Calibration, val: list[CaseStats], stats: list[CaseStats], units, val_units, names) -> dict | None:
    if not val:
        return None
    vu = val_units if cal.unit == "patient" else None
    try:
        new = calibrate(risk_losses(val, cal.risk_kind, vu), cal.alpha, cal.method, cal.delta,
                        pvalue=cal.pvalue or "hb", units=vu, class_names=names)
    except ValueError as e:   # e.g. too few cases of that group for any candidate
        log.warning("eval.shift: no recalibration of %s %s alpha=%g on %d cases (%s)", cal.method, cal.kind,
                    cal.alpha, len(val), e)
        return None
    out = _realised(new, stats, units, names)
    return {**out, "threshold": new.threshold, "feasible": new.feasible, "n_calibration": new.n_calibration}


def _row(settings: ShiftSettings, condition: tuple[str, int], group: str, stats: list[CaseStats],
         val: list[CaseStats] | None, calibrations, referral, drift, aggregation: str, coverages, units,
         val_units, names) -> dict:
    result = summarize(stats, coverages=coverages, case_aggregation=aggregation, bootstrap=0, with_cases=False)
    scores, fails = case_scores(stats, aggregation), case_fails(stats, settings.fail_dice)
    row = {"condition": condition_name(*condition), "kind": condition[0], "severity": condition[1], "group": group,
           "n_cases": len(stats), "dice": result.dice_full.mean, "aurc_dice": result.aurc_dice,
           "dice_at": {k: p.dice_mean for k, p in result.at_coverage.items()},
           "failure_rate": float(fails.mean()), "failure_auroc": failure_auroc(scores, fails)}
    outside = np.zeros(len(stats), dtype=bool)
    if drift is not None:
        outside = (scores < drift["min"]) | (scores > drift["max"])
        row["drift_flagged"] = float(outside.mean())
    refer = np.zeros(len(stats), dtype=bool)
    if referral is not None:
        row["case_referral"] = referral_outcome(scores, fails, referral.threshold, referral.alpha, referral.among)
        refer = scores > referral.threshold
    row["risk"] = []
    for method, key, cal in calibrations:
        entry = {"method": method, "key": key, "kind": cal.kind, "alpha": cal.alpha, "delta": cal.delta,
                 "none": _realised(cal, stats, units, names)}
        if referral is not None:
            entry["case_referral"] = _realised(cal, [referred_whole(s) if r else s for s, r in zip(stats, refer)],
                                               units, names)
        if drift is not None:
            entry["drift_referral"] = _realised(cal, [referred_whole(s) if o else s for s, o in zip(stats, outside)],
                                                units, names)
        if settings.recalibrate:
            entry["recalibrated"] = _recalibrated(cal, val or [], stats, units, val_units, names)
        row["risk"].append(entry)
    return row


def shift_block(settings: ShiftSettings, test: dict, val: dict, record: dict | None, aggregation: str,
                coverages, units=None, val_units=None, class_names=None) -> dict:
    """Everything measured (see the module docstring); ``test``/``val``: condition -> case stats."""
    clean_val = val.get(("clean", 0)) or []
    referral = None
    if settings.case_referral is not None and clean_val:
        referral = calibrate_case_referral(case_scores(clean_val, aggregation),
                                           case_fails(clean_val, settings.fail_dice), settings.case_referral)
    drift = drift_record(case_scores(clean_val, aggregation), aggregation) if clean_val else None
    calibrations = _calibrations(record)
    rows = []
    for condition in settings.conditions:
        stats = test.get(condition) or []
        if not stats:
            continue
        groups = sorted({s.group for s in stats})
        for group in ([ALL] + groups if len(groups) > 1 else [ALL]):
            sub = stats if group == ALL else [s for s in stats if s.group == group]
            cond_val = val.get(condition)
            if group != ALL and cond_val is not None:   # a natural group: its own validation cases, if any
                cond_val = [s for s in cond_val if s.group == group]
            rows.append(_row(settings, condition, group, sub, cond_val, calibrations, referral, drift,
                             aggregation, coverages, units, val_units, class_names))
    return {"settings": {"kinds": list(settings.kinds), "severities": list(settings.severities),
                         "seed": settings.seed, "fail_dice": settings.fail_dice, "recalibrate": settings.recalibrate,
                         "case_referral": None if settings.case_referral is None else vars(settings.case_referral)},
            "score": "u = 1 - max softmax", "case_score": aggregation,
            "n_validation": len(clean_val),
            "case_referral": None if referral is None else referral.to_dict(),
            "drift_range": None if drift is None else {k: drift[k] for k in ("aggregation", "n", "min", "max")},
            "rows": rows}


def holds_everywhere(block: dict, remedy: str, max_severity: int = 3) -> bool | None:
    """Whether ``remedy`` (none, case_referral, drift_referral, recalibrated) kept every realised risk
    at most alpha in every row up to ``max_severity`` (None: never measured)."""
    seen = [e.get(remedy) for r in block.get("rows") or () if r["severity"] <= max_severity for e in r["risk"]]
    seen = [s for s in seen if s is not None]
    return all(s["holds"] for s in seen) if seen else None


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
