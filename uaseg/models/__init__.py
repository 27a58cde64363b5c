"""Backbones come from MONAI (configured in ``conf/model``); this package holds the LightningModule."""

from uaseg.models.module import SelectiveSegModule

__all__ = ["SelectiveSegModule"]
