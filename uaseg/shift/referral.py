"""Case-level remedies: refer a whole case, and say when an input looks unlike the calibration cases.

**Case-level referral** (:func:`calibrate_case_referral`). Each calibration case ``i`` has a case
score ``s_i`` (its aggregated voxel uncertainty, ``eval.case_aggregation``) and fails when its Dice
at coverage 1 is below a bar. A case is accepted when ``s_i <= t`` and referred whole otherwise. The
0/1 loss ``L_i(t) = 1{s_i <= t and case i fails}`` -- a *silent failure*: a failing case let through --
is non-decreasing in ``t``, so the risk-control machinery of :mod:`uaseg.selective.risk_bounds`
applies exactly: CRC gives ``E[L_new(t)] <= alpha``, LTT with the exact binomial p-value (the
losses are 0/1) gives ``P(R(t) <= alpha) >= 1 - delta``, ``R(t)`` the probability that a new case is
accepted and fails, for new cases exchangeable with the calibration cases. Like the voxel threshold
(:mod:`uaseg.selective.risk_control`) the answer is the largest calibration score below the first
breakpoint where the condition fails; no calibration case failing, it is the largest score.

**Among the accepted cases** (``among="accepted"``, LTT only). The fraction of *accepted* cases that
fail, ``R_acc(t) = P(fail | s <= t)``, is not monotone in ``t``, so CRC does not apply. Candidate
thresholds are order statistics: ``t_m`` the ``m``-th smallest calibration score, for a set ``M`` of
counts ``m`` fixed from ``n, alpha, delta`` alone (:func:`accepted_counts`). Given ``t_m``, the ``m - 1``
cases below it are i.i.d. accepted cases (scores continuous), so their failures are
``Bin(m - 1, R_acc(t_m))`` and ``P(Bin(m - 1, alpha) <= k)`` is a valid p-value of ``R_acc(t_m) > alpha``.
Bonferroni over ``M`` (each at ``delta / |M|``) and the largest rejected ``m``:
``P(R_acc(t) <= alpha) >= 1 - delta`` (the selection-with-guaranteed-risk argument of Geifman and
El-Yaniv, 2017). The price: with no failure at all it needs ``n >= 1 + log(delta) / log(1 - alpha)``
calibration cases (23 at alpha = delta = 0.1), and more to accept all but a few.

**Drift range** (:func:`drift_record`, :func:`drift_check`): the validation cases' scores, stored in
the checkpoint as plain numbers. A new input whose score lies outside their range gets a warning;
for a new case exchangeable with the ``n`` validation cases this happens with probability at most
``2 / (n + 1)`` (each side ``1 / (n + 1)``: the conformal rank argument), so the warning's own
false-alarm rate is known. The record carries the two-sided conformal p-value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from uaseg.selective.case_stats import CaseStats
from uaseg.selective.coverage import SortedIndex
from uaseg.selective.dice_curve import case_dice
from uaseg.selective.risk_bounds import condition_holds

from .settings import CaseReferralSettings, accepted_counts

NEG_INF = -math.inf
#: the case score of a case referred whole: above every threshold, so every voxel of it is referred
REFERRED = float(np.finfo(np.float32).max)


def case_scores(stats: list[CaseStats], aggregation: str) -> np.ndarray:
    return np.array([float(s.aggregates[aggregation]) for s in stats], dtype=np.float64)


def case_fails(stats: list[CaseStats], fail_dice: float) -> np.ndarray:
    """Whether each case's Dice at coverage 1 (class mean) is below ``fail_dice``."""
    return np.array([float(case_dice(s.counts)) < fail_dice for s in stats], dtype=bool)


@dataclass(frozen=True)
class CaseReferral:
    """A calibrated case threshold: refer a case whose score exceeds ``threshold`` (-inf: every case)."""

    threshold: float
    feasible: bool
    method: str
    alpha: float
    delta: float | None
    n_calibration: int
    calibration_silent: float     # fraction of calibration cases accepted and failing
    calibration_referred: float   # fraction of calibration cases referred
    among: str = "all"            # what alpha bounds: failing cases among all cases or among accepted ones

    @property
    def statement(self) -> str:
        n, a = self.n_calibration, self.alpha
        what = (f"the fraction of cases accepted that fail (silent failures) is at most {a:g}" if self.among == "all"
                else f"the fraction of the accepted cases that fail is at most {a:g}")
        if not self.feasible:
            return f"{n} calibration cases cannot certify that {what} with {self.method}: every case is referred."
        how = ("in expectation" if self.method == "crc"
               else f"with probability at least {1 - self.delta:g} over the calibration cases")
        return (f"Cases with a score above {self.threshold:.6g} are referred whole; for new cases exchangeable "
                f"with the {n} calibration cases, {how}, {what}.")

    def to_dict(self) -> dict:
        return {**asdict(self), "statement": self.statement}


def calibrate_case_referral(scores, fails, settings: CaseReferralSettings) -> CaseReferral:
    """The largest case threshold whose silent-failure loss meets the condition of ``settings.method``
    at every breakpoint up to it (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    f = np.asarray(fails, dtype=bool)
    n = s.size
    if n == 0:
        raise ValueError("no calibration cases")
    method, alpha = settings.method, settings.alpha
    delta = settings.delta if method == "ltt" else None
    pvalue = "binom" if method == "ltt" else "hb"

    def ok(k) -> np.ndarray:
        return condition_holds(method, np.asarray(k, dtype=np.float64), n, alpha, delta, pvalue)

    if settings.among == "accepted":
        t, feasible = _accepted_threshold(s, f, alpha, settings.delta)
    elif not ok(0.0):
        t, feasible = NEG_INF, False
    else:
        breaks = np.unique(s[f])                          # the loss jumps at failing cases' scores
        sums = np.searchsorted(np.sort(s[f]), breaks, side="right")
        bad = np.flatnonzero(~ok(sums))
        feasible = True
        if bad.size == 0:
            t = float(s.max())
        else:
            below = s[s < breaks[bad[0]]]
            t = float(below.max()) if below.size else NEG_INF
    accepted = s <= t
    return CaseReferral(t, feasible, method, alpha, delta, n, float(np.mean(accepted & f)), float(np.mean(~accepted)),
                        settings.among)


def _accepted_threshold(s: np.ndarray, f: np.ndarray, alpha: float, delta: float) -> tuple[float, bool]:
    """The largest order statistic ``t_m``, ``m`` in :func:`accepted_counts`, whose binomial test of
    ``P(fail | accepted) > alpha`` on the cases below it rejects at ``delta / |M|``."""
    from scipy.stats import binom

    counts = accepted_counts(s.size, alpha, delta)
    order = np.argsort(s, kind="stable")
    ranked = s[order]
    fails_below = np.concatenate([[0], np.cumsum(f[order])])     # failures among the j smallest scores
    for m in counts:                                              # largest first
        t = float(ranked[m - 1])
        below = int(np.searchsorted(ranked, t, side="left"))      # cases strictly below t (ties: fewer)
        if below and binom.cdf(int(fails_below[below]), below, alpha) <= delta / len(counts):
            return t, True
    return NEG_INF, False


def referral_outcome(scores, fails, threshold: float, alpha: float, among: str = "all") -> dict:
    """The realised case referral on held-out cases; ``risk`` is what alpha bounds (``among``), and
    with nothing accepted the fraction among accepted cases is 0 (no case let through)."""
    s, f = np.asarray(scores, dtype=np.float64), np.asarray(fails, dtype=bool)
    acc = s <= threshold
    silent = float(np.mean(acc & f)) if s.size else math.nan
    accepted_failing = float(np.mean(f[acc])) if acc.any() else None
    risk = silent if among == "all" else (accepted_failing or 0.0)
    return {"referred": float(np.mean(~acc)) if s.size else math.nan, "silent_failures": silent,
            "accepted_failing": accepted_failing, "among": among, "risk": risk,
            "holds": bool(risk <= alpha) if s.size else None}


def failure_auroc(scores, fails) -> float | None:
    """AUROC of the case score against failure (higher score = predicted failure; ties count half);
    None when no case fails or every case does."""
    from scipy.stats import rankdata

    s, f = np.asarray(scores, dtype=np.float64), np.asarray(fails, dtype=bool)
    pos, neg = int(f.sum()), int((~f).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[f].sum() - pos * (pos + 1) / 2) / (pos * neg))


def referred_whole(s: CaseStats) -> CaseStats:
    """``s`` with every voxel's uncertainty above any threshold: evaluated at a finite threshold,
    the case is referred whole (Dice 1, coverage 0), exactly as the risk machinery counts referral."""
    from dataclasses import replace

    big = np.float32(REFERRED)
    return replace(s, index=SortedIndex(np.full(s.n, big, dtype=np.float32), assume_sorted=True),
                   ev_u=np.full(s.ev_u.shape, big, dtype=np.float32))


# ------------------------------------------------------------------------------------ drift range
def drift_record(scores, aggregation: str) -> dict | None:
    """The validation case scores as plain data for the checkpoint (None without cases)."""
    v = sorted(float(x) for x in np.asarray(scores, dtype=np.float64).ravel() if math.isfinite(x))
    if not v:
        return None
    return {"aggregation": str(aggregation), "n": len(v), "min": v[0], "max": v[-1], "scores": v}


def drift_check(record: dict, score: float) -> dict:
    """Where a new input's case score lies against the stored validation scores: ``outside`` the range,
    and the two-sided conformal p-value ``min(1, 2 min(p_low, p_high))``."""
    v = np.asarray(record["scores"], dtype=np.float64)
    n = v.size
    p_hi = (1 + int((v >= score).sum())) / (n + 1)
    p_lo = (1 + int((v <= score).sum())) / (n + 1)
    outside = bool(score < v[0] or score > v[-1])
    return {"case_score": float(score), "aggregation": record["aggregation"], "validation_range": [float(v[0]), float(v[-1])],
            "n_validation": int(n), "p_value": float(min(1.0, 2 * min(p_hi, p_lo))), "outside": outside,
            "false_alarm_rate": 2 / (n + 1)}


def drift_problem(record) -> str | None:
    """What is wrong with a stored drift record (a file is untrusted data), or None."""
    from uaseg.selective.case_level import CASE_AGGREGATIONS

    if not isinstance(record, dict):
        return f"expected a mapping, got a {type(record).__name__}"
    v = record.get("scores")
    if record.get("aggregation") not in CASE_AGGREGATIONS:
        return f"aggregation {record.get('aggregation')!r} is not one of {sorted(CASE_AGGREGATIONS)}"
    if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   and math.isfinite(x) for x in v):
        return "scores must be a non-empty list of finite numbers"
    if any(b < a for a, b in zip(v, v[1:])) or record.get("n") != len(v) or record.get("min") != v[0] \
            or record.get("max") != v[-1]:
        return "scores must be sorted, with n, min and max matching them"
    return None
