"""One interface for the stages after training: a :class:`StageContext` holds what they share (the
config, the module, the data, the trainer, the checkpoint that will be tested), and each
:class:`Stage` says whether it applies to a run and does its one job; :func:`run_stages` runs the
enabled ones in the order given."""

from __future__ import annotations

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
    run's metrics.json, which a stage may add to."""

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


def run_stages(stages: Sequence[Stage], ctx: StageContext) -> None:
    """Run the enabled ``stages`` in order."""
    for stage in stages:
        if stage.enabled(ctx):
            stage.run(ctx)
