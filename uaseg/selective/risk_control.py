"""A referral threshold with a statistical guarantee on the Dice risk (usable without Lightning).

The loss of case ``i`` at threshold ``t`` is ``L_i(t) = 1 - Dice_i`` with the voxels of ``u > t``
referred (exact, non-decreasing in ``t``: :mod:`.case_losses`). From ``n`` calibration cases:

* ``crc`` -- Conformal Risk Control (Angelopoulos, Bates, Fisch, Lei, Schuster, ICLR 2024): the
  largest ``t`` with ``(n/(n+1)) R_n(t) + 1/(n+1) <= alpha`` (``R_n`` = mean ``L_i``; losses in
  [0, 1]). Then ``E[L_test(t)] <= alpha``, the expectation over calibration and test case.
* ``ltt`` -- Learn-then-Test (Angelopoulos, Bates, Candes, Jordan, Lei, 2021) with the
  Hoeffding-Bentkus p-value of Bates et al. (RCPS, JACM 2021) for ``H_t: R(t) > alpha``, tested in
  fixed sequence from the most referral (lowest ``t``) up, stopping at the first ``p > delta``.
  Then ``P(R(t) <= alpha) >= 1 - delta`` over the calibration cases, ``R`` the expected case loss.

Exact over every distinct ``u`` of the calibration voxels: the risk only changes at wrong voxels'
``u``, so the answer is the largest calibration ``u`` below the first breakpoint where the condition
fails (any value up to that breakpoint carries the same guarantee; we keep the calibration value,
which refers slightly more on new images). The candidates depend on the data, which is fine here:
with monotone losses both proofs only need the chosen ``t`` to satisfy the condition (for LTT the
first threshold with ``R > alpha`` is fixed, and every ``t`` above it has a larger p-value).

Infeasible -- too few cases for ``alpha`` (CRC: ``1/(n+1) > alpha``; LTT: ``(1-alpha)^n > delta``)
-- gives ``t = -inf``: refer everything (its risk is 0), with ``feasible = False`` and said plainly.
Both guarantees are on the mean over cases (CRC: in expectation; LTT: with probability), not on every
case: :func:`evaluate` also reports the spread of ``L_i`` and the fraction of cases above ``alpha``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .case_losses import CaseLosses, case_losses
from .case_stats import CaseStats
from .dice_curve import case_dice, counts_at_threshold

METHODS = ("crc", "ltt")
NEG_INF = -math.inf
QUANTILES = (0.5, 0.9, 0.95)


def alpha_key(alpha: float) -> str:
    """``0.05 -> "0.05"``: the key of a calibration in checkpoints and ``summary.json``."""
    return f"{float(alpha):g}"


def check_settings(alpha: float, method: str, delta: float | None) -> None:
    if method not in METHODS:
        raise ValueError(f"risk control method must be one of {METHODS}, got {method!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if method == "ltt" and (delta is None or not 0.0 < float(delta) < 1.0):
        raise ValueError(f"ltt needs delta in (0, 1), got {delta}")


def hb_pvalue(loss_sum, n: int, alpha: float) -> np.ndarray:
    """Hoeffding-Bentkus p-value for ``H: R > alpha`` from ``loss_sum`` = n x mean loss in [0, 1]
    (Bates et al. 2021, Prop. 3.2; LTT eq. 13): ``min(exp(-n h(min(R,a), a)), e P(Bin(n,a) <=
    ceil(n R)))``, ``h(x, a) = x log(x/a) + (1-x) log((1-x)/(1-a))``. ``n R`` is a float sum: values
    within 1e-9 of an integer count as that integer."""
    from scipy.special import xlogy
    from scipy.stats import binom

    s = np.asarray(loss_sum, dtype=np.float64)
    r = np.minimum(s / n, alpha)
    h = xlogy(r, r / alpha) + xlogy(1 - r, (1 - r) / (1 - alpha))
    hoeffding = np.exp(-n * h)
    bentkus = math.e * binom.cdf(np.ceil(s - 1e-9), n, alpha)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def _ok(method: str, sums, n: int, alpha: float, delta: float | None) -> np.ndarray:
    """Does the condition hold at calibration risk ``sums / n``? (monotone: True, then False)."""
    sums = np.asarray(sums, dtype=np.float64)
    if method == "crc":
        return (sums + 1.0) / (n + 1) <= alpha
    if method == "ltt":
        return hb_pvalue(sums, n, alpha) <= delta
    if method == "empirical":  # the test set's own best: no guarantee (the oracle)
        return sums / n <= alpha
    raise ValueError(method)


def min_calibration_cases(alpha: float, method: str, delta: float | None = None) -> int:
    """Fewest calibration cases for which any threshold but "refer everything" can be certified."""
    check_settings(alpha, method, delta)
    guess = math.ceil(1 / alpha - 1) if method == "crc" else math.ceil(math.log(delta) / math.log1p(-alpha))
    n = max(1, guess - 2)
    while not _ok(method, 0.0, n, alpha, delta):
        n += 1
    while n > 1 and _ok(method, 0.0, n - 1, alpha, delta):
        n -= 1
    return n


def _largest_threshold(losses: CaseLosses, cases, method, alpha, delta) -> tuple[float, bool]:
    """(largest calibration threshold meeting the condition, feasible)."""
    values, sums, n = losses.risk_steps(cases)
    if not _ok(method, 0.0, n, alpha, delta):
        return NEG_INF, False
    bad = np.flatnonzero(~_ok(method, sums, n, alpha, delta))
    if bad.size == 0:
        return losses.max_u(cases), True
    return losses.below(float(values[bad[0]]), cases), True


def _spread(loss: np.ndarray, alpha: float) -> dict:
    q = np.quantile(loss, QUANTILES)
    return {"case_risk": {**{f"p{round(100 * p)}": float(v) for p, v in zip(QUANTILES, q)},
                          "max": float(loss.max())},
            "fraction_above_alpha": float(np.mean(loss > alpha))}


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold: refer voxels with ``u > threshold`` (``-inf``: refer everything)."""

    method: str
    alpha: float
    delta: float | None
    n_calibration: int
    threshold: float
    feasible: bool
    risk: float            # mean L_i at the threshold on the calibration cases
    coverage: float        # fraction of calibration voxels covered
    spread: dict = field(default_factory=dict)  # calibration L_i quantiles, fraction above alpha

    @property
    def statement(self) -> str:
        """One sentence: what is guaranteed, and what is not."""
        n, a = self.n_calibration, self.alpha
        if not self.feasible:
            return (f"{n} calibration cases cannot certify a Dice risk of {a:g} with {self.method} "
                    f"(at least {min_calibration_cases(a, self.method, self.delta)} needed): every "
                    "voxel is referred.")
        where = ("every voxel is referred (no threshold that covers voxels meets the bound)"
                 if self.threshold == NEG_INF else f"voxels with uncertainty above {self.threshold:.6g} are referred")
        if self.method == "crc":
            return (f"Conformal risk control on {n} calibration cases: {where}, and for a new case "
                    f"exchangeable with them the expected Dice risk (1 - Dice, referred voxels "
                    f"counted as correct) is at most {a:g}; this bounds the average over cases, "
                    "not every case.")
        return (f"Learn-then-Test (Hoeffding-Bentkus) on {n} calibration cases: {where}, and with "
                f"probability at least {1 - self.delta:g} over the calibration cases the expected "
                f"Dice risk (1 - Dice, referred voxels counted as correct) of new cases from the "
                f"same distribution is at most {a:g}; this bounds the average over cases, not every case.")

    def to_dict(self) -> dict:
        """Plain Python types (stored in checkpoints; ``-inf`` stays a float there)."""
        return {**asdict(self), "statement": self.statement}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        t = d.get("threshold")
        return cls(str(d["method"]), float(d["alpha"]), None if d.get("delta") is None else float(d["delta"]),
                   int(d["n_calibration"]), NEG_INF if t is None else float(t), bool(d["feasible"]),
                   float(d["risk"]), float(d["coverage"]), dict(d.get("spread") or {}))


def calibrate(losses: CaseLosses | list[CaseStats], alpha: float, method: str = "crc",
              delta: float | None = None, cases=None) -> Calibration:
    """Calibrate on ``cases`` (indices into ``losses``; default all). ``delta`` is used by ``ltt``."""
    check_settings(alpha, method, delta)
    if not isinstance(losses, CaseLosses):
        losses = case_losses(list(losses))
    delta = float(delta) if (method == "ltt" and delta is not None) else None
    t, feasible = _largest_threshold(losses, cases, method, float(alpha), delta)
    loss = losses.loss_at(t, cases)
    return Calibration(method, float(alpha), delta, int(loss.size), float(t), feasible,
                       float(loss.mean()), losses.coverage_at(t, cases), _spread(loss, alpha))


def evaluate(calibration: Calibration, stats: list[CaseStats]) -> dict:
    """The calibrated threshold on held-out cases (exact counts), with the oracle: the coverage these
    cases themselves would have allowed at risk ``alpha`` (no guarantee) and the coverage lost."""
    if not stats:
        raise ValueError("no cases to evaluate")
    t, alpha = calibration.threshold, calibration.alpha
    loss = 1.0 - case_dice(counts_at_threshold(stats, t))
    n_vox = sum(s.n for s in stats)
    coverage = float(sum(int(s.index.count_le(t)) for s in stats)) / n_vox
    losses = case_losses(stats)
    t_oracle, _ = _largest_threshold(losses, None, "empirical", alpha, None)
    oracle = losses.coverage_at(t_oracle)
    spread = _spread(loss, alpha)
    return {
        **{k: v for k, v in calibration.to_dict().items() if k not in ("risk", "coverage", "spread")},
        "calibration_risk": calibration.risk, "calibration_coverage": calibration.coverage,
        "calibration_case_risk": calibration.spread.get("case_risk"),
        "calibration_fraction_above_alpha": calibration.spread.get("fraction_above_alpha"),
        "n_test": len(stats), "test_risk": float(loss.mean()), "test_coverage": coverage,
        "test_case_risk": spread["case_risk"], "test_fraction_above_alpha": spread["fraction_above_alpha"],
        "oracle_threshold": t_oracle, "oracle_coverage": oracle, "coverage_lost": oracle - coverage,
    }


def evaluate_all(record: dict, stats: list[CaseStats]) -> dict:
    """``{method: {alpha_key: evaluate(...)}}`` for every calibration of a checkpoint record."""
    out: dict = {}
    for method, by_alpha in (record.get("calibrations") or {}).items():
        for key, d in by_alpha.items():
            out.setdefault(method, {})[key] = evaluate(Calibration.from_dict(d), stats)
    return out
