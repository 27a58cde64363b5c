"""Each case's Dice risk ``L_i(t)`` as an exact step function of the referral threshold ``t``.

``L_i(t) = 1 - Dice_i`` with every voxel of ``u > t`` referred (set to the ground truth), counted
exactly as the risk-coverage curve counts it (:mod:`.dice_curve`: mean over foreground classes, a
class absent from label and prediction left out, 1.0 when all are). Only wrong voxels change the
counts, so ``L_i`` jumps only at its wrong voxels' ``u``; per case we sort them by ``u``
(descending: the order a falling threshold refers them), accumulate the per-class referred counts
and evaluate :func:`.dice_curve.case_dice` after each tie group -- exact counts, no running float
sums -- in O(w log w) for ``w`` wrong voxels.

**Monotone.** Referring one wrong voxel (predicted ``a``, true ``b``) removes an FP of ``a`` and an
FN of ``b`` and adds a TP of ``b``: Dice_b rises, Dice_a rises or stays (it stays 0 when TP_a = 0).
Class ``a`` can leave the mean (absent in both) only when TP_a = 0, i.e. with Dice 0, and dropping a
0 from a mean of values >= 0 cannot lower it; with no class left the case Dice is 1. So every
referral keeps or raises Dice_i, and ``L_i`` is non-decreasing in ``t`` (tested against brute force,
edge cases included). Conformal risk control and Learn-then-Test need exactly this. We still store
the monotone envelope ``sup_{s <= t} L_i(s)`` (>= ``L_i``, equal to it for these exact values), so a
future variant of the loss that broke monotonicity would make the guarantees conservative, not
wrong; ``min_raw_jump`` records the most negative raw step (0 when monotone).

Pooled over cases the steps (``steps``, ``case``, ``jump``) give the calibration risk of any subset
of cases at every distinct breakpoint with one cumulative sum (what the split check needs).

**Other kinds, patients** (:func:`risk_losses`). The same per-case count path (:func:`_count_path`:
exact per-class TP/FP/FN after each tie group) gives every kind of :mod:`.risk_kinds` -- per-class
``1 - Dice`` (``structure``: one :class:`CaseLosses` per class), the missed foreground fraction
(``fnr``), the indicator ``1 - Dice > b`` (``tail@b``) -- and, with a case -> patient map, a
patient's loss: the mean over its cases (a step function on the union of their breakpoints), then
``tail``'s indicator. A unit's coverage index merges its cases' voxels.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .case_stats import CaseStats
from .coverage import NEG_INF, MultiIndex, SortedIndex
from .dice_curve import case_dice
from .risk_kinds import RiskKind, base_values, n_components, parse_kind, unit_transform


def _count_path(s: CaseStats) -> tuple[np.ndarray, np.ndarray]:
    """(breakpoints ascending (G,), per-class counts on each interval (G + 1, C, 3), ``t`` ascending):
    row 0 below every breakpoint (every wrong voxel referred), row G at full coverage."""
    c = s.counts.shape[0]
    if s.ev_u.size == 0:
        return np.zeros(0), s.counts[None].astype(np.int64)
    order = np.argsort(s.ev_u, kind="stable")[::-1]          # referral order: u descending
    u = s.ev_u[order].astype(np.float64)
    a, b = s.ev_pred[order].astype(np.int64), s.ev_label[order].astype(np.int64)
    ends = np.flatnonzero(np.append(u[1:] != u[:-1], True))    # last event of each tie group
    after = np.repeat(s.counts[None].astype(np.int64), ends.size, axis=0)  # (G, C, 3)
    for k in range(1, c + 1):
        na = np.cumsum(a == k)[ends]                            # FPs of class k referred
        nb = np.cumsum(b == k)[ends]                            # FNs of class k referred
        after[:, k - 1, 0] += nb
        after[:, k - 1, 1] -= na
        after[:, k - 1, 2] -= nb
    return u[ends][::-1], np.concatenate([after[::-1], s.counts[None].astype(np.int64)])


class PooledIndex:
    """Every case's sorted ``u`` as one int64 array of keys ``case * (D + 1) + rank(u)`` (``D``
    distinct values): coverage and the previous value for any subset of cases in one vectorised
    search instead of one per case (what thousands of calibration splits need)."""

    def __init__(self, indexes: list):
        self.distinct = np.unique(np.concatenate([ix.values for ix in indexes])).astype(np.float64)
        self.d = self.distinct.size + 1
        self.keys = np.concatenate([i * self.d + 1 + np.searchsorted(self.distinct, ix.values.astype(np.float64))
                                    for i, ix in enumerate(indexes)])
        sizes = np.array([ix.n for ix in indexes], dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.sizes = sizes
        self.maxima = np.array([float(ix.max()) for ix in indexes])

    def count_le(self, t: float, idx: np.ndarray) -> int:
        rank = np.searchsorted(self.distinct, t, side="right")
        return int((np.searchsorted(self.keys, idx * self.d + rank, side="right") - self.start[idx]).sum())

    def prev_distinct(self, v: float, idx: np.ndarray) -> float:
        rank = np.searchsorted(self.distinct, v, side="left")          # distinct values < v
        pos = np.searchsorted(self.keys, idx * self.d + rank, side="right") - 1
        ok = pos >= self.start[idx]
        if not ok.any():
            return NEG_INF
        return float(self.distinct[(self.keys[pos[ok]] - idx[ok] * self.d).max() - 1])


@dataclass(frozen=True)
class CaseLosses:
    """Every case's ``L_i(t)``: ``L_i(t) = sum of case i's jumps at breakpoints <= t``.

    ``L_i(-inf) = 0`` (everything referred: the ground truth itself). Thresholds are in ``u`` units;
    exact (unquantised) case stats only.
    """

    indexes: list                 # per case: SortedIndex of all its voxels' u (coverage)
    steps: np.ndarray             # (B,) breakpoints ascending (only jumps > 0 kept)
    case: np.ndarray              # (B,) case number of each breakpoint
    jump: np.ndarray              # (B,) increase of that case's L at the breakpoint (> 0)
    group_end: np.ndarray         # last position of each distinct value of ``steps``
    min_raw_jump: float           # most negative raw step over all cases (0.0: all monotone)
    pooled: PooledIndex | None = None   # see :meth:`with_pooled_index`

    def with_pooled_index(self) -> "CaseLosses":
        """The same, with coverage queries vectorised over cases (one more int64 per voxel)."""
        return replace(self, pooled=PooledIndex(self.indexes))

    @property
    def n_cases(self) -> int:
        return len(self.indexes)

    def _select(self, cases) -> np.ndarray:
        idx = np.arange(self.n_cases) if cases is None else np.asarray(cases, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("no cases selected")
        if cases is not None and np.unique(idx).size != idx.size:
            # a repeated case would count once in the risk sums but every time in n: anti-conservative
            raise ValueError("repeated case indices: each calibration case may be used once")
        return idx

    def risk_steps(self, cases=None) -> tuple[np.ndarray, np.ndarray, int]:
        """``(values, sums, n)``: at each distinct breakpoint ``v`` (ascending), ``sums`` = sum over
        the selected cases of ``L_i(v)`` (= n x calibration risk), non-decreasing."""
        idx = self._select(cases)
        w = self.jump
        if cases is not None:
            mask = np.zeros(self.n_cases)
            mask[idx] = 1.0
            w = w * mask[self.case]
        return self.steps[self.group_end], np.cumsum(w)[self.group_end], int(idx.size)

    def loss_at(self, t: float, cases=None) -> np.ndarray:
        """``L_i(t)`` of the selected cases (their order)."""
        idx = self._select(cases)
        sel = self.steps <= t
        return np.bincount(self.case[sel], weights=self.jump[sel], minlength=self.n_cases)[idx]

    def coverage_at(self, t: float, cases=None) -> float:
        """Fraction of the selected cases' voxels covered (``u <= t``)."""
        idx = self._select(cases)
        if self.pooled is not None:
            return self.pooled.count_le(t, idx) / int(self.pooled.sizes[idx].sum())
        ix = MultiIndex([self.indexes[i] for i in idx])
        return float(ix.count_le(t)) / ix.n

    def below(self, v: float, cases=None) -> float:
        """Largest voxel ``u`` strictly below ``v`` among the selected cases (``-inf`` if none)."""
        idx = self._select(cases)
        if self.pooled is not None:
            return self.pooled.prev_distinct(v, idx)
        return float(MultiIndex([self.indexes[i] for i in idx]).prev_distinct(v))

    def max_u(self, cases=None) -> float:
        idx = self._select(cases)
        if self.pooled is not None:
            return float(self.pooled.maxima[idx].max())
        return float(max(self.indexes[i].max() for i in idx))


def case_losses(stats: list[CaseStats]) -> CaseLosses:
    """Exact step functions of every case's Dice risk (see the module docstring)."""
    return risk_losses(stats, "dice").components[0]


def _unit_steps(bp: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(breakpoints, envelope jumps > 0, most negative raw jump) of one unit's loss, from its distinct
    breakpoints ascending and its loss on each interval (``vals[0]`` = 0: everything referred)."""
    raw = np.diff(vals)
    env = np.diff(np.maximum.accumulate(vals))
    keep = env > 0
    return bp[keep], env[keep], float(min(raw.min(), 0.0)) if raw.size else 0.0


def _component_losses(indexes: list, steps: list, jumps: list, worst: float) -> CaseLosses:
    """A :class:`CaseLosses` from each unit's kept breakpoints and jumps."""
    cases = [np.full(v.size, i, dtype=np.int64) for i, v in enumerate(steps)]
    steps, cases, jumps = np.concatenate(steps), np.concatenate(cases), np.concatenate(jumps)
    order = np.argsort(steps, kind="stable")
    steps, cases, jumps = steps[order], cases[order], jumps[order]
    group_end = np.flatnonzero(np.append(steps[1:] != steps[:-1], True)) if steps.size else \
        np.zeros(0, dtype=np.int64)
    return CaseLosses(indexes, steps, cases, jumps, group_end, worst)


@dataclass(frozen=True)
class RiskLosses:
    """The losses of one risk kind per calibration unit: one :class:`CaseLosses` per controlled
    component (``K - 1`` for ``structure``, else one), all on the same units (cases or patients)."""

    kind: RiskKind
    components: list              # of CaseLosses, same units, same coverage indexes
    unit_ids: list                # name of each unit (case id, or patient id)
    images_per_unit: np.ndarray   # (units,) number of cases in each unit

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)

    @property
    def grouped(self) -> bool:
        return bool((self.images_per_unit > 1).any())

    def with_pooled_index(self) -> "RiskLosses":
        pooled = PooledIndex(self.components[0].indexes)
        return replace(self, components=[replace(c, pooled=pooled) for c in self.components])


def unit_numbers(case_ids: list, units: dict | None) -> tuple[np.ndarray, list]:
    """(unit number of each case, unit names in order of first appearance); ``units`` maps a case id
    to its unit (patient) id, a case it does not name is its own unit."""
    if units is None:
        return np.arange(len(case_ids), dtype=np.int64), [str(c) for c in case_ids]
    names: dict = {}
    of = np.array([names.setdefault(str((units or {}).get(c, c) or c), len(names)) for c in case_ids], dtype=np.int64)
    return of, list(names)


def risk_losses(stats: list[CaseStats], kind="dice", units: dict | None = None) -> RiskLosses:
    """Exact step functions of ``kind`` (:mod:`.risk_kinds`) per unit: a case, or with ``units``
    (case id -> patient id) a patient, whose loss is the mean over its cases of their base loss
    (``tail``: the indicator of that mean above beta). A unit's breakpoints are the union of its cases'."""
    if not stats:
        raise ValueError("no cases")
    kind = parse_kind(kind)
    for s in stats:
        if not isinstance(s.index, SortedIndex):
            raise ValueError("risk control needs exact case stats (quantize_bits=None)")
    unit_of, names = unit_numbers([s.case_id for s in stats], units)
    members = [np.flatnonzero(unit_of == g) for g in range(len(names))]
    m = n_components(kind, stats[0].counts.shape[0] + 1)
    steps = [[] for _ in range(m)]       # per component, per unit: kept breakpoints and jumps
    jumps = [[] for _ in range(m)]
    worst = [0.0] * m
    for idx in members:                  # count paths one unit at a time: (G, C, 3) each, freed after
        if idx.size == 1:                # exact values, no sums of differences
            bp, counts = _count_path(stats[idx[0]])
            vals = unit_transform(kind, base_values(kind, counts))
        else:
            bps, diffs = [], []
            for i in idx:
                b, counts = _count_path(stats[i])
                bps.append(b)
                diffs.append(np.diff(base_values(kind, counts), axis=0) / idx.size)
            b, d = np.concatenate(bps), np.concatenate(diffs)
            order = np.argsort(b, kind="stable")
            b, cum = b[order], np.cumsum(d[order], axis=0)
            ends = np.flatnonzero(np.append(b[1:] != b[:-1], True)) if b.size else np.zeros(0, np.int64)
            bp = b[ends]
            vals = unit_transform(kind, np.concatenate([np.zeros((1, m)), cum[ends]]))
        for j in range(m):
            st, ju, w = _unit_steps(bp, vals[:, j])
            steps[j].append(st)
            jumps[j].append(ju)
            worst[j] = min(worst[j], w)
    indexes = [stats[idx[0]].index if idx.size == 1 else SortedIndex.merge([stats[i].index for i in idx])
               for idx in members]
    comps = [_component_losses(indexes, steps[j], jumps[j], worst[j]) for j in range(m)]
    return RiskLosses(kind, comps, names, np.array([idx.size for idx in members]))
