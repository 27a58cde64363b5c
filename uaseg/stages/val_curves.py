"""The validation curves of the other one-pass scores of ``eval.scores`` (margin, entropy, ...),
stored in the checkpoint this run wrote, so ``predict.py score=<name> coverage=c`` finds that
score's threshold (max_softmax's curve is the checkpoint's own, tcp's the head's)."""

from __future__ import annotations

from uaseg.io import update_checkpoint
from uaseg.models.module import PREDICT_SCORES, VAL_CURVES_KEY
from uaseg.stages.base import Stage, StageContext
from uaseg.stages.validation import validation_curves


def _names(ctx: StageContext) -> list[str]:
    return [s for s in ctx.model.scores if s in PREDICT_SCORES and s not in ("max_softmax", "tcp")]


class ValCurves(Stage):
    """Curves of the scores that need one, for a checkpoint this run trained."""

    name = "val_curves"

    def enabled(self, ctx: StageContext) -> bool:
        return bool(_names(ctx)) and bool(ctx.checkpoint) and bool(ctx.cfg.get("train", True))

    def run(self, ctx: StageContext) -> None:
        curves = validation_curves(ctx.tested_weights(), ctx.datamodule, _names(ctx), device=ctx.device)
        ctx.model.val_curves = curves
        if curves and ctx.trainer.is_global_zero:
            update_checkpoint(ctx.checkpoint, {VAL_CURVES_KEY: {k: g.to_dict() for k, g in curves.items()}})
