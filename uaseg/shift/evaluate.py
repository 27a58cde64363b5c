"""The shift testbed inside a test: every test case segmented clean and under each corruption, the
validation cases too (clean for the case referral, corrupted for the per-condition recalibration),
each reduced to its exact case stats; :mod:`.measure` turns them into the ``shift`` block.

Used by :class:`uaseg.models.testing.TestScoring` through three calls (``start`` at the test's start,
``add_batch`` per test batch, ``compute`` at its end). The score is the one the referral thresholds
are calibrated on, ``u = 1 - max softmax`` as prediction computes it (``module.segment``).
"""

from __future__ import annotations

import logging
import time

import torch

from uaseg.selective.case_stats import CaseStats, make_case_stats

from .corruptions import corrupt
from .measure import shift_block
from .settings import ShiftSettings

log = logging.getLogger(__name__)


def as_tensor(x) -> torch.Tensor:
    """A batch entry as a plain tensor (a MONAI MetaTensor unwrapped)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


Condition = tuple[str, int]


class ShiftEvaluation:
    """Collects case stats per condition (``settings.conditions``) for one test."""

    def __init__(self, settings: ShiftSettings, num_classes: int, case_aggregation: str = "mean",
                 ignore_index: int | None = None, coverages=(0.95, 0.9, 0.8, 0.7)) -> None:
        self.settings = settings
        self.num_classes = int(num_classes)
        self.aggregation = case_aggregation
        self.ignore_index = ignore_index
        self.coverages = tuple(coverages)
        self.reset()

    def reset(self) -> None:
        self.test: dict[Condition, list[CaseStats]] = {c: [] for c in self.settings.conditions}
        self.val: dict[Condition, list[CaseStats]] = {}
        self.seconds = 0.0
        self.referral_note: str | None = None

    def _stats(self, u, pred, label, case_id: str, group: str) -> CaseStats | None:
        if self.ignore_index is not None and not bool((label != self.ignore_index).any()):
            return None  # nothing annotated: no Dice (as the test metric leaves it out)
        return make_case_stats(u, pred, label, num_classes=self.num_classes, case_id=case_id, group=group,
                               aggregations=(self.aggregation,), ignore_index=self.ignore_index)

    def _segment(self, module, image: torch.Tensor, case_ids: list[str], condition: Condition):
        kind, sev = condition
        if kind != "clean":
            dims = image.ndim - 2
            image = torch.stack([corrupt(image[i], kind, sev, self.settings.seed, cid, dims)
                                 for i, cid in enumerate(case_ids)])
        return module.segment(image)[:2]

    @torch.no_grad()
    def start(self, module, datamodule) -> None:
        """The validation cases: clean (case referral, drift range) and, with ``recalibrate``, under
        every corruption (the stand-in for a site's own calibration cases)."""
        self.reset()
        if datamodule is None or not hasattr(datamodule, "val_dataloader"):
            log.warning("eval.shift: no datamodule, so no validation cases: no case referral or recalibration")
            return
        start = time.perf_counter()
        conditions = self.settings.conditions if self.settings.recalibrate else [("clean", 0)]
        self.val = {c: [] for c in conditions}
        datamodule.setup()
        for batch in datamodule.val_dataloader():
            image = as_tensor(batch["image"]).to(module.device)
            label = as_tensor(batch["label"])[:, 0].long().to(module.device)
            ids = [str(c) for c in batch["case_id"]]
            groups = [str(g) for g in batch.get("group") or ["val"] * len(ids)]
            for condition in conditions:
                u, pred = self._segment(module, image, ids, condition)
                for i, cid in enumerate(ids):
                    s = self._stats(u[i], pred[i], label[i], cid, groups[i])
                    if s is not None:
                        self.val[condition].append(s)
        log.info("eval.shift: %d validation cases under %d condition(s) in %.0f s; the test cases follow, each under "
                 "%d", len(self.val[("clean", 0)]), len(conditions), time.perf_counter() - start,
                 len(self.settings.conditions))
        self.referral_note = self.settings.too_few(len(self.val[("clean", 0)]))
        if self.referral_note:
            log.warning("%s", self.referral_note)
        self.seconds += time.perf_counter() - start

    @torch.no_grad()
    def add_batch(self, module, image: torch.Tensor, label: torch.Tensor, case_ids: list[str], groups: list[str],
                  clean: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """One test batch under every condition (``clean``: its max-softmax maps, already computed)."""
        start = time.perf_counter()
        for condition in self.settings.conditions:
            u, pred = clean if (condition == ("clean", 0) and clean is not None) else \
                self._segment(module, image, case_ids, condition)
            for i, cid in enumerate(case_ids):
                s = self._stats(u[i], pred[i], label[i], cid, groups[i])
                if s is not None:
                    self.test[condition].append(s)
        self.seconds += time.perf_counter() - start
        done = len(self.test[("clean", 0)])
        if done // 10 > (done - len(case_ids)) // 10:   # a line every 10 test cases: a long test never looks hung
            log.info("eval.shift: %d test cases under %d conditions (%.0f s so far)", done, len(self.settings.conditions),
                     self.seconds)

    def compute(self, calibrations: dict | None, units: dict | None = None, val_units: dict | None = None,
                class_names=None) -> dict:
        """The ``shift`` block of ``summary.json`` (:func:`.measure.shift_block`); ``units``/``val_units``:
        case id -> patient id of the test / validation cases (None: cases are the units)."""
        test, val = _gathered(self.test), _gathered(self.val)
        settings = self.settings
        if self.referral_note:
            from dataclasses import replace

            settings = replace(settings, case_referral=None)
        block = shift_block(settings, test, val, calibrations, self.aggregation, self.coverages,
                            units, val_units, class_names)
        if self.referral_note:
            block["case_referral_note"] = self.referral_note
        block["seconds"] = self.seconds
        return block


def shift_evaluation(evaluation: dict, net: dict, num_classes: int, ignore_index: int | None) -> ShiftEvaluation | None:
    """The module's testbed from its ``eval`` config (None when ``eval.shift`` is off or absent, as in
    checkpoints written before it existed)."""
    settings = ShiftSettings.from_config((evaluation or {}).get("shift"), int(net.get("spatial_dims", 2)),
                                         int(net.get("in_channels", 1)))
    if settings is None:
        return None
    return ShiftEvaluation(settings, num_classes, evaluation.get("case_aggregation", "mean"), ignore_index,
                           tuple(evaluation.get("coverages") or (0.95, 0.9, 0.8, 0.7)))


def _gathered(by_condition: dict) -> dict:
    """Every process's cases (DDP: each rank tested a shard), in one dict per condition."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1):
        return by_condition
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, by_condition)
    out: dict = {}
    for part in parts:
        for condition, stats in part.items():
            seen = {s.case_id for s in out.setdefault(condition, [])}
            out[condition] += [s for s in stats if s.case_id not in seen]   # DistributedSampler padding
    return out
