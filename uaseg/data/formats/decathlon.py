"""Any dataset in the Medical Segmentation Decathlon layout (``dataset=decathlon dataset.root=.../Task02_Heart``).

Layout::

    <root>/dataset.json          modality ({"0": "MRI"}), labels ({"0": "background", "1": "left atrium"}),
                                 numTraining, training ([{"image": "./imagesTr/la_003.nii.gz",
                                 "label": "./labelsTr/la_003.nii.gz"}, ...]), test (optional)
    <root>/imagesTr/*.nii.gz     3-D, or 4-D with the modalities in the last axis (they become channels)
    <root>/labelsTr/*.nii.gz     3-D integer label maps, values as in labels (0 = background)
    <root>/imagesTs/*.nii.gz     optional, unlabelled: segmented by predict.py, never evaluated

The ``training`` list is read with ``monai.data.load_decathlon_datalist``; every file it names must
be a relative path inside ``<root>`` (no ``../``, not absolute; a symlink out is logged) and exist
(files it does not name, like the macOS ``._*`` copies in the released archives, are ignored).
Case ids are the image file names without ``.nii.gz``; every case has ``group="all"``. Class names
come from ``labels`` in the order of their values, which must be 0..K-1; channel names (and so the
normalisation: ``CT`` or per-case z-score) from ``modality``.

Preprocessing, fingerprint, splits and transforms: :mod:`uaseg.data.formats.layouts`. Prediction takes the
4-D (or 3-D) image files as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uaseg.data.checks import check_multimodal_pair, natural_key
from uaseg.data.formats.dataset_json import (
    NIFTI_ENDINGS, DatasetInfo, check_inside_root, class_names_from, count_matches, indexed_names, read_dataset_json,
    require_keys,
)
from uaseg.data.formats.layouts import StandardLayoutDataModule
from uaseg.errors import DatasetError

LAYOUT = """\
  <root>/dataset.json            {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver"},
                                  "numTraining": 40, "training": [{"image": "./imagesTr/liver_0.nii.gz",
                                                                   "label": "./labelsTr/liver_0.nii.gz"}, ...]}
  <root>/imagesTr/liver_0.nii.gz (4-D when there are several modalities: modalities in the last axis)
  <root>/labelsTr/liver_0.nii.gz"""


def read_decathlon_json(root: Path) -> DatasetInfo:
    """``dataset.json`` of a Decathlon task (see the module docstring)."""
    path, d = read_dataset_json(root, "Decathlon", LAYOUT)
    require_keys(d, path, ("modality", "labels", "training"), "Decathlon")
    channels = indexed_names(d["modality"], path, "modality")
    labels = d["labels"]
    if not isinstance(labels, dict):
        raise DatasetError(f"{path}: 'labels' must map values to names, like {{\"0\": \"background\", \"1\": \"liver\"}}")
    by_value: dict[int, str] = {}
    for value, name in labels.items():
        if isinstance(name, (list, tuple, dict)):
            raise DatasetError(f"{path}: label {value!r} maps to {name!r}; region-based labels are not supported")
        try:
            by_value[int(value)] = str(name)
        except ValueError as e:
            raise DatasetError(f"{path}: the keys of 'labels' must be integer label values, got {value!r}") from e
    return DatasetInfo(path, 3, channels, class_names_from(by_value, path), ".nii.gz", d.get("numTraining"))


def find_decathlon_cases(root: Path, info: DatasetInfo) -> list[dict[str, Any]]:
    """The cases of the ``training`` list: ``{case_id, group, image, label}``."""
    import json

    from monai.data import load_decathlon_datalist

    path = info.json_path
    raw = json.loads(path.read_text())["training"]
    if not isinstance(raw, list) or not all(isinstance(e, dict) and {"image", "label"} <= set(e) for e in raw):
        raise DatasetError(f"{path}: 'training' must be a list of {{\"image\": ..., \"label\": ...}} entries")
    for i, entry in enumerate(raw):
        for key in ("image", "label"):
            for name in entry[key] if isinstance(entry[key], list) else [entry[key]]:
                check_inside_root(root, name, path, f"training entry {i} {key}")
    items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="training", base_dir=str(root))
    cases, seen = [], {}
    for i, (entry, item) in enumerate(zip(raw, items)):
        for key in ("image", "label"):
            if not Path(item[key]).is_file():
                raise DatasetError(f"{path}: training entry {i} names {key} {entry[key]!r}, but {item[key]} does not exist")
        name = Path(item["image"]).name
        cid = next((name[: -len(e)] for e in NIFTI_ENDINGS if name.endswith(e)), None)
        if cid is None:
            raise DatasetError(f"{item['image']}: not a NIfTI file (.nii.gz, .nii), named in {path}")
        if cid in seen:
            raise DatasetError(f"{path}: training entries {seen[cid]} and {i} are both case {cid!r}")
        seen[cid] = i
        cases.append({"case_id": cid, "group": "all", "image": str(item["image"]), "label": str(item["label"])})
    if not cases:
        raise DatasetError(f"{path}: the 'training' list is empty")
    if info.num_training is not None:
        count_matches(path, info.num_training, len(cases), "its 'training' list has")
    return sorted(cases, key=lambda c: natural_key(c["case_id"]))


class DecathlonDataModule(StandardLayoutDataModule):
    """A Medical Segmentation Decathlon task (see the module docstring)."""

    name = "decathlon"

    @classmethod
    def read_info(cls, root: Path) -> DatasetInfo:
        return read_decathlon_json(root)

    @classmethod
    def discover(cls, root: Path, info: DatasetInfo) -> list[dict[str, Any]]:
        return find_decathlon_cases(root, info)

    @classmethod
    def check_headers(cls, case: dict[str, Any], spatial_dims: int, n_channels: int) -> None:
        check_multimodal_pair(case["image"], case["label"], n_channels)
