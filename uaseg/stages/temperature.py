"""The ``temperature`` score's stage: temperature scaling fitted on the validation cases with the
weights that will be tested (:mod:`uaseg.uncertainty.temperature`)."""

from __future__ import annotations

import logging

import torch

from uaseg.errors import ConfigError
from uaseg.io import update_checkpoint
from uaseg.stages.base import Stage, StageContext
from uaseg.stages.validation import validation_batches

log = logging.getLogger(__name__)


@torch.no_grad()
def fit_temperature_on_validation(module, datamodule, max_voxels: int, seed: int = 0,
                                  device: str | torch.device = "cpu") -> tuple[float, int]:
    """``(T, voxels used)``: temperature scaling fitted on a seeded uniform subsample of at most
    ``max_voxels`` validation voxels, spread evenly over the cases (logits of the sliding window)."""
    import numpy as np

    from uaseg.uncertainty.temperature import fit_temperature

    datamodule.setup()
    per_case = max(1, int(max_voxels) // max(len(datamodule.splits["val"]), 1))
    rng = np.random.default_rng(seed)
    zs, ys = [], []
    for image, label, _ in validation_batches(module, datamodule, device):
        logits = module.inferer(image, module.net)
        z = logits.float().movedim(1, -1).reshape(-1, logits.shape[1]).cpu()
        y = label.reshape(-1)
        ignore = getattr(module, "ignore_label", None)
        if ignore is not None:  # unannotated voxels have no label to fit to
            z, y = z[y != ignore], y[y != ignore]
        if y.numel() > per_case:
            idx = torch.from_numpy(rng.choice(y.numel(), per_case, replace=False))
            z, y = z[idx], y[idx]
        zs.append(z)
        ys.append(y)
    if not ys:
        raise ConfigError("the validation split is empty: no voxels to fit the temperature on")
    labels = torch.cat(ys)
    return fit_temperature(torch.cat(zs), labels), int(labels.numel())


class Temperature(Stage):
    """Temperature of the ``temperature`` score (tested runs that list it): fitted on the validation
    cases with the weights that will be tested, kept on the module and, for a checkpoint this run
    wrote, in that checkpoint."""

    name = "temperature"

    def enabled(self, ctx: StageContext) -> bool:
        return bool(ctx.cfg.get("test", True)) and "temperature" in ctx.model.scores

    def run(self, ctx: StageContext) -> None:
        model = ctx.model
        model.temperature, n = fit_temperature_on_validation(ctx.tested_weights(), ctx.datamodule,
                                                             int(ctx.cfg.eval.temperature_voxels),
                                                             seed=ctx.seed, device=ctx.device)
        log.info("temperature T = %.4f fitted on %d validation voxels", model.temperature, n)
        if ctx.checkpoint and ctx.own_checkpoint and ctx.trainer.is_global_zero:
            update_checkpoint(ctx.checkpoint, {"uaseg_temperature": model.temperature})
