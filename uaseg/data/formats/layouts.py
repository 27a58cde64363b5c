"""What the nnU-Net and Decathlon layouts share (``dataset=nnunet`` / ``dataset=decathlon``): a dataset
described by its own ``dataset.json``, preprocessed by a plan made from its fingerprint
(:mod:`uaseg.data.plan.fingerprint`), split and cached like every file-based dataset.

A subclass says how to read ``dataset.json`` (:meth:`StandardLayoutDataModule.read_info`), how to find
the labelled cases (:meth:`~StandardLayoutDataModule.discover`) and how to check one case's headers
(:meth:`~StandardLayoutDataModule.check_headers`). Everything else is here:

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    CastToTyped, Compose, CropForegroundd, EnsureChannelFirstd, EnsureTyped, MapTransform, Orientationd, RandAffined,
    RandCropByPosNegLabeld, RandFlipd, RandScaleIntensityd, RandShiftIntensityd, Spacingd, SpatialPadd,
)

from uaseg.data.checks import CheckChannelsd, CheckFinited, CheckLabelValuesd, CheckSameGeometryd, LoadImageNamedd
from uaseg.data.formats.filebased import FileSegDataModule, cache_base_for, persisted_path, root_writable
from uaseg.data.plan.fingerprint import FINGERPRINT_FILE, describe_plan, file_stamps, load_or_compute_fingerprint, make_plan
from uaseg.data.plan.resample import ResampleToSpacingd, nonzero
from uaseg.errors import ConfigError, DatasetError
from uaseg.runs.interpolation import refuse_interpolations

log = logging.getLogger(__name__)

NIFTI_ENDINGS = (".nii.gz", ".nii")
IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
_PLANS: dict[tuple, dict] = {}


@dataclass(frozen=True)
class DatasetInfo:
    """What a ``dataset.json`` says, in the layout-independent form."""

    json_path: Path
    spatial_dims: int
    channel_names: tuple[str, ...]
    #: foreground class names, label values 1..K-1 in order
    class_names: tuple[str, ...]
    file_ending: str
    num_training: int | None
    #: nnU-Net's ``"ignore"`` label value (= the number of classes) or None
    ignore_label: int | None = None

    def meta(self) -> dict[str, Any]:
        return {"spatial_dims": self.spatial_dims, "in_channels": len(self.channel_names),
                "num_classes": len(self.class_names) + 1, "class_names": list(self.class_names),
                "channel_names": list(self.channel_names), "file_ending": self.file_ending,
                "ignore_label": self.ignore_label}

    @property
    def label_values(self) -> int:
        """How many label values a label file may hold: the classes, plus the ignore label."""
        return len(self.class_names) + 1 + (self.ignore_label is not None)


def read_dataset_json(root: Path, layout: str, layout_text: str) -> tuple[Path, dict[str, Any]]:
    """``(path, content)`` of ``<root>/dataset.json``; errors show the expected layout or name the file."""
    import json

    from uaseg.data.checks import expected_layout_error

    if not root.is_dir():
        raise expected_layout_error(layout, root, layout_text, "the folder does not exist")
    path = root / "dataset.json"
    if not path.is_file():
        raise expected_layout_error(layout, root, layout_text, "no dataset.json in the folder")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read it as JSON ({e})") from e
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(content).__name__}")
    refuse_interpolations(content, path, error=DatasetError, what="a dataset.json", hint="")  # names reach the config
    return path, content


def require_keys(content: Mapping[str, Any], path: Path, keys: Sequence[str], layout: str) -> None:
    missing = [k for k in keys if k not in content]
    if missing:
        raise DatasetError(f"{path}: lacks {', '.join(repr(k) for k in missing)} (required in the {layout} dataset.json)")


def indexed_names(mapping: Any, path: Path, key: str) -> tuple[str, ...]:
    """``{"0": "T1", "1": "T2"}`` -> ``("T1", "T2")``; the keys must be 0..n-1."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise DatasetError(f"{path}: {key!r} must be a non-empty object like {{\"0\": \"CT\"}}")
    try:
        by_index = {int(k): str(v) for k, v in mapping.items()}
    except ValueError as e:
        raise DatasetError(f"{path}: the keys of {key!r} must be integers 0, 1, ... ({e})") from e
    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetError(f"{path}: the keys of {key!r} must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
    return tuple(by_index[i] for i in range(len(by_index)))


def count_matches(path: Path, num_training: Any, found: int, what: str) -> int:
    if not isinstance(num_training, int) or isinstance(num_training, bool) or num_training != found:
        raise DatasetError(f"{path}: numTraining is {num_training!r} but {what} {found} case(s)")
    return num_training


_OUTSIDE_LOGGED: set[str] = set()


def check_inside_root(root: Path, entry: str, source: Path, what: str) -> Path:
    """``root / entry`` for a path that ``source`` (e.g. ``dataset.json``) names: an absolute or
    ``../`` entry is a :class:`DatasetError` naming it (a shared dataset must not read files beyond
    its folder); a symlink out of the folder is allowed and logged once per dataset."""
    import os

    text = str(entry)
    if Path(text).is_absolute() or os.path.normpath(text).split(os.sep)[0] == "..":
        kind = "an absolute path" if Path(text).is_absolute() else "a path out of the dataset folder"
        raise DatasetError(f"{source}: {what} {text!r} is {kind}; entries must be relative paths inside {root}")
    path = Path(root) / text
    real, home = path.resolve(), Path(root).resolve()
    if real != home and home not in real.parents and str(home) not in _OUTSIDE_LOGGED:
        _OUTSIDE_LOGGED.add(str(home))
        log.info("%s: %s is a symbolic link to %s, outside the dataset folder (allowed; logged once)", source, path, real)
    return path


def class_names_from(labels: Mapping[int, str], source: Path) -> tuple[str, ...]:
    """Foreground names from ``value -> name``; the values must be 0 (background) .. K-1."""
    values = sorted(labels)
    if values != list(range(len(values))) or len(values) < 2:
        raise DatasetError(f"{source}: label values must be the consecutive integers 0 (background) .. K-1 "
                           f"(K >= 2), got {values}")
    return tuple(str(labels[v]) for v in values[1:])


class NormalizeChannelsd(MapTransform):
    """Per-channel intensity normalisation of the plan (:mod:`uaseg.data.plan.fingerprint`). A z-score
    channel with ``use_nonzero_mask`` is normalised with the mean and std of the voxels inside the
    non-zero mask (non-zero in any channel, holes filled: nnU-Net's ``create_nonzero_mask``) and set to
    0 outside it, as nnU-Net's ``ZScoreNormalization(use_mask_for_norm=True)``."""

    def __init__(self, keys: Any, schemes: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(keys)
        self.schemes = [dict(s) for s in schemes]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key].float()
            out = img.clone()
            mask = nonzero_mask(img) if any(s.get("use_nonzero_mask") for s in self.schemes) else None
            for c, s in enumerate(self.schemes):
                x = img[c]
                if s["scheme"] == "ct":
                    out[c] = (x.clamp(s["clip"][0], s["clip"][1]) - s["mean"]) / s["std"]
                elif s["scheme"] == "zscore" and s.get("use_nonzero_mask"):
                    inside = x[mask]
                    z = torch.zeros_like(x)
                    if inside.numel():
                        z[mask] = (inside - inside.mean()) / max(float(inside.std(unbiased=False)), 1e-8)
                    out[c] = z
                elif s["scheme"] == "zscore":
                    out[c] = (x - x.mean()) / max(float(x.std(unbiased=False)), 1e-8)
                elif s["scheme"] == "rescale_to_0_1":
                    out[c] = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
                elif s["scheme"] == "rgb_to_0_1":
                    out[c] = (x / 255.0).clamp(0.0, 1.0)
            d[key] = out
        return d


def nonzero_mask(img: torch.Tensor) -> torch.Tensor:
    """``(C, *spatial)`` -> spatial bool mask: non-zero in any channel, holes filled (nnU-Net)."""
    from scipy.ndimage import binary_fill_holes

    mask = (torch.as_tensor(img) != 0).any(0).cpu().numpy()
    return torch.as_tensor(binary_fill_holes(mask), device=img.device)


class AnnotatedIndicesd(MapTransform):
    """Crop centres for ``RandCropByPosNegLabeld`` (its ``fg_indices_key`` / ``bg_indices_key``) that
    leave out nnU-Net's ignore label: positives are the labelled foreground (``0 < label <
    ignore``), negatives the labelled background (``label == 0``); a case without either is sampled
    anywhere."""

    def __init__(self, key: str, ignore_label: int) -> None:
        super().__init__([key])
        self.ignore_label = int(ignore_label)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from monai.transforms.utils import map_binary_to_indices

        d = dict(data)
        for key in self.key_iterator(d):
            lab = torch.as_tensor(d[key])  # channel-first (1, *spatial), as map_binary_to_indices wants
            fg, _ = map_binary_to_indices((lab > 0) & (lab != self.ignore_label))
            bg, _ = map_binary_to_indices(lab == 0)
            if len(fg) == 0 and len(bg) == 0:
                bg, _ = map_binary_to_indices(torch.ones_like(lab, dtype=torch.bool))
            d[f"{key}_fg_indices"], d[f"{key}_bg_indices"] = fg, bg
        return d


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
                 max_patch_size_3d: Sequence[int], patch_size: Sequence[int] | None = None, **kwargs: Any) -> None:
        self.plan = dict(plan)
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
        return self.discover(self.root, info)

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
