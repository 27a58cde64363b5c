"""GlaS 2015 gland segmentation (``dataset=glas``), read from the released files.

Layout (``dataset.root``: the released ``Warwick_QU_Dataset`` folder, any folder holding the files, or
a folder with exactly one such sub-folder)::

    <root>/train_1.bmp   train_1_anno.bmp   ...  train_85     (training, 85)
    <root>/testA_1.bmp   testA_1_anno.bmp   ...  testA_60     (test part A, 60)
    <root>/testB_1.bmp   testB_1_anno.bmp   ...  testB_20     (test part B, 20)
    <root>/Grade.csv     (optional; name, patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015))

Numbers are not zero-padded; cases are sorted naturally (train_2 before train_10). Case ids are
the file stems (``"testA_7"``); ``group`` is ``"train"``, ``"testA"`` or ``"testB"`` so results
are reported per part and averaged. ``Grade.csv`` (CR-only line endings and leading spaces are
fine) gives ``grade`` (GlaS grade, e.g. ``"benign"``) and ``patient`` per case; a name it lists
without an image is an error; an image it does not list gets ``grade=""`` with a warning.

Annotations are 8-bit instance-id maps (0 background): ``label`` is gland (1) vs background (0);
the instance ids stay available as ``instances`` (``(B, 1, *spatial)`` int64) for object metrics.
Images are RGB, scaled to [0, 1]. Spatial axes follow MONAI's PIL reader: ``(C, width, height)``.

Splits: ``test`` = parts A and B; ``val`` carved from train (by patient when Grade.csv gives patient
ids, so one patient's images are never both in train and val; otherwise by image). The patient ids are
also the units risk control calibrates on (:meth:`SegDataModule.case_units`, ``eval.risk_control.unit``).
``cv_on_train=True`` instead runs ``num_folds``-fold cross-validation over the 85 training images
(persisted ``splits_final.json``; ``fold`` picks the test fold, by image), ignoring parts A/B;
``fold`` is ignored unless ``cv_on_train`` is set.
Training: random ``patch_size`` (192x192) patches (``fg_fraction`` centred on glands), images
smaller than the patch padded; flips, 90-degree rotations, small affine, colour/stain jitter
(contrast/gamma, histogram shift, per-channel scale and shift). Validation/test: whole images.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    CopyItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandHistogramShiftd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    SpatialPadd,
)

from uaseg.data.checks import (
    COLOUR_MODES,
    Binarized,
    CheckChannelsd,
    CheckSameGeometryd,
    LoadImageNamedd,
    check_image_pair,
    expected_layout_error,
    natural_key,
)
from uaseg.data.formats.discovery import find_pairs, require_pairs
from uaseg.data.formats.filebased import FileSegDataModule
from uaseg.data.splits import carve_validation, load_or_make_folds
from uaseg.errors import DatasetError

log = logging.getLogger(__name__)

PARTS = ("train", "testA", "testB")
#: accepted Pillow modes (checked from the headers before training, and by prediction); read as RGB
IMAGE_MODES = COLOUR_MODES
LABEL_MODES = ("L", "P", "I", "I;16", "1")
LAYOUT = """\
  <root>/train_1.bmp  <root>/train_1_anno.bmp   ... train_85
  <root>/testA_1.bmp  <root>/testA_1_anno.bmp   ... testA_60
  <root>/testB_1.bmp  <root>/testB_1_anno.bmp   ... testB_20
  <root>/Grade.csv    (optional metadata)"""

_FILE_RE = re.compile(r"^(train|testA|testB)_(\d+)(_anno)?\.bmp$", re.IGNORECASE)


def _part(name: str) -> str:
    low = name.lower()
    return {"train": "train", "testa": "testA", "testb": "testB"}[low]


def read_grade_csv(path: Path) -> dict[str, dict[str, str]]:
    """``{name: {"patient", "grade", "grade_sirinukunwattana"}}`` from GlaS ``Grade.csv``.
    Tolerates CR-only / CRLF line endings, a BOM, and spaces around names and values."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rows = [[f.strip() for f in r] for r in csv.reader(lines)]
    if not rows:
        raise DatasetError(f"{path}: empty file")
    header = [h.lower() for h in rows[0]]

    def col(pred) -> int | None:
        return next((i for i, h in enumerate(header) if pred(h)), None)

    i_name = col(lambda h: h == "name")
    if i_name is None:
        raise DatasetError(f"{path}: no 'name' column in the header {rows[0]}")
    i_pat = col(lambda h: "patient" in h)
    i_glas = col(lambda h: "glas" in h)
    i_sir = col(lambda h: "sirinukunwattana" in h)
    out: dict[str, dict[str, str]] = {}
    for n, r in enumerate(rows[1:], start=2):
        if len(r) <= i_name or not r[i_name]:
            raise DatasetError(f"{path}: row {n} has no name: {r}")
        get = lambda i: r[i] if i is not None and i < len(r) else ""  # noqa: E731
        out[r[i_name]] = {"patient": get(i_pat), "grade": get(i_glas), "grade_sirinukunwattana": get(i_sir)}
    return out


def _scan(folder: Path) -> dict[str, dict[str, Path]]:
    return find_pairs(folder, _FILE_RE, lambda m: (f"{_part(m.group(1))}_{int(m.group(2))}",
                                                   "label" if m.group(3) else "image"))


def find_glas_cases(root: Path) -> list[dict[str, str]]:
    """All cases (train, testA, testB) as ``{case_id, group, image, label, grade, patient}``,
    naturally sorted within each part."""
    root = Path(root)
    if not root.is_dir():
        raise expected_layout_error("GlaS", root, LAYOUT, "the folder does not exist")
    folder, found = root, _scan(root)
    if not found:
        subs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        hits = [(d, f) for d in subs for f in [_scan(d)] if f]
        if len(hits) == 1:
            folder, found = hits[0]
    if not found:
        raise expected_layout_error("GlaS", root, LAYOUT, "no train_N / testA_N / testB_N .bmp files found")
    swap = {"image": lambda n: n[:-4] + "_anno" + n[-4:], "label": lambda n: n[:-9] + n[-4:]}
    require_pairs(found, lambda kind, f: folder / swap[kind](f.name), label_word="annotation")
    grades: dict[str, dict[str, str]] = {}
    csv_path = next((p for p in folder.iterdir() if p.name.lower() == "grade.csv"), None)
    if csv_path is not None:
        grades = read_grade_csv(csv_path)
        missing = [n for n in grades if n not in found]
        if missing:
            raise DatasetError(
                f"{csv_path} lists {len(missing)} image(s) not in {folder}: "
                + ", ".join(f"{folder / (n + '.bmp')}" for n in sorted(missing, key=natural_key)[:10])
            )
        unlisted = sorted(set(found) - set(grades), key=natural_key)
        if unlisted:
            log.warning("%s does not list %d image(s) (grade left empty): %s", csv_path, len(unlisted), unlisted[:10])
    else:
        log.warning("GlaS: no Grade.csv in %s; grade/patient metadata left empty", folder)
    cases = []
    for part in PARTS:
        ids = sorted((c for c in found if c.startswith(part + "_")), key=natural_key)
        for cid in ids:
            meta = grades.get(cid, {})
            cases.append(
                {
                    "case_id": cid,
                    "group": part,
                    "image": str(found[cid]["image"]),
                    "label": str(found[cid]["label"]),
                    "grade": meta.get("grade", ""),
                    "patient": meta.get("patient", ""),
                }
            )
    return cases


def to_rgb(img):
    """PILReader converter: any image mode -> RGB (GlaS images are 24-bit already)."""
    return img if img.mode == "RGB" else img.convert("RGB")


class GlaSDataModule(FileSegDataModule):
    """GlaS colon histology, gland vs background (see module docstring)."""

    name = "glas"
    spatial_dims = 2
    in_channels = 3
    class_names = ("gland",)
    image_modes = IMAGE_MODES

    AUGMENT_KEYS = ("flip_prob", "rot90_prob", "affine_prob", "rotate_deg", "scale", "contrast_prob", "gamma",
                    "hist_shift_prob", "color_prob", "color_scale", "color_shift")

    def __init__(
        self,
        patch_size: Sequence[int] = (192, 192),
        fg_fraction: float = 0.5,
        cv_on_train: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(patch_size=patch_size, fg_fraction=fg_fraction, **kwargs)
        self.cv_on_train = bool(cv_on_train)

    # ------------------------------------------------------------------ cases and splits
    def find_cases(self) -> list[dict]:
        assert self.root is not None
        return find_glas_cases(self.root)

    def check_case_headers(self, case: dict) -> None:
        check_image_pair(case["image"], case["label"], IMAGE_MODES, LABEL_MODES)

    def split_cases(self, cases: list[dict]) -> dict[str, list[dict]]:
        train = [c for c in cases if c["group"] == "train"]
        test = [c for c in cases if c["group"] != "train"]
        if self.cv_on_train:
            by_id = {c["case_id"]: c for c in train}
            folds = load_or_make_folds(self.splits_path(), list(by_id), self.num_folds, self.seed)
            test = [by_id[i] for i in sorted(folds[self.fold]["test"], key=natural_key)]
            train = [by_id[i] for i in folds[self.fold]["train"]]
        if not train:
            raise DatasetError(f"GlaS: no train_N images in {self.root}")
        if not test:
            raise DatasetError(f"GlaS: no testA_N / testB_N images in {self.root}")
        train, val = self._carve(train)
        return {"train": train, "val": val, "test": test}

    def _carve(self, train: list[dict]) -> tuple[list[dict], list[dict]]:
        patients = {c["patient"] for c in train}
        if all(c["patient"] for c in train) and len(patients) >= 2:
            _, val_p = carve_validation(sorted(patients), self.val_fraction, self.seed)
            val_set = set(val_p)
            keep = [c for c in train if c["patient"] not in val_set]
            val = [c for c in train if c["patient"] in val_set]
        else:
            ids = [c["case_id"] for c in train]
            _, val_ids = carve_validation(ids, self.val_fraction, self.seed)
            keep = [c for c in train if c["case_id"] not in set(val_ids)]
            val = [c for c in train if c["case_id"] in set(val_ids)]
        order = lambda cs: sorted(cs, key=lambda c: natural_key(c["case_id"]))  # noqa: E731
        return order(keep), order(val)

    # ------------------------------------------------------------------ transforms
    def preprocessing_config(self) -> dict[str, Any]:
        return {"patch_size": list(self.patch_size), "intensity": "uint8/255", "label": "instances>0"}

    def _deterministic(self, label: bool = True) -> list:
        """Read, check and scale; the image steps are the same with and without an annotation."""
        image = [
            LoadImageNamedd(keys="image", image_only=True, reader="PILReader", converter=to_rgb),
            EnsureChannelFirstd(keys="image"),
            CheckChannelsd(keys="image", n=3, what="image"),
            ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
        ]
        if not label:
            return image
        return image + [
            LoadImageNamedd(keys="label", image_only=True, reader="PILReader"),
            EnsureChannelFirstd(keys="label"),
            CheckChannelsd(keys="label", n=1, what="annotation"),
            CheckSameGeometryd("image", "label", check_affine=False),
            CopyItemsd(keys="label", names="instances"),
            Binarized(keys="label"),
        ]

    def _finish(self, label: bool = True) -> list:
        return [EnsureTyped(keys="image", dtype=torch.float32)] + (
            [CastToTyped(keys=["label", "instances"], dtype=torch.int64)] if label else []
        )

    def train_transforms(self) -> Compose:
        keys = ["image", "label", "instances"]
        t = self._deterministic() + [
            SpatialPadd(keys=keys, spatial_size=self.patch_size),  # training only: evaluation sees the image as it is
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=self.patch_size,
                pos=self.fg_fraction,
                neg=1.0 - self.fg_fraction,
                num_samples=self.samples_per_image,
            ),
        ]
        return Compose(t + self._augmentation() + self._finish())

    def _augmentation(self) -> list:
        a = self.augment
        if a is None:
            return []
        keys = ["image", "label", "instances"]
        t: list = [
            RandFlipd(keys=keys, prob=a["flip_prob"], spatial_axis=0),
            RandFlipd(keys=keys, prob=a["flip_prob"], spatial_axis=1),
        ]
        if a["rot90_prob"] > 0 and self.patch_size[0] == self.patch_size[1]:
            t.append(RandRotate90d(keys=keys, prob=a["rot90_prob"]))
        if a["affine_prob"] > 0:
            t.append(
                RandAffined(
                    keys=keys,
                    prob=a["affine_prob"],
                    rotate_range=float(np.deg2rad(a["rotate_deg"])),
                    scale_range=(a["scale"], a["scale"]),
                    mode=("bilinear", "nearest", "nearest"),
                    padding_mode="reflection",
                )
            )
        if a["contrast_prob"] > 0:
            t.append(RandAdjustContrastd(keys="image", prob=a["contrast_prob"], gamma=tuple(a["gamma"])))
        if a["hist_shift_prob"] > 0:
            t.append(RandHistogramShiftd(keys="image", prob=a["hist_shift_prob"], num_control_points=(5, 10)))
        if a["color_prob"] > 0:
            t += [
                RandScaleIntensityd(keys="image", factors=a["color_scale"], prob=a["color_prob"], channel_wise=True),
                RandShiftIntensityd(keys="image", offsets=a["color_shift"], prob=a["color_prob"], channel_wise=True),
            ]
        # keep intensities in [0, 1] after jitter
        t.append(ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True))
        return t

    def eval_transforms(self) -> Compose:
        return Compose(self._deterministic() + self._finish())

    def predict_transforms(self) -> Compose:
        """An RGB image file (no annotation): ``eval_transforms`` without the label steps."""
        return Compose(self._deterministic(label=False) + self._finish(label=False))
