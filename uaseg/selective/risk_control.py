"""A referral threshold with a statistical guarantee on a risk of selective segmentation (usable
without Lightning).

The loss of unit ``i`` (a case, or a patient: the mean over its cases) at threshold ``t`` is one of
the kinds of :mod:`.risk_kinds` (``dice``, ``structure``, ``tail@b``, ``fnr``), with the voxels of
``u > t`` referred -- exact, in [0, 1], non-decreasing in ``t`` (:mod:`.case_losses`). From ``n``
calibration units:

* ``crc`` -- Conformal Risk Control (Angelopoulos, Bates, Fisch, Lei, Schuster, ICLR 2024): the
  largest ``t`` with ``(n/(n+1)) R_n(t) + 1/(n+1) <= alpha`` (``R_n`` = mean ``L_i``). Then
  ``E[L_test(t)] <= alpha``, the expectation over calibration and test unit.
* ``ltt`` -- Learn-then-Test (Angelopoulos, Bates, Candes, Jordan, Lei, 2021), a p-value for
  ``H_t: R(t) > alpha`` tested in fixed sequence from the most referral (lowest ``t``) up, stopping at
  the first ``p > delta``. Then ``P(R(t) <= alpha) >= 1 - delta`` over the calibration units. The
  p-value (``pvalue``): ``hb`` Hoeffding-Bentkus (Bates et al., RCPS, JACM 2021), a function of the
  mean loss only; ``wsr`` Waudby-Smith-Ramdas betting (LTT's eq. for ``p^WSR``), which adapts to the
  variance of the losses and is much less conservative when they are not 0/1; ``binom`` the exact
  binomial test, valid only for 0/1 losses (``tail@b``), where it is tight.

``structure`` controls ``K - 1`` losses with one threshold: CRC takes the smallest (most referring) of
the per-class thresholds, so each class keeps ``E[L_k] <= alpha``; LTT tests each class at
``delta / (K - 1)`` (Bonferroni) and takes the smallest, so all classes hold at once with probability
``>= 1 - delta``.

Exact over every distinct ``u`` of the calibration voxels: the risk only changes at wrong voxels'
``u``, so the answer is the largest calibration ``u`` below the first breakpoint where the condition
fails (any value up to that breakpoint carries the same guarantee; we keep the calibration value,
which refers slightly more on new images). Why data-dependent candidates are fine: the losses are
constant between breakpoints, so the fixed hypothesis at ``t*`` (the smallest ``t`` with
``R(t) > alpha``) has exactly the loss vector of the last tested state at or below it; a threshold
``t >= t*`` is returned only if that state was rejected, which happens with probability <= delta
whatever the p-value's shape (CRC only needs the chosen ``t`` to satisfy the condition).

Infeasible -- too few units for ``alpha`` (CRC: ``1/(n+1) > alpha``; LTT: ``p(all losses 0) > delta``)
-- gives ``t = -inf``: refer everything (its risk is 0), with ``feasible = False`` and said plainly.
Both guarantees are on the mean over units (CRC: in expectation; LTT: with probability); ``tail@b``
is the kind that turns "not every case" into a controlled number. :func:`evaluate` reports every
kind's realised value at the threshold.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .case_losses import CaseLosses, RiskLosses, risk_losses, unit_numbers
from .case_stats import CaseStats
from .dice_curve import counts_at_threshold
from .risk_bounds import METHODS, PVALUES, check_settings, condition_holds, min_calibration_cases, wsr_pvalue  # noqa: F401 (METHODS, PVALUES: the API)
from .risk_kinds import RiskKind, n_components, parse_kind, values_at

NEG_INF = -math.inf
QUANTILES = (0.5, 0.9, 0.95)
#: a calibration with fewer than this many times the minimum number of units gets a warning
NEAR_MINIMUM = 2.0


def alpha_key(alpha: float, kind="dice") -> str:
    """``0.05 -> "0.05"`` (the Dice risk, as before), ``("structure", 0.1) -> "structure:0.1"``: the
    key of a calibration under its method in checkpoints and ``summary.json``."""
    kind = parse_kind(kind)
    return f"{float(alpha):g}" if kind.name == "dice" else f"{kind.key}:{float(alpha):g}"


def split_key(key: str) -> tuple[str, float]:
    """``"structure:0.1" -> ("structure", 0.1)``, ``"0.05" -> ("dice", 0.05)``."""
    kind, _, a = key.rpartition(":")
    return (kind or "dice"), float(a)


# ------------------------------------------------------------------------------------------ thresholds
def _first_failure_wsr(losses: CaseLosses, idx: np.ndarray, alpha: float, delta: float,
                       chunk_cells: int = 1 << 21) -> int | None:
    """Position (in ``risk_steps`` order) of the first breakpoint state whose WSR p-value exceeds
    ``delta`` (None: none does), scanning the loss vectors of the selected units chunk by chunk."""
    n = idx.size
    local = np.full(losses.n_cases, -1, dtype=np.int64)
    local[idx] = np.arange(n)
    sel = local[losses.case] >= 0
    steps, case, jump = losses.steps[sel], local[losses.case[sel]], losses.jump[sel]
    if steps.size == 0:
        return None
    group_start = np.append(True, steps[1:] != steps[:-1])
    group = np.cumsum(group_start) - 1                 # distinct-value number of each step
    n_groups = int(group[-1]) + 1
    rows = max(1, chunk_cells // max(n, 1))
    state = np.zeros(n)
    for g0 in range(0, n_groups, rows):
        g1 = min(n_groups, g0 + rows)
        lo, hi = np.searchsorted(group, [g0, g1])
        block = np.zeros((g1 - g0, n))
        np.add.at(block, (group[lo:hi] - g0, case[lo:hi]), jump[lo:hi])
        block = state + np.cumsum(block, axis=0)
        bad = np.flatnonzero(wsr_pvalue(block, alpha, delta) > delta)
        if bad.size:
            return g0 + int(bad[0])
        state = block[-1]
    return None


def _largest_threshold(losses: CaseLosses, cases, method, alpha, delta, pvalue="hb") -> tuple[float, bool]:
    """(largest calibration threshold meeting the condition, feasible)."""
    values, sums, n = losses.risk_steps(cases)
    if not condition_holds(method, 0.0, n, alpha, delta, pvalue):
        return NEG_INF, False
    if method == "ltt" and pvalue == "wsr":
        first = _first_failure_wsr(losses, losses._select(cases), alpha, delta)
    else:
        bad = np.flatnonzero(~condition_holds(method, sums, n, alpha, delta, pvalue))
        first = int(bad[0]) if bad.size else None
    if first is None:
        return losses.max_u(cases), True
    return losses.below(float(values[first]), cases), True


def _as_risk_losses(losses, kind, units) -> RiskLosses:
    if isinstance(losses, RiskLosses):
        if kind is not None and parse_kind(kind) != losses.kind:
            raise ValueError(f"losses are of kind {losses.kind.key}, not {parse_kind(kind).key}")
        return losses
    if isinstance(losses, CaseLosses):
        if kind is not None and parse_kind(kind).name != "dice":
            raise ValueError("a CaseLosses holds the Dice risk; pass the case stats for another kind")
        return RiskLosses(parse_kind("dice"), [losses], [str(i) for i in range(losses.n_cases)],
                          np.ones(losses.n_cases, dtype=np.int64))
    return risk_losses(list(losses), kind or "dice", units)


def threshold_for(losses: RiskLosses, alpha: float, method: str, delta: float | None, pvalue: str = "hb",
                  cases=None) -> tuple[float, bool, list[float]]:
    """(threshold, feasible, per-component thresholds): the smallest of the components' thresholds,
    LTT testing each of the ``M`` components at ``delta / M`` (Bonferroni)."""
    m = len(losses.components)
    d = None if delta is None else delta / m
    per = [_largest_threshold(c, cases, method, alpha, d, pvalue) for c in losses.components]
    return min(t for t, _ in per), all(f for _, f in per), [t for t, _ in per]


def loss_spread(loss: np.ndarray, alpha: float) -> dict:
    q = np.quantile(loss, QUANTILES)
    return {"case_risk": {**{f"p{round(100 * p)}": float(v) for p, v in zip(QUANTILES, q)},
                          "max": float(loss.max())},
            "fraction_above_alpha": float(np.mean(loss > alpha))}


def loo_coverage(losses: RiskLosses, alpha: float, method: str, delta: float | None, pvalue: str = "hb",
                 cases=None) -> float:
    """Expected coverage at this many units, estimated by leave-one-out: calibrate on all but one unit,
    measure the coverage of the one left out; voxel-weighted over all units (it calibrates on n - 1,
    so it is slightly pessimistic)."""
    comp = losses.components[0]
    idx = comp._select(cases)
    covered = total = 0.0
    for j in range(idx.size):
        rest = np.delete(idx, j)
        t, _, _ = threshold_for(losses, alpha, method, delta, pvalue, rest)
        n_vox = comp.indexes[idx[j]].n
        covered += comp.coverage_at(t, [idx[j]]) * n_vox
        total += n_vox
    return covered / total


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold: refer voxels with ``u > threshold`` (``-inf``: refer everything)."""

    method: str
    alpha: float
    delta: float | None
    n_calibration: int     # calibration units (cases, or patients with unit="patient")
    threshold: float
    feasible: bool
    risk: float            # calibration risk at the threshold (structure: the largest class risk)
    coverage: float        # fraction of calibration voxels covered
    spread: dict = field(default_factory=dict)  # calibration L_i quantiles, fraction above alpha
    kind: str = "dice"     # :mod:`.risk_kinds` key
    pvalue: str | None = None   # ltt: hb | wsr | binom
    unit: str = "case"     # case | patient
    n_images: int | None = None  # calibration cases (images) behind the units
    n_min: int | None = None     # fewest units that can certify anything
    expected_coverage: float | None = None   # leave-one-out estimate at this n
    components: dict = field(default_factory=dict)  # structure: class -> {"threshold", "risk"}
    values: dict = field(default_factory=dict)      # every kind's realised calibration value

    @property
    def risk_kind(self) -> RiskKind:
        return parse_kind(self.kind)

    @property
    def near_minimum(self) -> bool:
        return self.n_min is not None and self.feasible and self.n_calibration < NEAR_MINIMUM * self.n_min

    @property
    def warning(self) -> str | None:
        """A line when ``n`` is close to the minimum: certifying anything is not certifying much."""
        if not self.near_minimum:
            return None
        exp = "" if self.expected_coverage is None else (
            f"; expected coverage at this n (leave-one-out) {self.expected_coverage:.3f}, i.e. about "
            f"{100 * (1 - self.expected_coverage):.0f} % of voxels referred")
        return (f"{self.n_calibration} calibration {self.unit}s is close to the minimum {self.n_min} for "
                f"{self.method} {self.kind} alpha={self.alpha:g}" + (f" delta={self.delta:g}" if self.delta else "") + exp)

    @property
    def statement(self) -> str:
        """One sentence: what is guaranteed, and what is not."""
        n, a, units = self.n_calibration, self.alpha, self.unit + "s"
        what = self.risk_kind.describe(a, self.unit)
        name = self.method if self.method == "crc" else f"ltt ({self.pvalue or 'hb'})"
        if not self.feasible:
            need = self.n_min if self.n_min is not None else min_calibration_cases(   # records before n_min
                a, self.method, self.delta, self.pvalue or "hb", max(1, len(self.components)))
            return (f"{n} calibration {units} cannot certify that {what} with {name} (at least {need} "
                    "needed): every voxel is referred.")
        where = ("every voxel is referred (no threshold that covers voxels meets the bound)"
                 if self.threshold == NEG_INF else f"voxels with uncertainty above {self.threshold:.6g} are referred")
        new = f"a new {self.unit} exchangeable with them"
        tail = "" if self.risk_kind.name == "tail" else "; this bounds the average over " + units + ", not every " + self.unit
        pat = ("" if self.unit == "patient" else
               "; calibrated on images, not patients: for a new patient it holds only if images are exchangeable")
        if self.risk_kind.name == "structure" and len(self.components) > 1:
            tail += f" (all {len(self.components)} structures at once" + (
                f", Bonferroni delta/{len(self.components)} each)" if self.method == "ltt" else ")")
        if self.method == "crc":
            return (f"Conformal risk control on {n} calibration {units}: {where}, and for {new}, in "
                    f"expectation {what}{tail}{pat}.")
        learn = {"hb": "Hoeffding-Bentkus", "wsr": "Waudby-Smith-Ramdas", "binom": "exact binomial"}[self.pvalue or "hb"]
        return (f"Learn-then-Test ({learn}) on {n} calibration {units}: {where}, and with probability at "
                f"least {1 - self.delta:g} over the calibration {units}, for new {units} from the same "
                f"distribution {what}{tail}{pat}.")

    def to_dict(self) -> dict:
        """Plain Python types (stored in checkpoints; ``-inf`` stays a float there)."""
        return {**asdict(self), "statement": self.statement, "warning": self.warning}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        t = d.get("threshold")
        opt = lambda k, f: None if d.get(k) is None else f(d[k])  # noqa: E731
        return cls(str(d["method"]), float(d["alpha"]), opt("delta", float),
                   int(d["n_calibration"]), NEG_INF if t is None else float(t), bool(d["feasible"]),
                   float(d["risk"]), float(d["coverage"]), dict(d.get("spread") or {}),
                   str(d.get("kind") or "dice"), opt("pvalue", str), str(d.get("unit") or "case"),
                   opt("n_images", int), opt("n_min", int), opt("expected_coverage", float),
                   dict(d.get("components") or {}), dict(d.get("values") or {}))


def realised_values(stats: list[CaseStats], t: float, beta: float, units: dict | None = None,
                    class_names=None) -> dict:
    """Every kind's value at threshold ``t`` on these cases (per unit, then the mean), computed
    directly from the counts: ``dice``, ``structure`` (per class, and the largest), ``tail@beta``, ``fnr``."""
    counts = counts_at_threshold(stats, t)
    unit_of, _ = unit_numbers([s.case_id for s in stats], units)
    k = counts.shape[1]
    names = list(class_names or [])[1:] if class_names and len(class_names) == k + 1 else [str(c) for c in range(1, k + 1)]
    per = values_at(parse_kind("structure"), counts, unit_of).mean(0)
    tail = parse_kind(f"tail@{beta:g}")
    return {"dice": float(values_at(parse_kind("dice"), counts, unit_of).mean()),
            "structure": {n: float(v) for n, v in zip(names, per)},
            "structure_max": float(per.max()),
            tail.key: float(values_at(tail, counts, unit_of).mean()),
            "fnr": float(values_at(parse_kind("fnr"), counts, unit_of).mean())}


def tail_beta(kind: RiskKind, alpha: float) -> float:
    """The tail level reported with a calibration: its own beta, else alpha (the fraction of units whose
    Dice risk exceeds alpha)."""
    return kind.beta if kind.name == "tail" else alpha


def calibrate(losses: RiskLosses | CaseLosses | list[CaseStats], alpha: float, method: str = "crc",
              delta: float | None = None, cases=None, kind=None, pvalue: str = "hb", units: dict | None = None,
              stats: list[CaseStats] | None = None, expected_coverage: bool = False,
              class_names=None) -> Calibration:
    """Calibrate on ``cases`` (unit indices into ``losses``; default all; repeated indices are refused).
    ``losses``: :func:`.case_losses.risk_losses` of the kind to control, or case stats (with ``kind``,
    ``units``: case id -> patient id). ``delta`` and ``pvalue`` are used by ``ltt``.
    ``expected_coverage``: also the leave-one-out coverage estimate (n more calibrations).
    ``stats`` (the cases behind ``losses``; implied when ``losses`` are stats): the realised calibration
    value of every kind is stored too."""
    if isinstance(losses, list) and losses and isinstance(losses[0], CaseStats):
        stats = losses
    rl = _as_risk_losses(losses, kind, units)
    check_settings(alpha, method, delta, pvalue, rl.kind)
    delta = float(delta) if (method == "ltt" and delta is not None) else None
    pvalue_used = pvalue if method == "ltt" else None
    alpha = float(alpha)
    t, feasible, per = threshold_for(rl, alpha, method, delta, pvalue, cases)
    idx = rl.components[0]._select(cases)
    loss = np.stack([c.loss_at(t, cases) for c in rl.components], axis=1)   # (n, M)
    m = loss.shape[1]
    comp_names = ([str(c) for c in (class_names or [])[1:]] if class_names and len(class_names) == m + 1
                  else [str(j + 1) for j in range(m)])
    components = ({name: {"threshold": float(pt), "risk": float(loss[:, j].mean())}
                   for j, (name, pt) in enumerate(zip(comp_names, per))} if rl.kind.name == "structure" else {})
    unit = "patient" if rl.grouped else "case"
    values = {}
    if stats is not None:
        sel = stats
        if cases is not None:  # the selected units' cases, by the unit numbering risk_losses used
            unit_of, _ = unit_numbers([s.case_id for s in stats], units)
            keep = set(idx.tolist())
            sel = [s for s, u in zip(stats, unit_of) if u in keep]
        values = realised_values(sel, t, tail_beta(rl.kind, alpha), units if rl.grouped else None, class_names)
    n_min = min_calibration_cases(alpha, method, delta, pvalue if method == "ltt" else "hb", m)
    exp = None
    if expected_coverage and feasible and idx.size > 1:
        exp = loo_coverage(rl, alpha, method, delta, pvalue, cases)
    return Calibration(method, alpha, delta, int(idx.size), float(t), feasible, float(loss.mean(0).max()),
                       rl.components[0].coverage_at(t, cases), loss_spread(loss.max(1), alpha), rl.kind.key,
                       pvalue_used, unit, int(rl.images_per_unit[idx].sum()), n_min, exp, components, values)
