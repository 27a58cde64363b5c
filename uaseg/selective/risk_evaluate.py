"""A calibrated referral threshold on held-out cases (:mod:`.risk_control` calibrates it): the realised
risk of every kind, the coverage, and the oracle coverage those cases would have allowed."""

from __future__ import annotations

import numpy as np

from .case_losses import RiskLosses, risk_losses
from .case_stats import CaseStats
from .risk_control import Calibration, loss_spread, realised_values, tail_beta, threshold_for


def evaluate(calibration: Calibration, stats: list[CaseStats], units: dict | None = None,
             class_names=None, losses: RiskLosses | None = None) -> dict:
    """The calibrated threshold on held-out cases (exact counts; per patient when the calibration was
    and ``units`` names them), with every kind's realised value and the oracle: the coverage these
    cases themselves would have allowed at risk ``alpha`` (no guarantee) and the coverage lost.
    ``losses``: ``risk_losses(stats, kind, units)`` when the caller already has it."""
    if not stats:
        raise ValueError("no cases to evaluate")
    t, alpha, kind = calibration.threshold, calibration.alpha, calibration.risk_kind
    units = units if calibration.unit == "patient" else None
    rl = risk_losses(stats, kind, units) if losses is None else losses
    loss = np.stack([c.loss_at(t) for c in rl.components], axis=1)
    n_vox = sum(s.n for s in stats)
    coverage = float(sum(int(s.index.count_le(t)) for s in stats)) / n_vox
    t_oracle, _, _ = threshold_for(rl, alpha, "empirical", None)
    oracle = rl.components[0].coverage_at(t_oracle)
    spread = loss_spread(loss.max(1), alpha)
    return {
        **{k: v for k, v in calibration.to_dict().items() if k not in ("risk", "coverage", "spread", "values")},
        "calibration_risk": calibration.risk, "calibration_coverage": calibration.coverage,
        "calibration_case_risk": calibration.spread.get("case_risk"),
        "calibration_fraction_above_alpha": calibration.spread.get("fraction_above_alpha"),
        "calibration_values": calibration.values,
        "n_test": rl.n_units, "n_test_images": len(stats),
        "test_risk": float(loss.mean(0).max()), "test_coverage": coverage,
        "test_case_risk": spread["case_risk"], "test_fraction_above_alpha": spread["fraction_above_alpha"],
        "test_values": realised_values(stats, t, tail_beta(kind, alpha), units, class_names),
        "oracle_threshold": t_oracle, "oracle_coverage": oracle, "coverage_lost": oracle - coverage,
    }


def evaluate_all(record: dict, stats: list[CaseStats], units: dict | None = None, class_names=None) -> dict:
    """``{method: {key: evaluate(...)}}`` for every calibration of a checkpoint record; the test losses
    are built once per (kind, unit), not once per calibration."""
    out: dict = {}
    built: dict = {}
    for method, by_key in (record.get("calibrations") or {}).items():
        for key, d in by_key.items():
            cal = Calibration.from_dict(d)
            u = units if cal.unit == "patient" else None
            if (cal.kind, cal.unit) not in built:
                built[cal.kind, cal.unit] = risk_losses(stats, cal.risk_kind, u) if stats else None
            out.setdefault(method, {})[key] = evaluate(cal, stats, units, class_names, built[cal.kind, cal.unit])
    return out
