"""``dataset=demo3d_mri``: heart-like MRI volumes, seven small low-contrast structures, few cases.

The built-in stand-in for real multi-class 3-D MRI (issue 27): the objectives that separate on
``demo3d``'s CT hardly separate on real MRI, where the cavities differ little in signal, intensities
have no fixed scale and only three or four volumes train a fold. Cases come from
:mod:`uaseg.data.datasets.synth_mri`; each volume is scaled by its own 0.5 / 99.5 percentiles (MRI has
no HU to window), and patch centres are drawn class-balanced so the small structures are seen.
"""

from __future__ import annotations

import torch
from monai.transforms import EnsureTyped, RandCropByLabelClassesd, ScaleIntensityRangePercentilesd

from uaseg.data.datasets.demo3d import Demo3DDataModule
from uaseg.data.datasets.synth import HEART_CLASSES
from uaseg.data.datasets.synth_mri import heart_mri_volume


class Demo3DMRIDataModule(Demo3DDataModule):
    name = "demo3d_mri"
    generator = staticmethod(heart_mri_volume)
    class_names = HEART_CLASSES

    def _normalise(self, label: bool = True) -> list:
        return [
            EnsureTyped("image", dtype=torch.float32),
            ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        ] + ([EnsureTyped("label", dtype=torch.long)] if label else [])

    def _crop(self, keys: list[str]):
        return RandCropByLabelClassesd(keys, "label", self.patch_size, ratios=[1] * self.num_classes,
                                       num_classes=self.num_classes, num_samples=self.samples_per_image, warn=False)
