"""The typed result of a selective evaluation (one class, as fd-shifts gives its RC statistics).

:class:`SelectiveResult` is what :class:`~uaseg.selective.SelectiveAccumulator` and the torchmetrics
metric compute and what every reader (module, report writer, plots, loggers, report, prediction)
uses by attribute. :meth:`SelectiveResult.to_summary` is the ``summary.json`` schema (arrays left
out, non-finite numbers as null) and :meth:`SelectiveResult.from_summary` reads it back.

Coverage -> threshold has one rule, :meth:`ThresholdGrid.threshold_at`: the stored grid point whose
coverage is nearest the request, a tie in distance going to the larger coverage. The grid holds, for
every 0.1 % of coverage, the nearest coverage achievable on the evaluated voxels and its threshold
(:func:`uaseg.selective.coverage.nearest_coverage`, the exact rule on the raw values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: key of the full-coverage operating point in per-case and report tables
FULL_COVERAGE = "1.00"


def coverage_key(c: float) -> str:
    """``0.9 -> "0.90"``: the key of an operating point in ``at_coverage``."""
    return f"{c:.2f}"


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class DiceStats:
    """Across-case Dice: mean, std (ddof 0) and numpy's linear 5th percentile (fractions)."""

    mean: float
    std: float
    p5: float


@dataclass(frozen=True)
class OperatingPoint:
    """The test set at one global threshold: the one whose coverage is nearest ``target``."""

    target: float
    achieved_coverage: float
    threshold: float | None  # None: -inf, everything referred
    dice_mean: float
    dice_std: float
    dice_p5: float

    @classmethod
    def full(cls, dice: DiceStats) -> "OperatingPoint":
        return cls(1.0, 1.0, None, dice.mean, dice.std, dice.p5)


@dataclass(frozen=True)
class CaseLevel:
    """Case-level failure detection: AURC (%) of ranking cases by aggregated uncertainty against
    risk 1 - Dice, with a bootstrap 95 % interval."""

    aurc: float
    ci95: tuple[float, float]
    aggregation: str


@dataclass(frozen=True)
class CasePoint:
    coverage: float
    dice: float
    class_dice: tuple[float | None, ...]


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    group: str
    n_voxels: int
    uncertainty: dict[str, float]  # aggregation name -> value
    at_coverage: dict[str, CasePoint]  # coverage key ("1.00", "0.90", ...) -> point


@dataclass(frozen=True)
class RiskCurve:
    """Dice risk vs coverage, coverage falling from 1 to 0 (threshold ``-inf`` at 0)."""

    coverage: np.ndarray
    risk: np.ndarray
    threshold: np.ndarray

    @property
    def dice(self) -> np.ndarray:
        return 1.0 - self.risk


@dataclass(frozen=True)
class VoxelCurve:
    coverage: np.ndarray
    selective_risk: np.ndarray
    generalized_risk: np.ndarray
    threshold: np.ndarray


@dataclass(frozen=True)
class ThresholdGrid:
    """``(coverage, threshold)`` pairs, coverage falling from 1 to 0; stored in checkpoints as plain
    float lists so prediction loads them with ``weights_only=True``."""

    coverage: np.ndarray
    threshold: np.ndarray

    def __post_init__(self) -> None:
        if self.coverage.size == 0 or self.coverage.shape != self.threshold.shape:
            raise ValueError(
                f"malformed coverage/threshold grid ({self.coverage.size} coverages, "
                f"{self.threshold.size} thresholds)"
            )

    def threshold_at(self, coverage: float) -> tuple[float, float]:
        """``(threshold, coverage it achieved)`` of the point nearest ``coverage`` (ties: larger
        coverage). Refer voxels with ``u > threshold``; ``-inf`` refers everything."""
        dist = np.abs(self.coverage - float(coverage))
        candidates = np.flatnonzero(dist <= dist.min() + 1e-12)
        i = int(candidates[np.argmax(self.coverage[candidates])])
        return float(self.threshold[i]), float(self.coverage[i])

    def to_dict(self) -> dict[str, list[float]]:
        return {"coverage": [float(v) for v in self.coverage], "threshold": [float(v) for v in self.threshold]}

    @classmethod
    def from_dict(cls, d: dict) -> "ThresholdGrid":
        """A stored grid, checked (it is read from a file): a ``ValueError`` saying what is wrong
        with it, never a grid whose NaN thresholds silently refer nothing."""
        try:
            cov, thr = (np.asarray(d[k], dtype=np.float64) for k in ("coverage", "threshold"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a coverage/threshold grid ({type(e).__name__}: {e})") from None
        if cov.ndim != 1 or cov.shape != thr.shape or cov.size == 0:
            raise ValueError(f"malformed coverage/threshold grid (shapes {cov.shape} and {thr.shape})")
        if not np.isfinite(cov).all() or (cov < 0).any() or (cov > 1).any() or np.isnan(thr).any():
            raise ValueError("the grid holds NaN values, or coverages outside [0, 1]")
        if (np.diff(cov) > 0).any() or (np.diff(thr) > 0).any():
            raise ValueError("coverage and threshold must fall together along the grid")
        return cls(cov, thr)


@dataclass(frozen=True)
class GroupAverage:
    """Plain mean over test groups (the paper averages GlaS parts A and B)."""

    aurc_dice: float
    dice_full_mean: float
    dice_mean: dict[str, float]  # coverage key -> mean over groups of dice_mean there

    def to_summary(self) -> dict[str, float]:
        return {"aurc_dice": self.aurc_dice, "dice_full_mean": self.dice_full_mean,
                **{f"dice_mean@{k}": v for k, v in self.dice_mean.items()}}

    @classmethod
    def from_summary(cls, d: dict) -> "GroupAverage":
        return cls(d["aurc_dice"], d["dice_full_mean"],
                   {k.split("@", 1)[1]: v for k, v in d.items() if k.startswith("dice_mean@")})

    @classmethod
    def of(cls, groups: dict[str, "SelectiveResult"]) -> "GroupAverage":
        gs = list(groups.values())
        return cls(float(np.mean([g.aurc_dice for g in gs])),
                   float(np.mean([g.dice_full.mean for g in gs])),
                   {k: float(np.mean([g.at_coverage[k].dice_mean for g in gs])) for k in gs[0].at_coverage})


@dataclass
class SelectiveResult:
    """Selective evaluation of a set of cases at global thresholds (see ``uaseg.selective``).

    Units: Dice values are fractions; ``aurc_dice`` and ``case_level.aurc`` are percent (risk =
    1 - Dice); voxel ``aurc``/``eaurc``/``augrc`` are fractions (fd-shifts shows them x1000).
    """

    n_cases: int
    n_voxels: int
    aurc_dice: float
    aurc: float
    eaurc: float
    augrc: float
    voxel_error_rate: float
    dice_full: DiceStats
    at_coverage: dict[str, OperatingPoint]
    case_level: CaseLevel
    curve: RiskCurve | None = None
    voxel_curve: VoxelCurve | None = None
    threshold_grid: ThresholdGrid | None = None
    quantization: dict[str, Any] | None = None
    cases: list[CaseResult] | None = None
    groups: dict[str, "SelectiveResult"] = field(default_factory=dict)
    group_average: GroupAverage | None = None
    #: calibrated referral thresholds evaluated on these cases: ``{method: {alpha: {...}}}``, plain
    #: JSON-able dicts (:func:`uaseg.selective.risk_control.evaluate`); None when none was stored
    risk_control: dict[str, dict[str, dict[str, Any]]] | None = None

    def threshold_at(self, coverage: float) -> float:
        """Global threshold whose coverage on these cases is nearest ``coverage`` (0.1 % grid)."""
        if self.threshold_grid is None:
            raise ValueError("this result holds no threshold grid (read back from a summary.json?)")
        return self.threshold_grid.threshold_at(coverage)[0]

    def point(self, key: str) -> OperatingPoint:
        """The operating point at coverage key ``key``, ``"1.00"`` included."""
        return OperatingPoint.full(self.dice_full) if key == FULL_COVERAGE else self.at_coverage[key]

    # ------------------------------------------------------------------ summary.json
    def to_summary(self) -> dict[str, Any]:
        """The ``summary.json`` schema (curves are written to ``curves.csv`` instead)."""
        out: dict[str, Any] = {
            "n_cases": self.n_cases, "n_voxels": self.n_voxels, "aurc_dice": self.aurc_dice,
            "aurc": self.aurc, "eaurc": self.eaurc, "augrc": self.augrc,
            "voxel_error_rate": self.voxel_error_rate,
            "dice_full": vars(self.dice_full).copy(),
            "at_coverage": {k: vars(p).copy() for k, p in self.at_coverage.items()},
            "case_level": {"aurc": self.case_level.aurc, "ci95": list(self.case_level.ci95),
                           "aggregation": self.case_level.aggregation},
        }
        if self.quantization is not None:
            out["quantization"] = dict(self.quantization)
        if self.cases is not None:
            out["cases"] = [
                {"case_id": c.case_id, "group": c.group, "n_voxels": c.n_voxels,
                 "uncertainty": dict(c.uncertainty),
                 "at_coverage": {k: {"coverage": p.coverage, "dice": p.dice, "class_dice": list(p.class_dice)}
                                 for k, p in c.at_coverage.items()}}
                for c in self.cases
            ]
        if self.groups:
            out["groups"] = {g: r.to_summary() for g, r in self.groups.items()}
        if self.group_average is not None:
            out["group_average"] = self.group_average.to_summary()
        if self.risk_control:
            out["risk_control"] = self.risk_control
        return out

    @classmethod
    def from_summary(cls, d: dict[str, Any]) -> "SelectiveResult":
        """Read back what :meth:`to_summary` wrote (nulls become NaN, except thresholds)."""
        def f(x):
            return math.nan if x is None else float(x)

        cases = None
        if d.get("cases") is not None:
            cases = [CaseResult(
                str(c["case_id"]), str(c.get("group", "test")), int(c.get("n_voxels", 0)),
                dict(c.get("uncertainty") or {}),
                {k: CasePoint(f(p.get("coverage")), f(p.get("dice")), tuple(p.get("class_dice") or ()))
                 for k, p in (c.get("at_coverage") or {}).items()},
            ) for c in d["cases"]]
        cl = d.get("case_level") or {}
        return cls(
            n_cases=int(d.get("n_cases", 0)), n_voxels=int(d.get("n_voxels", 0)),
            aurc_dice=f(d.get("aurc_dice")), aurc=f(d.get("aurc")), eaurc=f(d.get("eaurc")),
            augrc=f(d.get("augrc")), voxel_error_rate=f(d.get("voxel_error_rate")),
            dice_full=DiceStats(*(f((d.get("dice_full") or {}).get(k)) for k in ("mean", "std", "p5"))),
            at_coverage={k: OperatingPoint(f(p.get("target")), f(p.get("achieved_coverage")),
                                           _num(p.get("threshold")), f(p.get("dice_mean")),
                                           f(p.get("dice_std")), f(p.get("dice_p5")))
                         for k, p in (d.get("at_coverage") or {}).items()},
            case_level=CaseLevel(f(cl.get("aurc")), tuple(f(v) for v in cl.get("ci95") or (None, None)),
                                 str(cl.get("aggregation", "mean"))),
            quantization=d.get("quantization"),
            cases=cases,
            groups={g: cls.from_summary(r) for g, r in (d.get("groups") or {}).items()},
            group_average=GroupAverage.from_summary(d["group_average"]) if d.get("group_average") else None,
            risk_control=d.get("risk_control") or None,
        )
