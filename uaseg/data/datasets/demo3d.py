"""``dataset=demo3d``: heart-like CT volumes (HU), seven structures in MM-WHS class order."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    SpatialPadd,
)

from uaseg.data.base import check_dataset_options
from uaseg.data.checks import CheckFinited, LoadImageNamedd
from uaseg.data.datasets.demo import DemoDataModule
from uaseg.data.datasets.synth import HEART_CLASSES, heart_volume


class Demo3DDataModule(DemoDataModule):
    name = "demo3d"
    generator = staticmethod(heart_volume)
    spatial_dims = 3
    in_channels = 1
    class_names = HEART_CLASSES

    def __init__(self, hu_window: Sequence[float] = (-1000.0, 1000.0), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_dataset_options(hu_window=list(hu_window) if isinstance(hu_window, (list, tuple)) else hu_window)
        self.hu_window = tuple(float(v) for v in hu_window)

    def _normalise(self, label: bool = True) -> list:
        lo, hi = self.hu_window
        return [
            EnsureTyped("image", dtype=torch.float32),
            ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        ] + ([EnsureTyped("label", dtype=torch.long)] if label else [])

    def _crop(self, keys: list[str]):
        """How training patches are drawn: half centred on foreground, half anywhere."""
        return RandCropByPosNegLabeld(keys, "label", self.patch_size, pos=1, neg=1, num_samples=self.samples_per_image)

    def train_transforms(self) -> Compose:
        keys = ["image", "label"]
        # no flips: left/right structures have distinct labels
        return Compose(
            self._normalise()
            + [
                SpatialPadd(keys, self.patch_size),
                self._crop(keys),
                RandScaleIntensityd("image", factors=0.1, prob=0.5),
                RandShiftIntensityd("image", offsets=0.05, prob=0.5),
            ]
        )

    def eval_transforms(self) -> Compose:
        return Compose(self._normalise())

    def predict_transforms(self) -> Compose:
        """A CT volume file (HU, e.g. NIfTI) on its own grid, normalised as ``eval_transforms``."""
        return Compose(
            [LoadImageNamedd("image", image_only=True), EnsureChannelFirstd("image"), CheckFinited("image")]
            + self._normalise(label=False)
        )
