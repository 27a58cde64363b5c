"""``dataset=demo3d_abdomen``: abdomen-like CT volumes (HU) with thick slices, six structures.

The second built-in 3-D dataset, of another character than ``demo3d``'s heart: anisotropic voxels
(slices three in-plane voxels thick, ``(size, size, size // 2)`` arrays), thin and small structures
(ureters, pancreas, liver lesions) and classes with overlapping HU (liver/spleen, pancreas/bowel);
see :mod:`uaseg.data.datasets.synth_abdomen`.
"""

from __future__ import annotations

from typing import Any

from monai.transforms import RandCropByLabelClassesd

from uaseg.data.datasets.demo3d import Demo3DDataModule
from uaseg.data.datasets.synth_abdomen import ABDOMEN_CLASSES, ABDOMEN_SPACING, abdomen_volume


class Demo3DAbdomenDataModule(Demo3DDataModule):
    name = "demo3d_abdomen"
    generator = staticmethod(abdomen_volume)
    class_names = ABDOMEN_CLASSES
    #: voxel size (x, y, z) relative to the in-plane voxel
    spacing = ABDOMEN_SPACING

    def _crop(self, keys: list[str]):
        """Patch centres drawn class-balanced (background included): the ureters and lesions are a few
        hundred voxels, so positive/negative sampling would rarely show them. No flips either: the liver
        is on the right, the spleen on the left."""
        return RandCropByLabelClassesd(keys, "label", self.patch_size, ratios=[1] * self.num_classes,
                                       num_classes=self.num_classes, num_samples=self.samples_per_image, warn=False)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"spacing": list(self.spacing)}
