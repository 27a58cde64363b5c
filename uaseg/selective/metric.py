"""torchmetrics wrapper around :class:`SelectiveAccumulator` (DDP-safe).

``update`` reduces each case to its sufficient statistics (see ``case_stats``) and
stores them as tensors in list states with ``dist_reduce_fx="cat"``.  torchmetrics
concatenates list states before gathering, so every state is a flat tensor and
per-case lengths are stored alongside to split them again in ``compute``.
Case ids and groups travel as UTF-8 byte tensors.  A DistributedSampler that pads
the last batch repeats cases on another rank: after a multi-process gather, a repeated id
with the same voxel count is that padding and is counted once; within one process (or with
a different size) a duplicate id is an error.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import torch
from torchmetrics import Metric

from .accumulator import DEFAULT_COVERAGES, SelectiveAccumulator
from .case_stats import CaseStats
from .coverage import HistogramIndex, SortedIndex
from .result import SelectiveResult

log = logging.getLogger(__name__)

_STATES = ("index_values", "counts", "ev_u", "ev_pred", "ev_label", "aggregate",
           "id_bytes", "group_bytes", "lengths")


def _as_list(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return list(x)


def _split(t: torch.Tensor, sizes) -> list[np.ndarray]:
    a = t.detach().cpu().numpy()
    return np.split(a, np.cumsum(sizes)[:-1]) if len(sizes) else []


class SelectiveSegmentationMetric(Metric):
    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, num_classes: int, coverages=DEFAULT_COVERAGES,
                 quantize_bits: int | None = None, case_aggregation: str = "mean",
                 bootstrap: int = 1000, seed: int = 0, quantize_range=(0.0, 1.0),
                 ignore_index: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self._acc = SelectiveAccumulator(num_classes, coverages, quantize_bits,
                                         quantize_range, case_aggregation, bootstrap, seed, ignore_index)
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._local_ids: set[str] = set()

    def update(self, uncertainty, prediction, label, case_id, group="test") -> None:
        """One case, or a batch when ``case_id`` is a list (leading batch dimension)."""
        if isinstance(case_id, (list, tuple)):
            groups = group if isinstance(group, (list, tuple)) else [group] * len(case_id)
            for i, cid in enumerate(case_id):
                self.update(uncertainty[i], prediction[i], label[i], cid, groups[i])
            return
        cid = str(case_id)
        if cid in self._local_ids:
            raise ValueError(f"duplicate case id {cid!r}")
        ignore = self._acc.ignore_index
        if ignore is not None and not bool((torch.as_tensor(label) != ignore).any()):
            log.warning("case %s: every voxel is labelled ignore (%d); it is left out of the evaluation", cid, ignore)
            return
        s = self._acc.make_stats(uncertainty, prediction, label, cid, group)
        self._local_ids.add(cid)
        idx_vals = s.index.counts if isinstance(s.index, HistogramIndex) else s.index.values
        ib, gb = cid.encode(), str(group).encode()
        parts = {
            "index_values": torch.from_numpy(np.ascontiguousarray(idx_vals)),
            "counts": torch.from_numpy(s.counts.reshape(-1)),
            "ev_u": torch.from_numpy(s.ev_u.astype(np.int32) if s.ev_u.dtype.kind == "u" else s.ev_u),
            "ev_pred": torch.from_numpy(s.ev_pred.astype(np.int32)),
            "ev_label": torch.from_numpy(s.ev_label.astype(np.int32)),
            "aggregate": torch.tensor([s.aggregates[self._acc.case_aggregation]], dtype=torch.float64),
            "id_bytes": torch.tensor(list(ib), dtype=torch.uint8),
            "group_bytes": torch.tensor(list(gb), dtype=torch.uint8),
            "lengths": torch.tensor([[len(idx_vals), s.ev_u.size, len(ib), len(gb), s.n]],
                                    dtype=torch.int64),
        }
        for name, t in parts.items():
            getattr(self, name).append(t.to(self.device))

    def _wrap_compute(self, compute):
        """torchmetrics' wrapper gathers the states across processes (kept), then walks the result
        twice with ``apply_to_collection`` looking for tensors to squeeze and clone, deep-copying
        every dataclass on the way. The result is a :class:`SelectiveResult` of numpy arrays: keep
        the gather, skip the walks (and the cache: each compute is followed by a reset)."""
        @functools.wraps(compute)
        def wrapped(*args, **kwargs):
            with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                                   should_unsync=self._should_unsync):
                return compute(*args, **kwargs)
        return wrapped

    def _case_stats(self) -> list[CaseStats]:
        lens = [torch.cat(_as_list(self.lengths)).cpu().numpy()] if _as_list(self.lengths) else []
        if not lens:
            return []
        lens = lens[0].reshape(-1, 5)
        m, c = len(lens), self._acc.num_classes - 1
        cat = {name: torch.cat(_as_list(getattr(self, name))) for name in _STATES}
        idx_vals = _split(cat["index_values"], lens[:, 0])
        ev_u, ev_p, ev_y = (_split(cat[k], lens[:, 1]) for k in ("ev_u", "ev_pred", "ev_label"))
        ids = [b.tobytes().decode() for b in _split(cat["id_bytes"], lens[:, 2])]
        grps = [b.tobytes().decode() for b in _split(cat["group_bytes"], lens[:, 3])]
        counts = cat["counts"].cpu().numpy().reshape(m, c, 3)
        aggs = cat["aggregate"].cpu().numpy()
        quant = self._acc.quantizer is not None
        out = []
        for i in range(m):
            index = HistogramIndex(idx_vals[i]) if quant else SortedIndex(idx_vals[i], assume_sorted=True)
            out.append(CaseStats(case_id=ids[i], group=grps[i], n=int(lens[i, 4]), index=index,
                                 counts=counts[i].astype(np.int64), ev_u=ev_u[i],
                                 ev_pred=ev_p[i], ev_label=ev_y[i],
                                 aggregates={self._acc.case_aggregation: float(aggs[i])}))
        return out

    @staticmethod
    def _drop_padding(stats: list[CaseStats]) -> list[CaseStats]:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        seen: dict[str, int] = {}
        out = []
        for s in stats:
            if distributed and seen.get(s.case_id) == s.n:
                continue  # DistributedSampler padding: the same case evaluated on two ranks
            seen[s.case_id] = s.n
            out.append(s)
        return out

    def gathered_case_stats(self) -> list[CaseStats]:
        """Every case's stats once, gathered across processes (call before ``reset``): for evaluations
        beyond :meth:`compute`, e.g. calibrated referral thresholds."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               should_unsync=self._should_unsync):
            return self._drop_padding(self._case_stats())

    def compute(self) -> SelectiveResult:
        self._acc.reset()
        for s in self._drop_padding(self._case_stats()):
            self._acc.add_stats(s)   # raises on a genuine duplicate id
        try:
            return self._acc.compute()
        finally:
            self._acc.reset()

    def reset(self) -> None:
        super().reset()
        self._local_ids = set()
