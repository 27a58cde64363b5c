"""Selective-classification risk-coverage metrics with fd-shifts' definitions.

Conventions follow ``fd_shifts/analysis/rc_stats.py`` (Traub et al. 2024), with
confidence = -uncertainty:

* one curve point per distinct threshold, from coverage 1 downwards; voxels with
  equal uncertainty are removed together;
* selective risk = residual sum among covered / number covered; the curve is closed
  with a point at coverage 0 carrying the *last* selective risk (flat extension);
* generalized risk = residual sum among covered / n (all voxels); closed with
  (coverage 0, risk 0);
* AURC / AUGRC = trapezoid area (``-np.trapz(risk, coverage)``);
* E-AURC = AURC - optimal AURC, the optimum for binary residuals being fd-shifts'
  closed form ``err + (1-err) * log(1-err+eps)`` (``err`` = error rate; with
  plateaus or few samples E-AURC can be slightly negative, as in fd-shifts).

Values are fractions in [0, 1]; fd-shifts displays them x1000.  The curve can have as
many points as voxels, so the area is accumulated chunk by chunk over the sorted
values and only a plotting subsample of the points is kept when ``max_points`` is set.
"""
from __future__ import annotations

import numpy as np

from .coverage import SortedIndex


class _Trapezoid:
    """Running trapezoid sum over points fed in any monotone coverage order."""

    def __init__(self):
        self.area = 0.0
        self.last = None

    def add(self, cov: np.ndarray, risk: np.ndarray):
        if cov.size == 0:
            return
        if self.last is not None:
            cov = np.concatenate([[self.last[0]], cov])
            risk = np.concatenate([[self.last[1]], risk])
        self.area += float(np.sum(np.abs(np.diff(cov)) * (risk[1:] + risk[:-1]) * 0.5))
        self.last = (cov[-1], risk[-1])


def rc_core(index, res_u_sorted: np.ndarray, res_cum: np.ndarray,
            max_points: int | None = None, value_of=None) -> dict:
    """AURC/AUGRC over every distinct threshold of ``index``.

    ``res_u_sorted`` ascending uncertainty of voxels with a residual, ``res_cum`` the
    cumulative residual sum in that order (all ones for wrong/right voxels).
    """
    n = index.n
    total = float(res_cum[-1]) if res_cum.size else 0.0
    sel, gen = _Trapezoid(), _Trapezoid()
    keep_c, keep_s, keep_g, keep_t = [], [], [], []
    last_bin = None
    first_sel = None
    cum0 = np.concatenate([[0.0], res_cum])   # cum0[j]: residual sum of the first j
    for vals, cnt in index.iter_distinct():
        j = np.searchsorted(res_u_sorted, vals, side="right")
        err = cum0[j]
        cov = cnt / n
        srisk = err / cnt
        grisk = err / n
        if first_sel is None:  # anchor at coverage 0 (fd-shifts), chain runs upwards
            first_sel = float(srisk[0])
            sel.add(np.array([0.0]), np.array([first_sel]))
            gen.add(np.array([0.0]), np.array([0.0]))
        sel.add(cov, srisk)
        gen.add(cov, grisk)
        if max_points is None:
            keep = np.ones(vals.size, bool)
        else:
            b = np.floor(cov * max_points).astype(np.int64)
            keep = np.ones(vals.size, bool)
            keep[1:] = b[1:] != b[:-1]
            if last_bin is not None and b[0] == last_bin:
                keep[0] = False
            last_bin = b[-1]
            keep[-1] = True
        keep_c.append(cov[keep]); keep_s.append(srisk[keep])
        keep_g.append(grisk[keep]); keep_t.append(vals[keep])
    cov = np.concatenate(keep_c)[::-1] if keep_c else np.zeros(0)
    srisk = np.concatenate(keep_s)[::-1] if keep_s else np.zeros(0)
    grisk = np.concatenate(keep_g)[::-1] if keep_g else np.zeros(0)
    thr = np.concatenate(keep_t)[::-1].astype(np.float64) if keep_t else np.zeros(0)
    if value_of is not None:
        thr = value_of(thr)
    err = total / n if n else 0.0
    return {
        "aurc": sel.area,
        "augrc": gen.area,
        "error_rate": err,
        "coverage": np.concatenate([cov, [0.0]]),
        "selective_risk": np.concatenate([srisk, srisk[-1:] if srisk.size else [0.0]]),
        "generalized_risk": np.concatenate([grisk, [0.0]]),
        "threshold": np.concatenate([thr, [-np.inf]]),
    }


def optimal_aurc_binary(error_rate: float) -> float:
    """fd-shifts' closed-form optimal AURC for binary residuals."""
    e = float(error_rate)
    return e + (1.0 - e) * np.log(1.0 - e + np.finfo(np.float64).eps)


def voxel_rc_from_index(index, wrong_u_sorted: np.ndarray, max_points=None,
                        value_of=None) -> dict:
    cum = np.arange(1, wrong_u_sorted.size + 1, dtype=np.float64)
    out = rc_core(index, wrong_u_sorted, cum, max_points=max_points, value_of=value_of)
    out["eaurc"] = float(out["aurc"] - optimal_aurc_binary(out["error_rate"]))
    return out


def voxel_risk_coverage(uncertainty, correct, max_points: int | None = None) -> dict:
    """Voxel-level AURC, E-AURC, AUGRC and the curve (``correct``: bool per voxel).

    Returns ``aurc, eaurc, augrc, error_rate`` and arrays ``coverage`` (descending, ending
    at 0), ``selective_risk``, ``generalized_risk``, ``threshold`` (``-inf`` at c=0).
    """
    u = np.asarray(uncertainty).ravel()
    ok = np.asarray(correct).ravel().astype(bool)
    if u.shape != ok.shape:
        raise ValueError(f"uncertainty {u.shape} and correct {ok.shape} differ in size")
    if u.size == 0:
        raise ValueError("empty input")
    if np.isnan(u).any():
        raise ValueError("uncertainty contains NaN")
    return voxel_rc_from_index(SortedIndex(u), np.sort(u[~ok]), max_points=max_points)


def residual_risk_coverage(uncertainty, residual) -> dict:
    """fd-shifts selective-risk AURC for continuous residuals (e.g. 1 - Dice per case)."""
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    r = np.asarray(residual, dtype=np.float64).ravel()
    order = np.argsort(u, kind="stable")
    return rc_core(SortedIndex(u), u[order], np.cumsum(r[order]))
