"""MM-WHS 2017 cardiac CT (``dataset=mmwhs``), read from the released files.

Layout (``dataset.root``; a folder that directly holds the ``ct_train_*`` files works too)::

    <root>/ct_train/ct_train_1001_image.nii.gz   ct_train_1001_label.nii.gz
                    ...                          (1001..1020; .nii also accepted)
    <root>/ct_test/...                           (unlabelled, ignored)

Case ids are the numbers found in the file names (``"1001"``); every case has ``group="ct"``.

Labels 500 LV, 600 RV, 420 LA, 550 RA, 205 Myo, 820 AO, 850 PA become classes 1..7 in that order.
The release has ``421`` in place of ``420`` in some voxels: mapped to 420 (LA), with a
``logging.warning`` once per file per process. Any other value is an error naming the file.

Preprocessing (deterministic, cached with ``PersistentDataset``): load (the label in its own data
type) -> no NaN/inf voxel -> image/label same shape and affine -> label check (exact integers) + map -> reorient to ``orientation`` (RAS) -> resample to ``spacing``
(default 1.5 mm isotropic; image bilinear, label nearest) -> clip the HU ``intensity_window``
(default [-1000, 1000]) and scale to [0, 1] -> pad to at least ``patch_size``.
Training: ``samples_per_image`` random ``patch_size`` patches per volume, a fraction ``fg_fraction``
(default 0.33, as nnU-Net) centred on foreground, then flips, small rotations/scaling and intensity
scale/shift (``augment``). Validation/test: whole volumes, batch 1 (the module does the sliding
window); :meth:`invert_to_original` maps predictions back to the original file's grid.

``paper_crop=True`` reproduces the reference code: each volume (train AND test) is cropped to the
GROUND-TRUTH label bounding box plus ``paper_crop_margin`` voxels and resized to ``patch_size``.
This USES THE GROUND TRUTH AT TEST TIME, so its numbers are not a fair test; it is off by default.

Cross-validation: ``num_folds`` folds over cases persisted in ``splits_final.json`` (see
:mod:`uaseg.data.formats.filebased` for where); ``fold`` is the test fold, validation is carved from the
other folds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    MapLabelValued,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from uaseg.data.base import check_dataset_options
from uaseg.data.checks import (
    CheckFinited,
    CheckLabelValuesd,
    CheckSameGeometryd,
    LoadImageNamedd,
    check_nifti_pair,
    expected_layout_error,
    natural_key,
)
from uaseg.data.formats.discovery import find_pairs, require_pairs
from uaseg.data.formats.filebased import FileSegDataModule, as_tuple
from uaseg.errors import DatasetError

#: released label values, in class order 1..7
MMWHS_VALUES: tuple[int, ...] = (500, 600, 420, 550, 205, 820, 850)
MMWHS_CLASSES: tuple[str, ...] = ("LV", "RV", "LA", "RA", "Myo", "AO", "PA")
#: known defects of the release, fixed with a warning
MMWHS_FIXUPS: dict[int, int] = {421: 420}

LAYOUT = """\
  <root>/ct_train/ct_train_1001_image.nii.gz
  <root>/ct_train/ct_train_1001_label.nii.gz
  ...            (one _image/_label pair per case, .nii.gz or .nii)"""

_FILE_RE = re.compile(r"^ct_train_(\d+)_(image|label)\.nii(\.gz)?$")


def find_mmwhs_cases(root: Path) -> list[dict[str, str]]:
    """``[{case_id, group, image, label}]`` found under ``root``, sorted by case id.

    One error (showing the layout) for a missing/empty folder; an error naming the file for an
    image without label, a label without image, or a case present both as .nii and .nii.gz."""
    root = Path(root)
    if not root.is_dir():
        raise expected_layout_error("MM-WHS", root, LAYOUT, "the folder does not exist")
    folder = root / "ct_train" if (root / "ct_train").is_dir() else root
    found = find_pairs(folder, _FILE_RE, lambda m: (m.group(1), m.group(2)))
    if not found:
        raise expected_layout_error(
            "MM-WHS", root, LAYOUT, f"no ct_train_<id>_image/_label NIfTI files in {folder}"
        )
    swap = {"image": ("_image.", "_label."), "label": ("_label.", "_image.")}
    require_pairs(found, lambda kind, f: folder / f.name.replace(*swap[kind]))
    return [
        {"case_id": cid, "group": "ct", "image": str(found[cid]["image"]), "label": str(found[cid]["label"])}
        for cid in sorted(found, key=natural_key)
    ]


class MMWHSDataModule(FileSegDataModule):
    """MM-WHS CT whole-heart segmentation, 7 structures + background (see module docstring)."""

    name = "mmwhs"
    spatial_dims = 3
    in_channels = 1
    class_names = MMWHS_CLASSES

    AUGMENT_KEYS = ("flip_prob", "affine_prob", "rotate_deg", "scale", "intensity_prob", "intensity_scale",
                    "intensity_shift")

    def __init__(
        self,
        patch_size: Sequence[int] = (64, 64, 64),
        spacing: Sequence[float] | float = (1.5, 1.5, 1.5),
        orientation: str = "RAS",
        intensity_window: Sequence[float] = (-1000.0, 1000.0),
        paper_crop: bool = False,
        paper_crop_margin: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(patch_size=patch_size, **kwargs)
        check_dataset_options(
            spacing=list(spacing) if isinstance(spacing, (list, tuple)) else spacing,
            intensity_window=list(intensity_window) if isinstance(intensity_window, (list, tuple)) else intensity_window,
            paper_crop=paper_crop, paper_crop_margin=paper_crop_margin,
        )
        self.spacing = as_tuple(spacing, 3, "dataset.spacing")
        self.orientation = str(orientation)
        self.intensity_window = as_tuple(intensity_window, 2, "dataset.intensity_window")
        self.paper_crop = bool(paper_crop)
        self.paper_crop_margin = int(paper_crop_margin)

    # ------------------------------------------------------------------ cases
    def find_cases(self) -> list[dict]:
        assert self.root is not None
        return find_mmwhs_cases(self.root)

    def check_case_headers(self, case: dict) -> None:
        check_nifti_pair(case["image"], case["label"], ndim=3)

    # ------------------------------------------------------------------ transforms
    def preprocessing_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "orientation": self.orientation,
            "intensity_window": list(self.intensity_window),
            "patch_size": list(self.patch_size),
            "label_values": list(MMWHS_VALUES),
            "fixups": {str(k): v for k, v in MMWHS_FIXUPS.items()},
            "paper_crop": self.paper_crop,
        }
        if self.paper_crop:
            cfg["paper_crop_margin"] = self.paper_crop_margin
        else:
            cfg["spacing"] = list(self.spacing)
        return cfg

    def _deterministic(self, label: bool = True) -> list:
        keys = ["image", "label"] if label else ["image"]
        lo, hi = self.intensity_window
        # the label in the file's own data type, so the value check sees 421.5 or 500.0001 as stored
        t: list = [LoadImageNamedd(keys=keys, image_only=True, dtypes={"label": None}),
                   EnsureChannelFirstd(keys=keys), CheckFinited(keys="image")]
        if label:
            t += [
                CheckSameGeometryd("image", "label", check_affine=True),
                CheckLabelValuesd(keys="label", allowed=(0, *MMWHS_VALUES), fixups=MMWHS_FIXUPS),
                MapLabelValued(
                    keys="label", orig_labels=list(MMWHS_VALUES), target_labels=list(range(1, len(MMWHS_VALUES) + 1))
                ),
            ]
        t.append(Orientationd(keys=keys, axcodes=self.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        if not self.paper_crop:
            t.append(Spacingd(keys=keys, pixdim=self.spacing, mode=("bilinear", "nearest")[: len(keys)]))
        t.append(ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
        if self.paper_crop:
            # USES GROUND TRUTH (label bounding box) -- also at test time. Reference-code protocol only.
            t += [
                CropForegroundd(keys=keys, source_key="label", margin=self.paper_crop_margin, allow_smaller=True),
                Resized(keys=keys, spatial_size=self.patch_size, mode=("trilinear", "nearest")),
            ]
        return t

    def _finish(self, label: bool = True) -> list:
        return [EnsureTyped(keys="image", dtype=torch.float32)] + (
            [CastToTyped(keys="label", dtype=torch.int64)] if label else []
        )

    def train_transforms(self) -> Compose:
        keys = ["image", "label"]
        t = self._deterministic() + [
            SpatialPadd(keys=keys, spatial_size=self.patch_size),  # training only: evaluation sees the volume as it is
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=self.patch_size,
                pos=self.fg_fraction,
                neg=1.0 - self.fg_fraction,
                num_samples=self.samples_per_image,
                allow_smaller=False,
            ),
        ]
        return Compose(t + self._augmentation() + self._finish())

    def _augmentation(self) -> list:
        a = self.augment
        if a is None:
            return []
        keys = ["image", "label"]
        rot = float(np.deg2rad(a["rotate_deg"]))
        t: list = [RandFlipd(keys=keys, prob=a["flip_prob"], spatial_axis=ax) for ax in range(3)]
        if a["affine_prob"] > 0:
            t.append(
                RandAffined(
                    keys=keys,
                    prob=a["affine_prob"],
                    rotate_range=(rot, rot, rot),
                    scale_range=(a["scale"],) * 3,
                    mode=("bilinear", "nearest"),
                    padding_mode="border",
                )
            )
        if a["intensity_prob"] > 0:
            t += [
                RandScaleIntensityd(keys="image", factors=a["intensity_scale"], prob=a["intensity_prob"]),
                RandShiftIntensityd(keys="image", offsets=a["intensity_shift"], prob=a["intensity_prob"]),
            ]
        return t

    def eval_transforms(self) -> Compose:
        return Compose(self._deterministic() + self._finish())

    def predict_transforms(self) -> Compose:
        """A CT volume file (no label): ``eval_transforms`` without the label steps."""
        if self.paper_crop:
            raise DatasetError(
                "this model was trained with dataset.paper_crop=true, which crops every volume to its "
                "GROUND-TRUTH bounding box; it cannot be applied to new, unlabelled volumes"
            )
        return Compose(self._deterministic(label=False) + self._finish(label=False))
