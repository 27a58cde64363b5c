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
  is the exact check for Hoeffding-Bentkus and the binomial test. The WSR p-value's supermartingale
  argument is for i.i.d. draws; for draws without replacement from the pool it is the same check,
  not a proof.

``structure``: CRC must hold for every class's mean; LTT violates when any class's risk exceeds alpha.
"""
from __future__ import annotations

import math

import numpy as np

from .case_losses import CaseLosses, RiskLosses
from .risk_control import NEG_INF, _as_risk_losses, calibrate, min_calibration_cases


def check_splits(losses: RiskLosses | CaseLosses, alphas, methods=("crc", "ltt"), delta: float = 0.1,
                 n_cal: int | None = None, splits: int = 500, seed: int = 0, pvalues=("hb",)) -> list[dict]:
    """One dict per (method, p-value, alpha): the split statistics above (see the module docstring).
    ``losses`` of one risk kind; for ``structure`` a split violates when any class does, and CRC must
    hold for every class's mean (the per-class means are in ``class_test_risk``)."""
    rl = _as_risk_losses(losses, None, None)
    m = rl.n_units
    n_cal = m // 2 if n_cal is None else int(n_cal)
    if not 1 <= n_cal < m:
        raise ValueError(f"need 1 <= n_cal < number of cases ({m}), got n_cal={n_cal}")
    rng = np.random.default_rng(seed)
    if rl.components[0].pooled is None:
        rl = rl.with_pooled_index()
    comps, cov_of = rl.components, rl.components[0]
    keys = [(meth, pv if meth == "ltt" else None, float(a)) for meth in methods
            for pv in (pvalues if meth == "ltt" else (None,)) for a in alphas]
    k = len(comps)
    rec = {key: {"risk": np.zeros((splits, k)), "pool": np.zeros((splits, k)), "cov": np.zeros(splits),
                 "all": np.zeros(splits)} for key in keys}
    for r in range(splits):
        perm = rng.permutation(m)
        cal, test = perm[:n_cal], perm[n_cal:]
        for key in keys:
            meth, pv, a = key
            c = calibrate(rl, a, meth, delta, cases=cal, pvalue=pv or "hb")
            out = rec[key]
            out["risk"][r] = [cl.loss_at(c.threshold, test).mean() for cl in comps]
            out["pool"][r] = [cl.loss_at(c.threshold).mean() for cl in comps]
            out["cov"][r] = cov_of.coverage_at(c.threshold, test)
            out["all"][r] = c.threshold == NEG_INF
    rows = []
    for (meth, pv, a), v in rec.items():
        risk, pool = v["risk"], v["pool"]
        mean, se = risk.mean(0), risk.std(0, ddof=1) / math.sqrt(splits)
        worst = int(np.argmax(mean - a - 3 * se))          # the class closest to (or past) its bound
        viol, viol_pool = np.mean((risk > a).any(1)), np.mean((pool > a).any(1))
        row = {"kind": rl.kind.key, "unit": "patient" if rl.grouped else "case", "method": meth, "pvalue": pv,
               "alpha": a, "delta": delta if meth == "ltt" else None,
               "n_cal": n_cal, "n_test": m - n_cal, "splits": splits,
               "n_min": min_calibration_cases(a, meth, delta if meth == "ltt" else None, pv or "hb", k),
               "mean_test_risk": float(mean[worst]), "se_test_risk": float(se[worst]),
               "class_test_risk": [float(x) for x in mean] if k > 1 else None,
               "violation": float(viol), "violation_pool": float(viol_pool),
               "mean_coverage": float(v["cov"].mean()), "refer_all": float(v["all"].mean())}
        if meth == "crc":   # E[test risk] <= alpha for every component, up to 3 standard errors
            row["holds"] = bool(np.all(mean <= a + 3 * se + 1e-12))
        else:               # P(any risk > alpha) <= delta up to 3 binomial standard errors
            row["holds"] = bool(viol_pool <= delta + 3 * math.sqrt(delta * (1 - delta) / splits))
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of :func:`check_splits` rows (structure: the mean test risk of the class
    nearest its bound)."""
    head = ("risk", "method", "alpha", "delta", "n_cal", "n_test", "mean test risk (se)", "P(test risk>a)",
            "P(pool risk>a)", "mean coverage", "refer all", "guarantee")
    lines = [" | ".join(head), " | ".join("-" * len(h) for h in head)]
    for r in rows:
        target = f"E<={r['alpha']:g}" if r["method"] == "crc" else f"P<={r['delta']:g}"
        meth = r["method"] if r["method"] == "crc" else f"ltt-{r.get('pvalue') or 'hb'}"
        lines.append(" | ".join([
            r.get("kind", "dice"), meth, f"{r['alpha']:g}", "-" if r["delta"] is None else f"{r['delta']:g}",
            str(r["n_cal"]), str(r["n_test"]), f"{r['mean_test_risk']:.4f} ({r['se_test_risk']:.4f})",
            f"{r['violation']:.3f}", f"{r['violation_pool']:.3f}", f"{r['mean_coverage']:.4f}",
            f"{r['refer_all']:.3f}", f"{target}: {'holds' if r['holds'] else 'VIOLATED'}"]))
    return "\n".join(lines)
