"""One interface for the stages after training: a :class:`StageContext` holds what they share (the
config, the module, the data, the trainer, the checkpoint that will be tested), and each
:class:`Stage` says whether it applies to a run and does its one job; :func:`run_stages` runs the
enabled ones in the order given and times each (``stage_seconds`` in summary.json)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import lightning as L
import torch
from omegaconf import DictConfig

from uaseg.models import SelectiveSegModule


@dataclass
class StageContext:
    """What the stages share. ``checkpoint``: the file the test will load ("" without one);
    ``own_checkpoint``: this run wrote it (a stage may add its results to it); ``metrics``: the
    run's metrics.json, which a stage may add to; ``seconds``: wall seconds per stage (the training's
    under ``train``; a stage may time a part of itself as ``<stage>/<part>``)."""

    cfg: DictConfig
    model: SelectiveSegModule
    datamodule: Any
    trainer: L.Trainer
    checkpoint: str
    own_checkpoint: bool
    trust: bool
    device: torch.device | str
    seed: int
    risk_control: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def tested_weights(self) -> SelectiveSegModule:
        """A fresh copy of the weights the test will use: the checkpoint's, else the module in memory."""
        if not self.checkpoint:
            return self.model
        return SelectiveSegModule.load_from_checkpoint(self.checkpoint, map_location="cpu", weights_only=True,
                                                       trust_checkpoint=self.trust)


class Stage:
    """A stage after training: ``name`` (its key in the run's records), ``enabled`` (whether this run
    asks for it) and ``run``."""

    name: str = ""

    def enabled(self, ctx: StageContext) -> bool:
        return True

    def run(self, ctx: StageContext) -> None:
        raise NotImplementedError


def wall_clock(device: torch.device | str = "cpu") -> float:
    """``time.perf_counter()`` once the work queued on a CUDA ``device`` is done (so a stage's time
    is its own, not the next one's)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run_stages(stages: Sequence[Stage], ctx: StageContext) -> dict[str, float]:
    """Run the enabled ``stages`` in order; ``ctx.seconds`` with each one's wall seconds added."""
    for stage in stages:
        if stage.enabled(ctx):
            start = wall_clock(ctx.device)
            stage.run(ctx)
            ctx.seconds[stage.name] = wall_clock(ctx.device) - start
    return ctx.seconds
