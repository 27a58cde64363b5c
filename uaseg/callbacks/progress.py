"""Training progress a person can follow: the progress bar with Dice and AURC in percent, drawn only on a
terminal, and one log line per epoch when no bar is drawn (output piped to a file or a pager, a batch
job, or ``callbacks.progress_bar=null``), so such a run never looks hung (between those lines:
:class:`uaseg.callbacks.heartbeat.Heartbeat`). Epochs are counted from 1 everywhere a person reads
them (bar, log lines, figures, the report); Lightning's stored counter (``csv/metrics.csv``,
checkpoint names ``best-000.ckpt``) stays 0-based."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from uaseg.selective.format import display_metric

log = logging.getLogger("uaseg.progress")


def _shown(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: display_metric(k, v) if isinstance(v, (int, float)) and ("dice" in k or "aurc" in k) else v
            for k, v in metrics.items()}


class PercentRichProgressBar(RichProgressBar):
    """Lightning's Rich progress bar, with Dice and AURC-type metrics in percent (one unit per kind),
    epochs counted from 1, and switched off when stdout is not a terminal (a bar redrawn into a log
    file is noise: :class:`EpochLog` writes one line per epoch there instead)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not output_is_terminal():
            self.disable()

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            text += f"/{self.trainer.max_epochs}"
        return f"{text:{len(self.validation_description)}}"

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return _shown(super().get_metrics(trainer, pl_module))


def output_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def no_bar_drawn(trainer: L.Trainer) -> bool:
    """True when a person sees no progress bar: output piped, or no (enabled) bar configured."""
    bar = trainer.progress_bar_callback
    return bar is None or getattr(bar, "is_disabled", False) or not output_is_terminal()


class EpochLog(L.Callback):
    """One INFO line per training epoch (epoch, seconds, loss, validation Dice and AURC in percent)
    when ``always`` or when no progress bar is drawn on a terminal."""

    KEYS = ("train/loss", "val/dice", "val/aurc_dice", "val/aurc")

    def __init__(self, always: bool = False) -> None:
        self.always = always
        self._start = 0.0

    def _active(self, trainer: L.Trainer) -> bool:
        return self.always or no_bar_drawn(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not self._active(trainer):
            return
        metrics = trainer.callback_metrics
        parts = [f"{k} {display_metric(k, float(metrics[k]))}" for k in self.KEYS if k in metrics]
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        log.info("epoch %d%s done in %.1f s, step %d: %s", trainer.current_epoch + 1, total,
                 time.perf_counter() - self._start, trainer.global_step, ", ".join(parts) or "no metrics yet")
