"""How many voxels a threshold covers: exact sorted values or a quantised histogram.

A voxel with uncertainty ``u`` is *covered* (kept by the network) at threshold ``t``
when ``u <= t``; voxels with equal ``u`` are covered or referred together.  Both
indexes below answer the same questions in "storage units" (raw ``u`` for the exact
index, integer levels for the quantised one), so the curve code never cares which
one it has:

* :class:`SortedIndex` keeps every value, sorted (4 bytes a voxel for float32 input).
* :class:`HistogramIndex` keeps ``np.bincount`` of integer levels: O(levels) memory.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

NEG_INF = -np.inf


class SortedIndex:
    """All values sorted ascending; exact coverage at any threshold."""

    def __init__(self, values: np.ndarray, assume_sorted: bool = False):
        v = np.asarray(values).ravel()
        if not assume_sorted:
            v = np.sort(v)
        self.values = v
        self.n = int(v.size)

    @classmethod
    def merge(cls, indexes: list["SortedIndex"]) -> "SortedIndex":
        if not indexes:
            return cls(np.zeros(0, np.float32), assume_sorted=True)
        dtype = np.result_type(*[ix.values.dtype for ix in indexes])
        out = np.empty(sum(ix.n for ix in indexes), dtype=dtype)
        pos = 0
        for ix in indexes:
            out[pos:pos + ix.n] = ix.values
            pos += ix.n
        out.sort()  # in place: no second copy
        return cls(out, assume_sorted=True)

    def _same_dtype(self, t):
        """``t`` in the stored dtype when that is exact: numpy's searchsorted otherwise converts
        the whole (huge) sorted array to the common dtype on every call."""
        t = np.asarray(t)
        cast = t.astype(self.values.dtype)
        return cast if np.array_equal(cast, t, equal_nan=True) else t

    def count_le(self, t) -> np.ndarray:
        return np.searchsorted(self.values, self._same_dtype(t), side="right")

    def prev_distinct(self, t) -> np.ndarray:
        """Largest stored value strictly below ``t`` (``-inf`` where none)."""
        i = np.searchsorted(self.values, self._same_dtype(t), side="left")
        out = np.full(np.shape(i), NEG_INF)
        ok = i > 0
        out[ok] = self.values[np.asarray(i)[ok] - 1]
        return out

    def max(self):
        return self.values[-1]

    def iter_distinct(self, chunk: int = 1 << 20) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (distinct values ascending, number of voxels <= value) chunk by chunk."""
        v, n = self.values, self.n
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            seg = v[a:b]
            nxt = v[a + 1:b + 1]
            is_end = np.ones(b - a, dtype=bool)
            is_end[: nxt.size] = seg[: nxt.size] != nxt
            ends = np.flatnonzero(is_end)
            yield seg[ends], ends + a + 1

    def nbytes(self) -> int:
        return int(self.values.nbytes)


class HistogramIndex:
    """Counts per integer level (``np.bincount``); values are the level numbers."""

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts, dtype=np.int64)
        self._cum = np.cumsum(self.counts)
        self.n = int(self._cum[-1]) if self._cum.size else 0
        self._levels = np.flatnonzero(self.counts)

    @classmethod
    def from_levels(cls, levels: np.ndarray, num_levels: int) -> "HistogramIndex":
        return cls(np.bincount(np.asarray(levels).ravel(), minlength=num_levels))

    @classmethod
    def merge(cls, indexes: list["HistogramIndex"]) -> "HistogramIndex":
        return cls(np.sum([ix.counts for ix in indexes], axis=0))

    def count_le(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        idx = np.floor(np.clip(t, -1, self.counts.size - 1)).astype(np.int64)
        out = np.where(idx >= 0, self._cum[np.maximum(idx, 0)], 0)
        return out

    def prev_distinct(self, t) -> np.ndarray:
        i = np.searchsorted(self._levels, t, side="left")
        out = np.full(np.shape(i), NEG_INF)
        ok = i > 0
        out[ok] = self._levels[np.asarray(i)[ok] - 1]
        return out

    def max(self):
        return self._levels[-1]

    def iter_distinct(self, chunk: int = 1 << 20):
        yield self._levels, self._cum[self._levels]

    def nbytes(self) -> int:
        return int(self.counts.nbytes + self._cum.nbytes + self._levels.nbytes)


class MultiIndex:
    """Several per-case indexes seen as one, without merging them (saves a copy)."""

    def __init__(self, indexes: list):
        self.indexes = indexes
        self.n = sum(ix.n for ix in indexes)

    def count_le(self, t) -> np.ndarray:
        return sum(ix.count_le(t) for ix in self.indexes)

    def prev_distinct(self, t) -> np.ndarray:
        return np.max([ix.prev_distinct(t) for ix in self.indexes], axis=0)

    def max(self):
        return max(ix.max() for ix in self.indexes)


def nearest_coverage(index, target: float) -> tuple[int, float]:
    """Achievable covered count nearest to ``target * n`` and its threshold.

    Achievable counts are the ends of tie groups (plus 0).  With ``x = target*n``
    the candidates are the end of the tie group containing position ``ceil(x)`` and
    the end of the group before it; the nearer one wins, a tie in distance goes to
    the larger coverage.  Threshold ``-inf`` means "refer everything".
    """
    n = index.n
    x = float(target) * n
    j = int(min(max(np.ceil(x - 1e-6), 1), n))
    if isinstance(index, SortedIndex):
        v = index.values[j - 1]
    else:
        v = index._levels[np.searchsorted(index._cum[index._levels], j, side="left")]
    hi = int(index.count_le(v))
    lo_t = float(index.prev_distinct(v))
    lo = int(index.count_le(lo_t)) if np.isfinite(lo_t) else 0
    if (x - lo) < (hi - x):
        return lo, lo_t
    return hi, float(v)
