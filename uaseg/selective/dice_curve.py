"""Exact Dice risk-coverage curve of selective segmentation, in O(n log n).

Definitions (paper Sec. 3.2 and Appendix C):

* A threshold ``t`` global to the test set covers voxels with ``u <= t``; coverage
  ``c`` = covered / all voxels; equal ``u`` are covered or referred together.
* Referred voxels are assumed correctly annotated: each case's Dice is computed on
  the whole image with referred voxels set to the ground truth.
* Case Dice = mean over foreground classes 1..K-1 of ``2TP/(2TP+FP+FN)``; a class
  empty in both label and (modified) prediction is left out (nnU-Net).  If every
  class is left out the case Dice is 1.0 (nothing to find, nothing found).
* risk = 1 - mean case Dice; the curve runs from c=1 to c=0 (risk 0 there);
  AURC (%) = 100 x trapezoid area under risk vs coverage.

Why it is fast: referring a correct voxel changes no count.  Referring a wrong voxel
(pred a, label b) in case i removes one FP of class a (a>0), one FN of class b (b>0)
and adds one TP of class b (b>0).  Sorting wrong voxels by ``u`` descending (the
order in which a falling threshold refers them), per-(case, class) cumulative counts
give each event's class Dice before/after, per-case cumulative sums give its case
Dice before/after, and a global cumulative sum of the case-Dice deltas gives the
mean Dice after any number of referred wrong voxels.  Risk is constant between
wrong voxels' thresholds, so the stored curve keeps only the points where it
changes (the last point before and the first after each wrong tie group, plus the
ends); the points dropped lie exactly on the stored segments, so the curve and its
trapezoid area are unchanged (``compress=False`` lists every distinct threshold).
"""
from __future__ import annotations

import numpy as np

from .coverage import NEG_INF, HistogramIndex, MultiIndex, SortedIndex


def class_dice(tp, fp, fn) -> np.ndarray:
    """Per-class Dice; NaN where the class is empty in label and prediction."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)


def case_dice(counts: np.ndarray) -> np.ndarray:
    """Case Dice from (..., C, 3) TP/FP/FN counts: nan-mean over classes, 1.0 if none."""
    d = class_dice(counts[..., 0], counts[..., 1], counts[..., 2])
    present = ~np.isnan(d)
    npres = present.sum(-1)
    s = np.where(present, d, 0.0).sum(-1)
    return np.where(npres > 0, s / np.maximum(npres, 1), 1.0)


def _grouped_cumsum(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each True of ``group_start`` (values pre-grouped)."""
    cs = np.cumsum(values)
    starts = np.flatnonzero(group_start)
    before = np.concatenate([[0], cs[starts[1:] - 1]]) if starts.size else cs[:0]
    lens = np.diff(np.concatenate([starts, [values.size]]))
    offset = np.repeat(before, lens)
    return cs - offset


def event_case_dice_deltas(base: np.ndarray, ecase: np.ndarray, ea: np.ndarray,
                           eb: np.ndarray) -> np.ndarray:
    """Change of its case's Dice caused by each wrong-voxel event, in the given order.

    ``base`` (M, C, 3) TP/FP/FN at full coverage; events already in referral order.
    """
    m, c, _ = base.shape
    w = ecase.size
    dsum = np.zeros(w, dtype=np.float64)     # change of the case's sum of class Dice
    dpres = np.zeros(w, dtype=np.int16)      # change of its number of present classes
    for k in range(1, c + 1):
        is_a, is_b = ea == k, eb == k
        idx = np.flatnonzero(is_a | is_b)    # events touching class k, in event order
        if idx.size == 0:
            continue
        cs = ecase[idx]
        order = np.argsort(cs, kind="stable")  # group by case, keep event order
        idx, cs = idx[order], cs[order]
        del order
        da = is_a[idx].astype(np.int64)
        db = 1 - da
        start = np.ones(idx.size, bool)
        start[1:] = cs[1:] != cs[:-1]
        na = _grouped_cumsum(da, start)
        nb = _grouped_cumsum(db, start)
        tp0, fp0, fn0 = (base[cs, k - 1, j] for j in range(3))
        den_after = 2 * tp0 + fp0 + fn0 + nb - na
        den_before = den_after - db + da
        num_after = 2 * (tp0 + nb)
        num_before = num_after - 2 * db
        d_after = np.where(den_after > 0, num_after / np.maximum(den_after, 1), 0.0)
        d_before = np.where(den_before > 0, num_before / np.maximum(den_before, 1), 0.0)
        dsum[idx] += d_after - d_before
        dpres[idx] += (den_after > 0).astype(np.int16) - (den_before > 0)
        del idx, cs, da, db, na, nb, tp0, fp0, fn0, den_after, den_before, num_after, \
            num_before, d_after, d_before
    del is_a, is_b
    # per case, in event order: case Dice before/after each event
    order = np.argsort(ecase, kind="stable")
    cs = ecase[order]
    start = np.ones(w, bool)
    start[1:] = cs[1:] != cs[:-1]
    d0 = class_dice(base[..., 0], base[..., 1], base[..., 2])
    sum0 = np.where(np.isnan(d0), 0.0, d0).sum(-1)
    pres0 = (~np.isnan(d0)).sum(-1)
    s_after = sum0[cs] + _grouped_cumsum(dsum[order], start)
    p_after = pres0[cs] + _grouped_cumsum(dpres[order].astype(np.int64), start)
    s_before = s_after - dsum[order]
    p_before = p_after - dpres[order]
    cd_after = np.where(p_after > 0, s_after / np.maximum(p_after, 1), 1.0)
    cd_before = np.where(p_before > 0, s_before / np.maximum(p_before, 1), 1.0)
    delta = np.empty(w, dtype=np.float64)
    delta[order] = cd_after - cd_before
    return delta


def curve_from_parts(index, base: np.ndarray, eu: np.ndarray, ecase: np.ndarray,
                     ea: np.ndarray, eb: np.ndarray, compress: bool = True,
                     value_of=None) -> dict:
    """Dice risk-coverage curve from pooled sufficient statistics.

    ``index``: coverage index of all voxels; ``base`` (M, C, 3) per-case counts;
    ``eu, ecase, ea, eb``: wrong voxels' uncertainty (same units as ``index``),
    case number, prediction, label.  ``value_of`` maps stored units to ``u``.
    """
    m = base.shape[0]
    n = index.n
    order = np.argsort(eu, kind="stable")[::-1]           # referral order: u descending
    eu_s = eu[order]
    delta = event_case_dice_deltas(base, ecase[order], ea[order], eb[order])
    del order
    mean0 = float(case_dice(base).sum()) / m
    mean_after = np.concatenate([[mean0], mean0 + np.cumsum(delta) / m])  # k events referred
    del delta
    eu_asc = eu_s[::-1]
    if compress:
        wvals = np.unique(eu_asc)
        thr = np.concatenate([[index.max()], wvals, index.prev_distinct(wvals)])
        thr = np.unique(thr[np.isfinite(thr)])[::-1]
    else:
        thr = np.concatenate([v for v, _ in index.iter_distinct()])[::-1]
    thr = thr.astype(np.float64)
    covered = index.count_le(thr)
    k = eu.size - np.searchsorted(eu_asc, thr, side="right")  # wrong voxels with u > t
    risk = 1.0 - mean_after[k]
    coverage = np.concatenate([covered / n, [0.0]])
    risk = np.concatenate([risk, [0.0]])
    thr = np.concatenate([thr, [NEG_INF]])
    if value_of is not None:
        thr = value_of(thr)
    aurc = 100.0 * float(np.sum(-np.diff(coverage) * (risk[1:] + risk[:-1]) * 0.5))
    return {"coverage": coverage, "risk": risk, "threshold": thr, "aurc": aurc}


def counts_at_threshold(stats: list, t: float) -> np.ndarray:
    """(M, C, 3) per-case counts after referring every voxel with ``u > t``."""
    out = []
    for s in stats:
        c = s.counts.copy()
        ref = s.ev_u > t
        k = c.shape[0] + 1
        na = np.bincount(s.ev_pred[ref], minlength=k)[1:]
        nb = np.bincount(s.ev_label[ref], minlength=k)[1:]
        c[:, 0] += nb
        c[:, 1] -= na
        c[:, 2] -= nb
        out.append(c)
    return np.stack(out)


def merged_index(stats: list):
    """One coverage index of every voxel (exact mode: a sorted copy of all ``u``)."""
    idx_cls = HistogramIndex if isinstance(stats[0].index, HistogramIndex) else SortedIndex
    return idx_cls.merge([s.index for s in stats])


def pool_cases(stats: list, merge: bool = True):
    """Pool per-case stats into (index, base, eu, ecase, ea, eb).

    ``merge=False`` returns a :class:`MultiIndex` view instead of a merged copy, which
    is all the Dice curve needs.
    """
    index = merged_index(stats) if merge else MultiIndex([s.index for s in stats])
    base = np.stack([s.counts for s in stats])
    eu = np.concatenate([s.ev_u for s in stats])
    ecase = np.repeat(np.arange(len(stats), dtype=np.int32), [s.ev_u.size for s in stats])
    ea = np.concatenate([s.ev_pred for s in stats])
    eb = np.concatenate([s.ev_label for s in stats])
    return index, base, eu, ecase, ea, eb


def dice_risk_coverage(cases, num_classes: int, *, quantize_bits: int | None = None,
                       quantize_range=(0.0, 1.0), compress: bool = True) -> dict:
    """Exact Dice risk-coverage curve of ``cases``: iterable of (u, prediction, label).

    Returns numpy arrays ``coverage`` (1 -> 0), ``risk``, ``threshold`` (``-inf`` at
    c=0) and ``aurc`` in percent.
    """
    from .case_stats import Quantizer, make_case_stats

    q = Quantizer(quantize_bits, *quantize_range) if quantize_bits else None
    stats = [make_case_stats(u, p, y, num_classes=num_classes, case_id=i, quantizer=q,
                             aggregations=()) for i, (u, p, y) in enumerate(cases)]
    if not stats:
        raise ValueError("no cases")
    return curve_from_parts(*pool_cases(stats), compress=compress,
                            value_of=q.value if q else None)
