"""A line every ``every_s`` seconds while a run trains, validates or tests without a progress bar on a
terminal (piped output, a batch job's log): steps done, rate and the time left, so a run on a busy
machine, where one epoch can take half an hour, never looks hung between its per-epoch lines.

The time is checked once per batch (a batch longer than ``every_s`` delays the line to its end). The
rate is measured since the stage started (training: including its validations, so the ETA of the
training steps includes them in proportion); epochs are counted from 1.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L

from uaseg.callbacks.progress import no_bar_drawn

log = logging.getLogger("uaseg.progress")


def clock(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` / ``45 s``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _total(n: Any) -> float:
    try:
        return float(n[0] if isinstance(n, (list, tuple)) else n)
    except (TypeError, ValueError, IndexError):
        return math.inf


class Heartbeat(L.Callback):
    """One INFO line at most every ``every_s`` seconds (``callbacks.heartbeat.every_s``, 60 by default);
    ``always`` also on a terminal with a bar (the value is checked with the config, uaseg/config/check.py)."""

    def __init__(self, every_s: float = 60.0, always: bool = False) -> None:
        self.every_s = float(every_s)
        self.always = always
        self._last = 0.0
        self._stage_start = {}  # stage -> (time, steps or batches done at its start)

    def _start(self, stage: str, done: int = 0) -> None:
        now = time.monotonic()
        self._stage_start[stage] = (now, done)
        self._last = now

    def _due(self, trainer: L.Trainer) -> bool:
        if not trainer.is_global_zero or getattr(trainer, "sanity_checking", False):
            return False
        if not (self.always or no_bar_drawn(trainer)):
            return False
        return time.monotonic() - self._last >= self.every_s

    def _line(self, stage: str, done: int, total: float, unit: str, where: str) -> str:
        start, done0 = self._stage_start.get(stage, (time.monotonic(), 0))
        elapsed = time.monotonic() - start
        rate = (done - done0) / elapsed if elapsed > 0 else math.nan
        left = (total - done) / rate if rate > 0 and math.isfinite(total) else math.nan
        of = f"/{int(total)}" if math.isfinite(total) else ""
        plural = "batches" if unit == "batch" else f"{unit}s"
        return (f"{stage}: {where}{unit} {done}{of}, {rate:.2f} {plural}/s, "
                f"ETA {clock(left)}" + (" (training steps left; validation included in the rate)"
                                         if stage == "training" else ""))

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("training", trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stage_start["validation"] = (time.monotonic(), 0)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("testing")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if not self._due(trainer):
            return
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        try:
            total = _total(trainer.estimated_stepping_batches)
        except Exception:  # e.g. a dataloader without a length: no total, no ETA
            total = math.inf
        log.info("%s", self._line("training", trainer.global_step, total, "step",
                                  f"epoch {trainer.current_epoch + 1}{epochs}, "))
        self._last = time.monotonic()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not self._due(trainer):
            return
        log.info("%s", self._line("validation", batch_idx + 1, _total(trainer.num_val_batches), "batch",
                                  f"after epoch {trainer.current_epoch + 1}, "))
        self._last = time.monotonic()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if not self._due(trainer):
            return
        log.info("%s", self._line("testing", batch_idx + 1, _total(trainer.num_test_batches), "batch", ""))
        self._last = time.monotonic()
