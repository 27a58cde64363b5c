"""Monte-Carlo proof that the risk-control guarantees hold on a set of cases.

Repeat ``splits`` times: split the cases at random into ``n_cal`` calibration and the rest test,
calibrate on the first part (:func:`.risk_control.calibrate`, the code a run uses), measure on the
second. A random split makes calibration and test cases exchangeable whatever the cases are, so:

* CRC: the mean over splits of the test risk must be <= alpha, up to Monte-Carlo error (the
  standard error over splits is printed with it);
* LTT: ``P(R(t) > alpha) <= delta``. ``R`` is an expectation over new cases; a finite test part
  only estimates it, so we report two rates: ``violation`` -- the test part's mean risk above alpha
  (what the issue asks; with a small test part its own noise adds violations the guarantee does not
  cover) -- and ``violation_pool`` -- the risk over all cases above alpha: the population is then
  the pool itself and the calibration part a sample without replacement from it, for which the
  Hoeffding and Bentkus bounds still hold (Hoeffding 1963, Thm. 4: convex order), so this rate
  is the exact check.
"""
from __future__ import annotations

import math

import numpy as np

from .case_losses import CaseLosses
from .risk_control import NEG_INF, calibrate, min_calibration_cases


def check_splits(losses: CaseLosses, alphas, methods=("crc", "ltt"), delta: float = 0.1,
                 n_cal: int | None = None, splits: int = 500, seed: int = 0) -> list[dict]:
    """One dict per (method, alpha): the split statistics above (see the module docstring)."""
    m = losses.n_cases
    n_cal = m // 2 if n_cal is None else int(n_cal)
    if not 1 <= n_cal < m:
        raise ValueError(f"need 1 <= n_cal < number of cases ({m}), got n_cal={n_cal}")
    rng = np.random.default_rng(seed)
    if losses.pooled is None:
        losses = losses.with_pooled_index()
    keys = [(meth, float(a)) for meth in methods for a in alphas]
    rec = {k: np.zeros((splits, 4)) for k in keys}   # test risk, coverage, pool risk, refer-all
    for r in range(splits):
        perm = rng.permutation(m)
        cal, test = perm[:n_cal], perm[n_cal:]
        for meth, a in keys:
            c = calibrate(losses, a, meth, delta, cases=cal)
            rec[(meth, a)][r] = (losses.loss_at(c.threshold, test).mean(),
                                 losses.coverage_at(c.threshold, test),
                                 losses.loss_at(c.threshold).mean(), c.threshold == NEG_INF)
    rows = []
    for (meth, a), v in rec.items():
        risk, cov, pool, refer_all = v.T
        viol, viol_pool = np.mean(risk > a), np.mean(pool > a)
        row = {"method": meth, "alpha": a, "delta": delta if meth == "ltt" else None,
               "n_cal": n_cal, "n_test": m - n_cal, "splits": splits,
               "n_min": min_calibration_cases(a, meth, delta if meth == "ltt" else None),
               "mean_test_risk": float(risk.mean()), "se_test_risk": float(risk.std(ddof=1) / math.sqrt(splits)),
               "violation": float(viol), "violation_pool": float(viol_pool),
               "mean_coverage": float(cov.mean()), "refer_all": float(refer_all.mean())}
        if meth == "crc":   # E[test risk] <= alpha up to 3 standard errors
            row["holds"] = bool(row["mean_test_risk"] <= a + 3 * row["se_test_risk"] + 1e-12)
        else:               # P(risk > alpha) <= delta up to 3 binomial standard errors
            row["holds"] = bool(viol_pool <= delta + 3 * math.sqrt(delta * (1 - delta) / splits))
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of :func:`check_splits` rows."""
    head = ("method", "alpha", "delta", "n_cal", "n_test", "mean test risk (se)", "P(test risk>a)",
            "P(pool risk>a)", "mean coverage", "refer all", "guarantee")
    lines = [" | ".join(head), " | ".join("-" * len(h) for h in head)]
    for r in rows:
        target = f"E<={r['alpha']:g}" if r["method"] == "crc" else f"P<={r['delta']:g}"
        lines.append(" | ".join([
            r["method"], f"{r['alpha']:g}", "-" if r["delta"] is None else f"{r['delta']:g}",
            str(r["n_cal"]), str(r["n_test"]), f"{r['mean_test_risk']:.4f} ({r['se_test_risk']:.4f})",
            f"{r['violation']:.3f}", f"{r['violation_pool']:.3f}", f"{r['mean_coverage']:.4f}",
            f"{r['refer_all']:.3f}", f"{target}: {'holds' if r['holds'] else 'VIOLATED'}"]))
    return "\n".join(lines)
