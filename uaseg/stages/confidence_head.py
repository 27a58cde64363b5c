"""ConfidNet's second stage (``confidence_head``, :mod:`uaseg.uncertainty.confidnet`): a head fitted
on the frozen weights that will be tested, with its validation curve (``predict.py score=tcp``)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from uaseg.io import update_checkpoint
from uaseg.stages.base import Stage, StageContext
from uaseg.stages.validation import validation_curves


def fit_confidence_head_stage(module, datamodule, settings, device: str | torch.device = "cpu",
                              seed: int = 0) -> dict:
    """The ConfidNet second stage (:mod:`uaseg.uncertainty.confidnet`): a head fitted on the training
    split with ``module``'s network frozen, then its validation risk-coverage curve (so prediction can
    turn ``coverage=`` into a ``tcp`` threshold); the head is set on ``module``. Returns its cost."""
    from uaseg.uncertainty.confidnet import fit_confidence_head

    datamodule.setup()
    spatial_dims = int(module.hparams["net"].get("spatial_dims", 2))
    head, info = fit_confidence_head(module.net, datamodule.train_dataloader(), spatial_dims, settings,
                                     device=device, seed=seed)
    module.set_confidence_head(head, info)
    module.set_confidence_head(head, info, validation_curves(module, datamodule, ["tcp"], device).get("tcp"))
    return info


class ConfidenceHead(Stage):
    """The head of ``confidence_head`` (when set): kept on the module (the test loads the
    checkpoint's weights, not the head) and, for a checkpoint this run wrote, in that checkpoint."""

    name = "confidence_head"

    def enabled(self, ctx: StageContext) -> bool:
        return ctx.cfg.get("confidence_head") is not None

    def run(self, ctx: StageContext) -> None:
        from uaseg.uncertainty.confidnet import HEAD_KEY, HeadSettings

        settings = HeadSettings.from_config(OmegaConf.to_container(ctx.cfg.confidence_head, resolve=True))
        source = ctx.tested_weights()
        fit_confidence_head_stage(source, ctx.datamodule, settings, device=ctx.device, seed=ctx.seed)
        ctx.model.confidence = source.confidence
        if ctx.checkpoint and ctx.own_checkpoint and ctx.trainer.is_global_zero:
            update_checkpoint(ctx.checkpoint, {HEAD_KEY: source.confidence_record()})
