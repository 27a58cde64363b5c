"""The statistics behind a referral guarantee (:mod:`.risk_control`): the settings allowed, the
p-values of Learn-then-Test (Hoeffding-Bentkus, Waudby-Smith-Ramdas, exact binomial), the condition
CRC or LTT checks at a calibration risk, and the fewest calibration units that can certify anything."""

from __future__ import annotations

import math

import numpy as np

from .risk_kinds import parse_kind

METHODS = ("crc", "ltt")
PVALUES = ("hb", "wsr", "binom")


def check_settings(alpha: float, method: str, delta: float | None, pvalue: str = "hb", kind="dice") -> None:
    if method not in METHODS:
        raise ValueError(f"risk control method must be one of {METHODS}, got {method!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if method == "ltt" and (delta is None or not 0.0 < float(delta) < 1.0):
        raise ValueError(f"ltt needs delta in (0, 1), got {delta}")
    if pvalue not in PVALUES:
        raise ValueError(f"ltt p-value must be one of {PVALUES}, got {pvalue!r}")
    if method == "ltt" and pvalue == "binom" and not parse_kind(kind).binary:
        raise ValueError("the binomial p-value is valid only for 0/1 losses: risk kind tail@<beta>")


def hb_pvalue(loss_sum, n: int, alpha: float) -> np.ndarray:
    """Hoeffding-Bentkus p-value for ``H: R > alpha`` from ``loss_sum`` = n x mean loss in [0, 1]
    (Bates et al. 2021, Prop. 3.2; LTT eq. 13): ``min(exp(-n h(min(R,a), a)), e P(Bin(n,a) <=
    ceil(n R)))``, ``h(x, a) = x log(x/a) + (1-x) log((1-x)/(1-a))``. No tolerance on the ceiling: a
    float sum that rounding put just above an integer counts as the next integer (conservative); sums
    of 0/1 losses are exact."""
    from scipy.special import xlogy
    from scipy.stats import binom

    s = np.asarray(loss_sum, dtype=np.float64)
    r = np.minimum(s / n, alpha)
    h = xlogy(r, r / alpha) + xlogy(1 - r, (1 - r) / (1 - alpha))
    hoeffding = np.exp(-n * h)
    bentkus = math.e * binom.cdf(np.ceil(s), n, alpha)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def binom_pvalue(loss_sum, n: int, alpha: float) -> np.ndarray:
    """Exact binomial p-value ``P(Bin(n, alpha) <= n R)`` for 0/1 losses (their sum is an exact integer)."""
    from scipy.stats import binom

    return binom.cdf(np.ceil(np.asarray(loss_sum, dtype=np.float64)), n, alpha)


def wsr_pvalue(losses, alpha: float, delta: float) -> np.ndarray:
    """Waudby-Smith-Ramdas betting p-value for ``H: R > alpha`` (LTT, Angelopoulos et al. 2021,
    Prop. of ``p^WSR``): ``1 / max_i K_i``, ``K_i = prod_{j<=i} (1 - nu_j (L_j - alpha))`` with the
    predictable bet ``nu_j = min(1, sqrt(2 log(1/delta) / (n sigma_{j-1}^2)))``, ``sigma^2`` the running
    variance estimate (``sigma_0^2 = 1/4``). Under H, ``K`` is a non-negative supermartingale, so Ville's
    inequality makes ``p`` valid. ``losses``: (..., n) in the (exchangeable) order of the units."""
    L = np.asarray(losses, dtype=np.float64)
    n = L.shape[-1]
    i = np.arange(1, n + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(L, axis=-1)) / (1 + i)
    sig2 = (0.25 + np.cumsum((L - mu) ** 2, axis=-1)) / (1 + i)
    prev = np.concatenate([np.full(L.shape[:-1] + (1,), 0.25), sig2[..., :-1]], axis=-1)
    nu = np.minimum(1.0, np.sqrt(2 * math.log(1 / delta) / (n * prev)))
    log_k = np.cumsum(np.log1p(-nu * (L - alpha)), axis=-1)
    return np.minimum(1.0, np.exp(-np.maximum(log_k.max(axis=-1), 0.0)))


def condition_holds(method: str, sums, n: int, alpha: float, delta: float | None, pvalue: str = "hb") -> np.ndarray:
    """Does the condition hold at calibration risk ``sums / n``? (``wsr``: at all-zero losses only;
    states with losses go through :func:`_first_failure_wsr`)."""
    sums = np.asarray(sums, dtype=np.float64)
    if method == "crc":
        return (sums + 1.0) / (n + 1) <= alpha
    if method == "ltt":
        if pvalue == "hb":
            return hb_pvalue(sums, n, alpha) <= delta
        if pvalue == "binom":
            return binom_pvalue(sums, n, alpha) <= delta
        if np.any(sums != 0):
            raise ValueError("the wsr p-value needs the losses, not their sum")
        return np.broadcast_to(wsr_pvalue(np.zeros(n), alpha, delta) <= delta, sums.shape)
    if method == "empirical":  # the test set's own best: no guarantee (the oracle)
        return sums / n <= alpha
    raise ValueError(method)


def min_calibration_cases(alpha: float, method: str, delta: float | None = None, pvalue: str = "hb",
                          components: int = 1) -> int:
    """Fewest calibration units for which any threshold but "refer everything" can be certified
    (``components``: losses controlled at once, LTT testing each at ``delta / components``)."""
    check_settings(alpha, method, delta, pvalue, "tail@0.5" if pvalue == "binom" else "dice")
    d = None if delta is None else float(delta) / max(1, components)
    if method == "crc":
        guess = math.ceil(1 / alpha - 1)
    elif pvalue == "wsr":   # all-zero losses: K_n ~ (1 + alpha)^n
        guess = math.ceil(math.log(1 / d) / math.log1p(alpha))
    else:                   # (1 - alpha)^n <= d
        guess = math.ceil(math.log(d) / math.log1p(-alpha))
    n = max(1, guess - 2)
    while not condition_holds(method, 0.0, n, alpha, d, pvalue):
        n += 1
    while n > 1 and condition_holds(method, 0.0, n - 1, alpha, d, pvalue):
        n -= 1
    return n
