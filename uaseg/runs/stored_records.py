"""The records uaseg adds to a checkpoint, checked when it is read: a stored curve, temperature,
confidence head or calibration is data from a file, and a broken one (NaN thresholds, a negative
temperature, a head whose weights do not fit its sizes) must be one line naming the file and the
key, never a prediction that silently refers nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from uaseg.errors import CheckpointError

#: checkpoint keys (uaseg.models.module, uaseg.uncertainty.confidnet); literal so that checking a
#: file imports neither
VAL_CURVE, VAL_CURVES, TEMPERATURE = "uaseg_val_curve", "uaseg_val_curves", "uaseg_temperature"
HEAD, RISK_CONTROL = "uaseg_confidence_head", "uaseg_risk_control"
CASE_SCORES = "uaseg_case_scores"
#: paths Lightning's ModelCheckpoint restores from a checkpoint (and may delete or rewrite later)
CALLBACK_PATHS = ("dirpath", "best_model_path", "kth_best_model_path", "last_model_path")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_records(checkpoint: Mapping, source: str | Path) -> None:
    """A :class:`CheckpointError` naming ``source`` and the key of the first unsound record."""
    for key, problem in _problems(checkpoint):
        raise CheckpointError(f"{source}: {key}: {problem}; the checkpoint was damaged or edited (use another one, "
                              "or the run's own copy)")


def _bad_path(p: Any) -> bool:
    """A stored checkpoint path that steps out with ``..`` (Lightning's deletion guard compares
    unresolved paths) or names a remote file system (which Lightning deletes from unchecked)."""
    return isinstance(p, str) and ("://" in p or ".." in Path(p).parts)


def _problems(ckpt: Mapping):
    from uaseg.selective.result import ThresholdGrid
    from uaseg.uncertainty.confidnet import ConfidenceHead

    def grid(key: str, value: Any):
        try:
            ThresholdGrid.from_dict(value if isinstance(value, Mapping) else {})
        except ValueError as e:
            yield key, str(e)

    if ckpt.get(VAL_CURVE) is not None:
        yield from grid(VAL_CURVE, ckpt[VAL_CURVE])
    curves = ckpt.get(VAL_CURVES)
    if curves is not None:
        if not isinstance(curves, Mapping):
            yield VAL_CURVES, f"expected score -> curve, got a {type(curves).__name__}"
            return
        for name, value in curves.items():
            yield from grid(f"{VAL_CURVES}.{name}", value)
    if TEMPERATURE in ckpt:
        t = ckpt[TEMPERATURE]
        if not (_number(t) and math.isfinite(t) and t > 0):
            yield TEMPERATURE, f"{t!r} is not a positive finite number"
    head = ckpt.get(HEAD)
    if head is not None:
        try:
            ConfidenceHead.from_record(head if isinstance(head, Mapping) else {})
        except ValueError as e:
            yield HEAD, str(e)
        if isinstance(head, Mapping) and head.get("val_curve") is not None:
            yield from grid(f"{HEAD}.val_curve", head["val_curve"])
    if ckpt.get(CASE_SCORES) is not None:
        from uaseg.shift.referral import drift_problem

        problem = drift_problem(ckpt[CASE_SCORES])
        if problem:
            yield CASE_SCORES, problem
    callbacks = ckpt.get("callbacks")
    for name, state in callbacks.items() if isinstance(callbacks, Mapping) else ():
        if not isinstance(state, Mapping):
            continue
        best_k = state.get("best_k_models")
        paths = [(k, state.get(k)) for k in CALLBACK_PATHS]
        paths += [("best_k_models", k) for k in (best_k if isinstance(best_k, Mapping) else ())]
        for key, p in paths:
            if _bad_path(p):
                yield f"callbacks.{name}.{key}", f"{p!r} steps out of its folder or is not a local file"
    risk = ckpt.get(RISK_CONTROL)
    if risk is not None:
        cals = risk.get("calibrations") if isinstance(risk, Mapping) else None
        if not isinstance(cals, Mapping) or not all(isinstance(by, Mapping) for by in cals.values()):
            yield RISK_CONTROL, "expected calibrations: method -> alpha -> calibration"
            return
        for method, by in cals.items():
            for alpha, cal in by.items():
                t = cal.get("threshold") if isinstance(cal, Mapping) else "?"
                a = cal.get("alpha") if isinstance(cal, Mapping) else "?"
                if not (t is None or (_number(t) and not math.isnan(t))) or not (_number(a) and 0 < a < 1):
                    yield (f"{RISK_CONTROL}.calibrations.{method}.{alpha}",
                           f"threshold {t!r} and alpha {a!r}: expected a number (not NaN) and an alpha in (0, 1)")
