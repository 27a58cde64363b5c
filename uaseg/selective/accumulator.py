"""Streaming evaluation of a test set: add cases one at a time, compute once.

Memory: per case the coverage index (exact: a sorted copy of ``u``, 4 bytes a voxel
for float32 input; quantised: a level histogram, O(levels)), per-class counts, and
10 bytes per *wrong* voxel.  ``compute()`` pools them (exact mode: one more copy of
all ``u``, sorted in place) and never touches the original volumes again.

Reported units: Dice values are fractions in [0, 1]; ``aurc_dice`` and
``case_level.aurc`` are percent (risk = 1 - Dice); voxel ``aurc``/``eaurc``/``augrc``
are fractions (fd-shifts shows them x1000).  ``dice_std`` uses ddof=0, ``dice_p5``
is numpy's linear-interpolation 5th percentile over cases.  ``at_coverage`` keys are
``f"{c:.2f}"`` ("0.95", "0.90", ...); each uses the global threshold whose achieved
coverage is nearest the target (ties in distance -> larger coverage).  With several
case groups (e.g. GlaS testA/testB) ``groups`` holds the same summary per group,
its threshold global within the group, and ``group_average`` their plain mean.
With ``ignore_index`` (nnU-Net's ignore label) the voxels so labelled are left out of everything:
Dice, coverage, the curves, AURC, case aggregates and the risk-control case losses built on these stats.
"""
from __future__ import annotations

import numpy as np

from .case_level import case_level_aurc
from .case_stats import CaseStats, Quantizer, make_case_stats
from .coverage import nearest_coverage
from .dice_curve import (case_dice, class_dice, counts_at_threshold, curve_from_parts,
                         merged_index, pool_cases)
from .result import (CaseLevel, CasePoint, CaseResult, DiceStats, GroupAverage, OperatingPoint,
                     RiskCurve, SelectiveResult, ThresholdGrid, VoxelCurve, coverage_key)
from .voxel_rc import voxel_rc_from_index

DEFAULT_COVERAGES = (0.95, 0.90, 0.80, 0.70)


def _jsonable(x):
    x = float(x)
    return None if not np.isfinite(x) else x


def _dist(d: np.ndarray) -> DiceStats:
    return DiceStats(float(np.mean(d)), float(np.std(d, ddof=0)), float(np.percentile(d, 5)))


def summarize(stats: list[CaseStats], *, coverages=DEFAULT_COVERAGES, quantizer=None,
              case_aggregation="mean", bootstrap=1000, seed=0, with_cases=True) -> SelectiveResult:
    """The full result for a list of per-case stats (one global threshold)."""
    if not stats:
        raise ValueError("no cases to evaluate")
    value_of = quantizer.value if quantizer is not None else (lambda t: np.asarray(t, float))
    # Dice curve first on a per-case view, then free its event arrays before the
    # (exact mode) merged copy of all u is made for the voxel curve: lower peak memory.
    view, base, eu, ecase, ea, eb = pool_cases(stats, merge=False)
    curve = curve_from_parts(view, base, eu, ecase, ea, eb, value_of=value_of)
    eu.sort()
    del ecase, ea, eb, view
    index = merged_index(stats)
    vox = voxel_rc_from_index(index, eu, max_points=2000, value_of=value_of)
    del eu
    points = [(1.0, index.n, index.max())]
    for c in coverages:
        cnt, t = nearest_coverage(index, c)
        points.append((float(c), cnt, t))
    at_cov: dict[str, OperatingPoint] = {}
    case_points: list[dict[str, CasePoint]] = [{} for _ in stats]
    full_dice = None
    for c, cnt, t in points:
        counts = counts_at_threshold(stats, t)
        cd = case_dice(counts)
        cls = class_dice(counts[..., 0], counts[..., 1], counts[..., 2])
        if full_dice is None:
            full_dice = cd
        key = coverage_key(c)
        d = _dist(cd)
        at_cov[key] = OperatingPoint(c, cnt / index.n, _jsonable(value_of(t)), d.mean, d.std, d.p5)
        for i, s in enumerate(stats):
            case_points[i][key] = CasePoint(
                float(s.index.count_le(t)) / s.n if np.isfinite(t) else 0.0, float(cd[i]),
                tuple(_jsonable(v) for v in cls[i]))
    # every 0.1% of coverage -> its nearest achievable threshold (on ALL voxels, unlike the Dice
    # curve, which keeps only points where the risk changes): what predict.py needs to turn a
    # requested coverage into a threshold
    grid = [nearest_coverage(index, c) for c in np.linspace(1.0, 0.0, 1001)]
    threshold_grid = ThresholdGrid(np.array([cnt / index.n for cnt, _ in grid]),
                                   np.array([float(value_of(t)) for _, t in grid]))
    case_u = np.array([s.aggregates[case_aggregation] for s in stats])
    cl = case_level_aurc(case_u, 1.0 - full_dice, bootstrap=bootstrap, seed=seed)
    full = at_cov.pop(coverage_key(1.0))
    quantization = None
    if quantizer is not None:
        quantization = {"bits": quantizer.bits, "range": [quantizer.lo, quantizer.hi],
                        "step": quantizer.step,
                        "max_level_fraction": float(index.counts.max() / index.n)}
    return SelectiveResult(
        n_cases=len(stats), n_voxels=index.n, aurc_dice=curve["aurc"],
        aurc=vox["aurc"], eaurc=vox["eaurc"], augrc=vox["augrc"], voxel_error_rate=vox["error_rate"],
        dice_full=DiceStats(full.dice_mean, full.dice_std, full.dice_p5),
        at_coverage=at_cov,
        case_level=CaseLevel(cl["aurc"], tuple(cl["ci95"]), case_aggregation),
        curve=RiskCurve(curve["coverage"], curve["risk"], curve["threshold"]),
        voxel_curve=VoxelCurve(*(vox[k] for k in ("coverage", "selective_risk", "generalized_risk", "threshold"))),
        threshold_grid=threshold_grid,
        quantization=quantization,
        cases=[CaseResult(s.case_id, s.group, s.n, dict(s.aggregates), case_points[i])
               for i, s in enumerate(stats)] if with_cases else None,
    )


class SelectiveAccumulator:
    """Plain-Python streaming accumulator over cases (see module docstring)."""

    def __init__(self, num_classes: int, coverages=DEFAULT_COVERAGES,
                 quantize_bits: int | None = None, quantize_range=(0.0, 1.0),
                 case_aggregation: str = "mean", bootstrap: int = 1000, seed: int = 0,
                 ignore_index: int | None = None):
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2 (background + foreground)")
        from .case_level import CASE_AGGREGATIONS
        if case_aggregation not in CASE_AGGREGATIONS:
            raise ValueError(f"unknown case aggregation {case_aggregation!r}; "
                             f"known: {sorted(CASE_AGGREGATIONS)}")
        if any(not 0.0 < float(c) < 1.0 for c in coverages):
            raise ValueError(f"coverages must lie in (0, 1), got {coverages}")
        self.num_classes = int(num_classes)
        self.coverages = tuple(float(c) for c in coverages)
        self.quantizer = Quantizer(quantize_bits, *quantize_range) if quantize_bits else None
        self.case_aggregation = case_aggregation
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        #: label of unannotated voxels, left out of every number (:func:`make_case_stats`)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.reset()

    def reset(self) -> None:
        self.stats: list[CaseStats] = []
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self.stats)

    def make_stats(self, uncertainty, prediction, label, case_id, group="test") -> CaseStats:
        return make_case_stats(uncertainty, prediction, label, num_classes=self.num_classes,
                               case_id=case_id, group=group, quantizer=self.quantizer,
                               aggregations=(self.case_aggregation,), ignore_index=self.ignore_index)

    def add_stats(self, s: CaseStats) -> None:
        if s.case_id in self._ids:
            raise ValueError(f"duplicate case id {s.case_id!r}")
        self._ids.add(s.case_id)
        self.stats.append(s)

    def add_case(self, uncertainty, prediction, label, case_id, group: str = "test") -> None:
        if str(case_id) in self._ids:
            raise ValueError(f"duplicate case id {case_id!r}")
        self.add_stats(self.make_stats(uncertainty, prediction, label, case_id, group))

    def compute(self) -> SelectiveResult:
        kw = dict(coverages=self.coverages, quantizer=self.quantizer,
                  case_aggregation=self.case_aggregation, bootstrap=self.bootstrap,
                  seed=self.seed)
        result = summarize(self.stats, **kw)
        groups = sorted({s.group for s in self.stats})
        if len(groups) > 1:
            result.groups = {g: summarize([s for s in self.stats if s.group == g],
                                          with_cases=False, **kw) for g in groups}
            result.group_average = GroupAverage.of(result.groups)
        return result
