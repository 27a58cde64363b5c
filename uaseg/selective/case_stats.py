"""One case reduced to what the exact evaluation needs (the streaming unit).

Per case we keep: the coverage index of all its voxels' uncertainties (sorted values,
or a level histogram when quantised), the base per-class TP/FP/FN counts at full
coverage, and the *wrong* voxels only (their uncertainty, prediction and label),
because referring a correctly predicted voxel changes no Dice.  Case-level
uncertainty aggregates are computed here too, while the raw map is at hand.

Quantisation (``quantize_bits=b``, range ``[lo, hi]``): ``level = rint((u-lo)/step)``
with ``step = (hi-lo)/(2**b-1)``.  The map is monotone, so tie groups only merge:
every point of the quantised curves is a point of the exact curve (same coverage,
same risk); its threshold is the level centre, within ``step/2`` of the true largest
covered ``u``.  For a threshold ``t``, quantised coverage lies between the exact
coverages at ``t`` and ``t + step``.  AURC changes only where points inside one level
are dropped: ``|AURC_q - AURC| <= sum_q p_q * osc_q <= max_q p_q * TV(risk)``, with
``p_q`` the fraction of voxels in level ``q`` and ``osc_q`` the risk range of the exact
points inside it.  Values outside ``[lo, hi]`` raise (clipping would reorder voxels).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .case_level import aggregate_case_uncertainty
from .coverage import HistogramIndex, SortedIndex


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class Quantizer:
    bits: int
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self):
        if not 1 <= self.bits <= 24:
            raise ValueError(f"quantize_bits must be in 1..24, got {self.bits}")
        if not self.hi > self.lo:
            raise ValueError(f"quantize range needs hi > lo, got {(self.lo, self.hi)}")

    @property
    def num_levels(self) -> int:
        return (1 << self.bits)

    @property
    def step(self) -> float:
        return (self.hi - self.lo) / (self.num_levels - 1)

    def levels(self, u: np.ndarray) -> np.ndarray:
        if u.size and (u.min() < self.lo or u.max() > self.hi):
            raise ValueError(
                f"uncertainty outside quantize range [{self.lo}, {self.hi}]: "
                f"min {u.min()}, max {u.max()}; pass quantize_range to cover it")
        q = np.rint((u.astype(np.float64) - self.lo) / self.step)
        return q.astype(np.uint16 if self.bits <= 16 else np.uint32)

    def value(self, level):
        """Level centre in uncertainty units (``-inf`` stays ``-inf``)."""
        level = np.asarray(level, dtype=np.float64)
        return np.where(np.isfinite(level), self.lo + level * self.step, level)


@dataclass
class CaseStats:
    case_id: str
    group: str
    n: int
    index: object                 # SortedIndex | HistogramIndex of all voxels
    counts: np.ndarray            # (C, 3) int64 TP, FP, FN for classes 1..K-1
    ev_u: np.ndarray              # wrong voxels: uncertainty (or level)
    ev_pred: np.ndarray           # wrong voxels: predicted class
    ev_label: np.ndarray          # wrong voxels: true class
    aggregates: dict = field(default_factory=dict)


def _store_dtype(u: np.ndarray):
    return np.float64 if u.dtype == np.float64 else np.float32


def class_counts(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """(K-1, 3) TP, FP, FN per foreground class via one confusion bincount."""
    k = num_classes
    conf = np.bincount(label.astype(np.int64) * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(conf)
    fp = conf.sum(0) - tp
    fn = conf.sum(1) - tp
    return np.stack([tp, fp, fn], axis=1)[1:].astype(np.int64)


def make_case_stats(uncertainty, prediction, label, *, num_classes: int, case_id,
                    group: str = "test", quantizer: Quantizer | None = None,
                    aggregations=("mean",), ignore_index: int | None = None) -> CaseStats:
    """One case's stats. With ``ignore_index``, voxels labelled so (nnU-Net's ignore label: not
    annotated) are dropped first: every count, the coverage index and the case aggregates see only
    the annotated voxels, exactly as if the case had no others."""
    u, p, y = to_numpy(uncertainty), to_numpy(prediction), to_numpy(label)
    if not (u.shape == p.shape == y.shape):
        raise ValueError(f"case {case_id!r}: shape mismatch uncertainty {u.shape}, "
                         f"prediction {p.shape}, label {y.shape}")
    if ignore_index is not None:
        keep = y != ignore_index
        u, p, y = u[keep], p[keep], y[keep]
        if u.size == 0:
            raise ValueError(f"case {case_id!r}: every voxel is labelled ignore ({ignore_index}); nothing to evaluate")
    if u.size == 0:
        raise ValueError(f"case {case_id!r}: empty arrays")
    if not np.issubdtype(u.dtype, np.floating):
        raise ValueError(f"case {case_id!r}: uncertainty must be floating, got {u.dtype}")
    if np.isnan(u).any():
        raise ValueError(f"case {case_id!r}: uncertainty contains NaN")
    for name, a in (("prediction", p), ("label", y)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f"case {case_id!r}: {name} must be integer, got {a.dtype}")
        if a.min() < 0 or a.max() >= num_classes:
            raise ValueError(f"case {case_id!r}: {name} values must be in "
                             f"0..{num_classes - 1}, got [{a.min()}, {a.max()}]")
    u, p, y = u.ravel(), p.ravel().astype(np.int64), y.ravel().astype(np.int64)
    aggregates = {name: aggregate_case_uncertainty(name, u) for name in aggregations}
    if quantizer is None:
        su = u.astype(_store_dtype(u), copy=True)
        su.sort()
        index = SortedIndex(su, assume_sorted=True)
        ev_u_all = u.astype(su.dtype, copy=False)
    else:
        lv = quantizer.levels(u)
        index = HistogramIndex.from_levels(lv, quantizer.num_levels)
        ev_u_all = lv
    wrong = p != y
    small = np.uint8 if num_classes <= 256 else np.int32
    return CaseStats(
        case_id=str(case_id), group=str(group), n=int(u.size), index=index,
        counts=class_counts(p, y, num_classes),
        ev_u=ev_u_all[wrong].copy(), ev_pred=p[wrong].astype(small),
        ev_label=y[wrong].astype(small), aggregates=aggregates)
