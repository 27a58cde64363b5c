"""The test of the checkpoint the run selected; the report (summary.json, curves, figures) is written
by :class:`uaseg.callbacks.SelectiveReportWriter` during it."""

from __future__ import annotations

from uaseg.stages.base import Stage, StageContext


class TestReport(Stage):
    """``trainer.test`` on the selected checkpoint (``test=true``); its metrics join the run's."""

    name = "test"
    __test__ = False  # not a pytest test class

    def enabled(self, ctx: StageContext) -> bool:
        return bool(ctx.cfg.get("test", True))

    def run(self, ctx: StageContext) -> None:
        # Lightning's own metric table (raw values: Dice as a fraction next to AURC in %) is replaced by
        # the selective table (everything in %) and the runner's closing block
        ctx.trainer.test(ctx.model, datamodule=ctx.datamodule, ckpt_path=ctx.checkpoint or None,
                         weights_only=True, verbose=False)
        ctx.metrics.update({k: float(v) for k, v in ctx.trainer.callback_metrics.items()})
