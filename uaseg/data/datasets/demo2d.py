"""``dataset=demo2d``: gland-like RGB histology tiles, binary gland vs stroma (GlaS stand-in)."""

from __future__ import annotations

import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    RandAdjustContrastd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    ScaleIntensityRanged,
    SpatialPadd,
)

from uaseg.data.checks import COLOUR_MODES, LoadImageNamedd
from uaseg.data.datasets.demo import DemoDataModule
from uaseg.data.datasets.synth import gland_image


class Demo2DDataModule(DemoDataModule):
    name = "demo2d"
    generator = staticmethod(gland_image)
    spatial_dims = 2
    in_channels = 3
    class_names = ("gland",)
    image_modes = COLOUR_MODES  # prediction reads image files like GlaS

    def train_transforms(self) -> Compose:
        keys = ["image", "label"]
        return Compose(
            [
                SpatialPadd(keys, self.patch_size),
                RandCropByPosNegLabeld(
                    keys, "label", self.patch_size, pos=1, neg=1, num_samples=self.samples_per_image
                ),
                RandFlipd(keys, prob=0.5, spatial_axis=0),
                RandFlipd(keys, prob=0.5, spatial_axis=1),
                RandRotate90d(keys, prob=0.5),
                RandAdjustContrastd("image", prob=0.3, gamma=(0.8, 1.25)),
                EnsureTyped("image", dtype=torch.float32),
                EnsureTyped("label", dtype=torch.long),
            ]
        )

    def eval_transforms(self) -> Compose:
        return Compose([EnsureTyped("image", dtype=torch.float32), EnsureTyped("label", dtype=torch.long)])

    def predict_transforms(self) -> Compose:
        """An 8-bit RGB image file scaled to [0, 1] like the generated tiles (PIL reader, as GlaS)."""
        from uaseg.data.datasets.glas import to_rgb

        return Compose(
            [
                LoadImageNamedd("image", image_only=True, reader="PILReader", converter=to_rgb),
                EnsureChannelFirstd("image"),
                ScaleIntensityRanged("image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
                EnsureTyped("image", dtype=torch.float32),
            ]
        )
