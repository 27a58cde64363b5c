"""What the nnU-Net and Decathlon layouts share (``dataset=nnunet`` / ``dataset=decathlon``): a dataset
described by its own ``dataset.json``, preprocessed by a plan made from its fingerprint
(:mod:`uaseg.data.plan.fingerprint`), split and cached like every file-based dataset.

A subclass says how to read ``dataset.json`` (:meth:`StandardLayoutDataModule.read_info`), how to find
the labelled cases (:meth:`~StandardLayoutDataModule.discover`) and how to check one case's headers
(:meth:`~StandardLayoutDataModule.check_headers`); what every ``dataset.json`` shares is read by
:mod:`.dataset_json`, and the layouts' own transforms are in :mod:`.layout_transforms`. The rest is here:

* :meth:`~StandardLayoutDataModule.make_plan` -- behind the ``${uaseg.dataset_plan:...}`` resolver of
  the YAML: reads ``dataset.json``, finds the cases, loads (or computes once) the fingerprint and
  returns the plan (memoised per process while no file changes); the model config reads channels
  and classes from ``plan.meta`` (through ``${uaseg.get:...}``).
* the datamodule preprocesses only from its ``plan`` argument (never from ``dataset.root``), so a
  checkpoint's dataset config alone preprocesses new images at prediction; it logs the plan once,
  when a run first sets it up.
* transforms: load (one file per channel, one RGB file, or a 4-D file whose last axis holds the
  channels) -> checks (channels, image/label grid: the label takes the image's affine, label values in
  ``0..K-1``, plus ``K`` = nnU-Net's ignore label when ``dataset.json`` has one) -> crop to the non-zero
  region -> per-channel normalisation (before resampling, as nnU-Net) -> 3-D: reorient to ``orientation``,
  resample to the target spacing as nnU-Net (:mod:`uaseg.data.plan.resample`); training pads to the patch and
  adds ``RandCropByPosNegLabeld`` (with an ignore label: centred on labelled voxels only,
  :class:`AnnotatedIndicesd`) and augmentation (``augment``, as MM-WHS). A plan of an older uaseg (no
  ``crop_to_nonzero`` / ``resampling`` key) keeps its own preprocessing: no crop, ``Spacingd`` bilinear.
  Evaluation and prediction see each case at its own size (the sliding window pads internally and
  crops back), so no padded voxel counts in Dice, coverage or the curves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    CastToTyped, Compose, CropForegroundd, EnsureChannelFirstd, EnsureTyped, Orientationd, RandAffined,
    RandCropByPosNegLabeld, RandFlipd, RandScaleIntensityd, RandShiftIntensityd, Spacingd, SpatialPadd,
)

from uaseg.data.checks import CheckChannelsd, CheckFinited, CheckLabelValuesd, CheckSameGeometryd, LoadImageNamedd
from uaseg.data.formats.filebased import FileSegDataModule, cache_base_for, persisted_path, root_writable
from uaseg.data.plan.fingerprint import FINGERPRINT_FILE, describe_plan, file_stamps, load_or_compute_fingerprint, make_plan
from uaseg.data.plan.resample import ResampleToSpacingd, nonzero
from uaseg.data.formats.dataset_json import DatasetInfo
from uaseg.data.formats.layout_transforms import AnnotatedIndicesd, NormalizeChannelsd
from uaseg.errors import ConfigError, DatasetError
from uaseg.shift.groups import GROUPS_FILE, read_groups, split_by_groups

log = logging.getLogger(__name__)

_PLANS: dict[tuple, dict] = {}


class StandardLayoutDataModule(FileSegDataModule):
    """Base of :class:`~uaseg.data.formats.nnunet.NnUNetDataModule` and
    :class:`~uaseg.data.formats.decathlon.DecathlonDataModule` (see the module docstring)."""

    AUGMENT_KEYS = ("flip_prob", "affine_prob", "rotate_deg", "scale", "intensity_prob", "intensity_scale",
                    "intensity_shift")

    # ------------------------------------------------------------------ to override
    @classmethod
    def read_info(cls, root: Path) -> DatasetInfo:
        raise NotImplementedError

    @classmethod
    def discover(cls, root: Path, info: DatasetInfo) -> list[dict[str, Any]]:
        """Labelled cases ``{case_id, group, image (file or list of channel files), label}``."""
        raise NotImplementedError

    @classmethod
    def check_headers(cls, case: dict[str, Any], spatial_dims: int, n_channels: int) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ the plan (config time)
    @classmethod
    def make_plan(cls, root: str, cache_dir: str | None, spacing: Any, orientation: str,
                  max_patch_size_2d: Sequence[int], max_patch_size_3d: Sequence[int],
                  strides: Any = None) -> dict[str, Any]:
        """The preprocessing plan of the dataset at ``root`` (fingerprint computed on first use) for a
        network with ``strides`` (``model.net.strides``; None: patch sides multiples of 16)."""
        root_path = Path(root).expanduser()
        info = cls.read_info(root_path)
        cases = cls.discover(root_path, info)
        writable = root_writable(root_path)
        base = cache_base_for(cls.name, root_path, Path(cache_dir) if cache_dir else None, writable)
        path = persisted_path(root_path, FINGERPRINT_FILE, base, writable)
        files = [info.json_path] + [f for c in cases for f in _files_of(c)]
        settings = {"spacing": spacing, "orientation": str(orientation),
                    "max_patch_size_2d": list(max_patch_size_2d), "max_patch_size_3d": list(max_patch_size_3d)}
        key = (cls.__qualname__, str(root_path), str(path), repr(settings), repr(strides),
               tuple((f, tuple(v)) for f, v in file_stamps(root_path, [*files, *([path] if path.exists() else [])]).items()))
        if key not in _PLANS:
            fp = load_or_compute_fingerprint(
                path, root_path, cases, files, info.spatial_dims, info.channel_names, info.label_values,
                check=lambda c: cls.check_headers(c, info.spatial_dims, len(info.channel_names)))
            _PLANS[key] = make_plan(fp, info.meta(), settings, str(info.json_path), str(path), strides)
        return _PLANS[key]

    # ------------------------------------------------------------------ the datamodule
    def __init__(self, plan: Mapping[str, Any], spacing: Any, orientation: str, max_patch_size_2d: Sequence[int],
                 max_patch_size_3d: Sequence[int], patch_size: Sequence[int] | None = None,
                 train_groups: Sequence[str] | None = None, test_groups: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        self.plan = dict(plan)
        #: natural shift (uaseg.shift.groups): train on these groups of <root>/groups.csv, test on those
        for key, names in (("train_groups", train_groups), ("test_groups", test_groups)):
            if names is not None and (isinstance(names, str) or not all(isinstance(g, (str, int)) and str(g) for g in names)
                                      or not len(names)):
                raise ConfigError(f"dataset.{key}={names!r}: expected null or a non-empty list of group names of groups.csv")
        self.train_groups = None if train_groups is None else [str(g) for g in train_groups]
        self.test_groups = None if test_groups is None else [str(g) for g in test_groups]
        settings = {"spacing": spacing, "orientation": str(orientation),
                    "max_patch_size_2d": list(max_patch_size_2d), "max_patch_size_3d": list(max_patch_size_3d)}
        if self.plan.get("settings") != settings:
            raise ConfigError(f"dataset.plan was made with {self.plan.get('settings')}, not with this config's "
                              f"{settings}; leave dataset.plan to its resolver")
        meta = self.plan["meta"]
        self.spatial_dims = int(meta["spatial_dims"])
        self.in_channels = int(meta["in_channels"])
        self.class_names = tuple(meta["class_names"])
        self.channel_names = tuple(meta["channel_names"])
        self.ignore_label = meta.get("ignore_label")
        super().__init__(patch_size=self.plan["patch_size"] if patch_size is None else patch_size, **kwargs)
        if self.spatial_dims == 2 and len(set(self.patch_size)) > 1:
            w, h = self.patch_size
            log.warning("dataset.patch_size=[%d, %d] is (width, height): 2-D images are read with PIL's axis order, "
                        "the reverse of nnU-Net's (height, width); nnU-Net's patch [%d, %d] is this one", w, h, h, w)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:  # once per datamodule, i.e. once per run
            log.info("%s", self.describe_plan())
        super().setup(stage)

    def describe_plan(self) -> str:
        """The plan as logged at the start of a run, with the patch size this run uses (the planned
        one unless ``dataset.patch_size`` overrides it, which is then said)."""
        planned = [int(p) for p in self.plan["patch_size"]]
        text = describe_plan({**self.plan, "patch_size": list(self.patch_size)})
        if list(self.patch_size) != planned:
            text += (f"\n  patch size {' x '.join(map(str, self.patch_size))} set by dataset.patch_size "
                     f"(the plan's: {' x '.join(map(str, planned))})")
        return text

    def find_cases(self) -> list[dict]:
        assert self.root is not None
        info = self.read_info(self.root)
        if info.meta() != self.plan["meta"]:
            raise DatasetError(f"{info.json_path} no longer matches the plan of this run ({info.meta()} vs "
                               f"{self.plan['meta']}); its fingerprint must be recomputed")
        cases = self.discover(self.root, info)
        path = self.root / GROUPS_FILE
        if path.is_file():   # each case's group: reported per group, and train/test by group
            groups = read_groups(path, [c["case_id"] for c in cases])
            cases = [{**c, "group": groups[c["case_id"]]} for c in cases]
        elif self.train_groups is not None or self.test_groups is not None:
            raise DatasetError(f"dataset.train_groups / dataset.test_groups need {path} (a header 'case,group', then "
                               "one line per case; docs/shift.md)")
        return cases

    def split_cases(self, cases: list[dict]) -> dict[str, list[dict]]:
        """The persisted k-fold split, or with ``train_groups`` / ``test_groups`` the groups' cases (the
        validation cases carved from the training groups; ``fold`` and ``num_folds`` unused)."""
        if self.train_groups is None and self.test_groups is None:
            return super().split_cases(cases)
        from uaseg.data.splits import carve_validation

        by_id = {c["case_id"]: c for c in cases}
        pool, test = split_by_groups({c["case_id"]: c["group"] for c in cases}, self.train_groups, self.test_groups,
                                     self.root / GROUPS_FILE)
        train, val = carve_validation(pool, self.val_fraction, self.seed)
        return {"train": [by_id[i] for i in train], "val": [by_id[i] for i in val], "test": [by_id[i] for i in test]}

    def check_case_headers(self, case: dict) -> None:
        self.check_headers(case, self.spatial_dims, self.in_channels)

    def preprocessing_config(self) -> dict[str, Any]:
        keys = ("meta", "target_spacing", "orientation", "normalization", "crop_to_nonzero", "resampling")
        return {k: self.plan[k] for k in keys if k in self.plan} | {"patch_size": list(self.patch_size)}

    # ------------------------------------------------------------------ transforms
    def _deterministic(self, label: bool = True) -> list:
        keys = ["image", "label"] if label else ["image"]
        reader = {"reader": "PILReader"} if self.spatial_dims == 2 else {}
        t: list = [LoadImageNamedd(keys=keys, image_only=True, **reader), EnsureChannelFirstd(keys=keys),
                   CheckChannelsd(keys="image", n=self.in_channels, what="image"), CheckFinited(keys="image")]
        if label:
            t += [CheckChannelsd(keys="label", n=1, what="label"),
                  CheckSameGeometryd("image", "label", check_affine=self.spatial_dims == 3),
                  CheckLabelValuesd(keys="label", allowed=range(self.num_classes + (self.ignore_label is not None)))]
        if self.plan.get("crop_to_nonzero"):
            t.append(CropForegroundd(keys=keys, source_key="image", select_fn=nonzero, margin=0, allow_smaller=True))
        t.append(NormalizeChannelsd(keys="image", schemes=self.plan["normalization"]))
        if self.spatial_dims == 3:
            t.append(Orientationd(keys=keys, axcodes=self.plan["orientation"], labels=(("L", "R"), ("P", "A"), ("I", "S"))))
            if self.plan.get("resampling") == "nnunet":
                t.append(ResampleToSpacingd(keys=keys, pixdim=self.plan["target_spacing"]))
            else:  # a plan of an older uaseg: the preprocessing its checkpoint was trained with
                t.append(Spacingd(keys=keys, pixdim=self.plan["target_spacing"], mode=("bilinear", "nearest")[: len(keys)]))
        return t

    def _finish(self, label: bool = True) -> list:
        return [EnsureTyped(keys="image", dtype=torch.float32)] + (
            [CastToTyped(keys="label", dtype=torch.int64)] if label else [])

    def train_transforms(self) -> Compose:
        indices = {} if self.ignore_label is None else {"fg_indices_key": "label_fg_indices",
                                                         "bg_indices_key": "label_bg_indices"}
        crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=self.patch_size,
                                      pos=self.fg_fraction, neg=1.0 - self.fg_fraction,
                                      num_samples=self.samples_per_image, allow_smaller=False, **indices)
        centres = [] if self.ignore_label is None else [AnnotatedIndicesd("label", self.ignore_label)]
        pad = SpatialPadd(keys=["image", "label"], spatial_size=self.patch_size)  # training only: evaluation sees the case as it is
        return Compose(self._deterministic() + [pad] + centres + [crop] + self._augmentation() + self._finish())

    def _augmentation(self) -> list:
        a, keys, n = self.augment, ["image", "label"], self.spatial_dims
        if a is None:
            return []
        rot = float(np.deg2rad(a["rotate_deg"]))
        t: list = [RandFlipd(keys=keys, prob=a["flip_prob"], spatial_axis=ax) for ax in range(n)]
        if a["affine_prob"] > 0:
            t.append(RandAffined(keys=keys, prob=a["affine_prob"], rotate_range=(rot,) * (3 if n == 3 else 1),
                                 scale_range=(a["scale"],) * n, mode=("bilinear", "nearest"), padding_mode="border"))
        if a["intensity_prob"] > 0:
            t += [RandScaleIntensityd(keys="image", factors=a["intensity_scale"], prob=a["intensity_prob"]),
                  RandShiftIntensityd(keys="image", offsets=a["intensity_shift"], prob=a["intensity_prob"])]
        return t

    def eval_transforms(self) -> Compose:
        return Compose(self._deterministic() + self._finish())

    def predict_transforms(self) -> Compose:
        """``{"image": file or list of channel files}`` -> the image preprocessed as in evaluation."""
        return Compose(self._deterministic(label=False) + self._finish(label=False))

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"plan": self.plan}


def _files_of(case: Mapping[str, Any]) -> list[str]:
    image = case["image"]
    return [*(image if isinstance(image, list) else [image]), case["label"]]
