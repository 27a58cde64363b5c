"""Case-level failure detection: one uncertainty per case vs. its risk 1 - Dice.

The per-case uncertainty is an explicit, swappable aggregation of the voxel map
(name -> function registry, as in IML-DKFZ/values).  Risk is 1 - Dice at full
coverage; AURC uses the same fd-shifts selective-risk curve as the voxel metrics
(reported in percent, like the Dice AURC), with a seeded percentile bootstrap over
cases for the 95% interval.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

CASE_AGGREGATIONS: dict[str, Callable[[np.ndarray], float]] = {
    "mean": lambda u: float(np.mean(u, dtype=np.float64)),
    "p95": lambda u: float(np.percentile(u, 95)),
    "max": lambda u: float(np.max(u)),
    # volume of uncertain voxels: how many voxels would be referred at u > 0.5
    "sum_over_0.5": lambda u: float(np.count_nonzero(u > 0.5)),
}


def register_case_aggregation(name: str, fn: Callable[[np.ndarray], float]) -> None:
    CASE_AGGREGATIONS[name] = fn


def aggregate_case_uncertainty(name: str, u: np.ndarray) -> float:
    if name not in CASE_AGGREGATIONS:
        raise ValueError(f"unknown case aggregation {name!r}; known: {sorted(CASE_AGGREGATIONS)}")
    return CASE_AGGREGATIONS[name](u)


def case_level_aurc(case_uncertainty, case_risk, bootstrap: int = 1000, seed: int = 0) -> dict:
    """AURC (%) of ranking cases by uncertainty against risk, with a bootstrap CI."""
    from .voxel_rc import residual_risk_coverage

    u = np.asarray(case_uncertainty, dtype=np.float64)
    r = np.asarray(case_risk, dtype=np.float64)
    aurc = 100.0 * residual_risk_coverage(u, r)["aurc"]
    ci = [aurc, aurc]
    if bootstrap and u.size > 1:
        rng = np.random.default_rng(seed)
        vals = np.empty(bootstrap)
        for i in range(bootstrap):
            idx = rng.integers(0, u.size, u.size)
            vals[i] = 100.0 * residual_risk_coverage(u[idx], r[idx])["aurc"]
        ci = [float(v) for v in np.percentile(vals, [2.5, 97.5])]
    return {"aurc": float(aurc), "ci95": ci}
