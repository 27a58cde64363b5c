"""Where training stands, as the objective needs it: the fractional epoch its warm-up rises with (per
step, not per epoch), whether this step's metrics are logged (the gradient ratio is measured only
then), and a once-per-run warning when the ranking term's gradient dominates with many classes."""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

#: gradient ratio (ranking / segmentation, at the logits) above which a multi-class run is warned
DOMINANT_RATIO = 100.0


def training_progress(trainer: Any | None, epoch: int, batch_idx: int) -> float:
    """``epoch`` plus the fraction of this epoch's batches done (0 without a trainer)."""
    n = getattr(trainer, "num_training_batches", None) if trainer is not None else None
    frac = batch_idx / n if isinstance(n, (int, float)) and math.isfinite(n) and n > 0 else 0.0
    return epoch + min(frac, 1.0)


def logs_this_step(trainer: Any | None) -> bool:
    """Whether Lightning writes this step's metrics."""
    connector = getattr(trainer, "_logger_connector", None) if trainer is not None else None
    return bool(getattr(connector, "should_update_logs", False))


class DominanceWarning:
    """Once per run: with more than two classes a ranking term whose gradient dominates the
    segmentation term's slows segmentation (docs/multiclass_3d.md)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.warned = False

    def __call__(self, ratio: Any, epoch: int) -> None:
        if ratio is None or self.num_classes <= 2 or self.warned or float(ratio) <= DOMINANT_RATIO:
            return
        self.warned = True
        log.warning("the ranking term's gradient at the logits is %.0fx the segmentation term's (epoch %d): "
                    "with %d classes it can slow segmentation; see loss=multiclass "
                    "(docs/multiclass_3d.md)", float(ratio), epoch, self.num_classes)
