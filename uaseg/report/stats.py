"""Per-fold values, their mean/spread, and paired tests (across folds, across cases).

The unit of replication is the fold: a fold's value is the mean over its runs (several seeds,
or duplicate baselines of a sweep that also varied a loss key), the headline is the mean over
folds of those per-fold values, spread = sample std over folds (ddof = 1), n = folds.
Fold-level test: pairs = folds present in both arms; Wilcoxon signed-rank when n >= 5 (its
smallest two-sided p with n = 4 is 0.125, so it could never reject), else the paired t-test.
Case-level test: pairs = (fold, case_id) present in both arms, Wilcoxon signed-rank.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

WILCOXON_MIN_N = 5


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def fold_values(arm, getter) -> dict:
    """fold -> mean over that fold's runs of ``getter(result)`` (None/NaN values left out)."""
    if arm is None:
        return {}
    out = {}
    for fold, runs in arm.by_fold().items():
        vals = [v for v in (getter(r.result) for r in runs) if _finite(v)]
        if vals:
            out[fold] = float(np.mean(vals))
    return out


def describe(values) -> tuple[float, float, int]:
    """(mean, sample std, n); std NaN when n < 2, everything NaN when n == 0."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


def _paired(a: dict, b: dict):
    keys = [k for k in a if k in b]
    return np.array([a[k] for k in keys]), np.array([b[k] for k in keys])


def paired_test(base: dict, ours: dict, *, force: str | None = None) -> tuple[float, str, int]:
    """(p, test name, n pairs) for ours vs base paired by key; p NaN when untestable."""
    x, y = _paired(base, ours)
    n = len(x)
    test = force or ("wilcoxon" if n >= WILCOXON_MIN_N else "paired t")
    if n < 2:
        return math.nan, "none (n<2)", n
    d = y - x
    if np.all(d == 0):
        return 1.0, f"{test} (all equal)", n
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if test == "wilcoxon":
                p = stats.wilcoxon(y, x).pvalue
            else:
                p = stats.ttest_rel(y, x).pvalue
        except ValueError:
            p = math.nan
    return float(p), test, n


def case_values(arm, cov_key: str, group: str | None = None) -> dict:
    """(fold, case_id) -> per-case Dice at ``cov_key`` (mean over the fold's runs); with
    ``group``, only that group's cases."""
    return _case_field(arm, cov_key, "dice", group)


def case_coverages(arm, cov_key: str, group: str | None = None) -> dict:
    """(fold, case_id) -> that case's own coverage at the global threshold for ``cov_key``."""
    return _case_field(arm, cov_key, "coverage", group)


def _case_field(arm, cov_key, field, group):
    if arm is None:
        return {}
    acc: dict = {}
    for fold, runs in arm.by_fold().items():
        for r in runs:
            for c in r.result.cases or []:
                if group is not None and c.group != group:
                    continue
                point = c.at_coverage.get(cov_key)
                v = getattr(point, field) if point is not None else None
                if _finite(v):
                    acc.setdefault((fold, c.case_id), []).append(v)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def relative_change(base: float, ours: float) -> float:
    """(ours - base) / base in percent; NaN when base is 0 or missing."""
    if not (_finite(base) and _finite(ours)) or base == 0:
        return math.nan
    return 100.0 * (ours - base) / base
