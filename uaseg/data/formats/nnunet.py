"""Any dataset in nnU-Net's raw layout (``dataset=nnunet dataset.root=.../nnUNet_raw/Dataset004_Hippocampus``).

Layout (nnU-Net v2)::

    <root>/dataset.json                  channel_names, labels (name -> integer), numTraining, file_ending
    <root>/imagesTr/<case>_0000<ending>  one file per channel, _0000, _0001, ... in channel_names order
    <root>/labelsTr/<case><ending>       integer label map, values as in labels (0 = background)
    <root>/imagesTs/<case>_0000<ending>  optional, unlabelled: segmented by predict.py, never evaluated

``file_ending`` decides the kind: ``.nii.gz`` / ``.nii`` are 3-D volumes, ``.png`` / ``.bmp`` /
``.tif`` / ``.tiff`` 2-D images (read with MONAI's PIL reader, so spatial axes are ``(width,
height)``): each channel a grayscale file, or -- nnU-Net's convention for natural images -- a single
RGB ``<case>_0000.png`` holding the three channels of ``channel_names`` (e.g. R, G, B). Class names
come from ``labels`` in the order of their values, which must be 0..K-1; ``"ignore": K`` (nnU-Net's
ignore label, the highest value) marks unannotated voxels, which take no part in training or
evaluation (the network still has K outputs). Region-based labels (a label mapped to a list of
values, or ``regions_class_order``) are refused with a clear error. Case ids are the ``<case>`` part
of the file names; every case has ``group="all"``.

Preprocessing, fingerprint, splits and transforms: :mod:`uaseg.data.formats.layouts`.

Prediction (:meth:`NnUNetDataModule.prediction_cases`): a case is given by any of its channel files
(or a folder such as ``imagesTs/``); its other channels are the files beside it with the same
``<case>`` and the other channel numbers, and the outputs are named ``<case>_seg...``; an RGB file
that holds all the model's channels is a case alone. A single-channel model (or an RGB one, given
an RGB file) also takes a file without the ``_0000`` suffix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from uaseg.data.checks import (
    check_channel_files, check_file_channels, expected_layout_error, image_file_channels, natural_key,
)
from uaseg.data.formats.dataset_json import (
    IMAGE_ENDINGS, NIFTI_ENDINGS, DatasetInfo, check_inside_root, class_names_from, count_matches, indexed_names,
    read_dataset_json, require_keys,
)
from uaseg.data.formats.layouts import StandardLayoutDataModule
from uaseg.errors import DatasetError, PredictError

LAYOUT = """\
  <root>/dataset.json                 {"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1},
                                       "numTraining": 40, "file_ending": ".nii.gz"}
  <root>/imagesTr/<case>_0000.nii.gz  (one file per channel: _0000, _0001, ... as in channel_names)
  <root>/labelsTr/<case>.nii.gz
  <root>/imagesTs/<case>_0000.nii.gz  (optional, unlabelled)"""


def read_nnunet_json(root: Path) -> DatasetInfo:
    """``dataset.json`` of an nnU-Net v2 raw dataset (see the module docstring)."""
    path, d = read_dataset_json(root, "nnU-Net", LAYOUT)
    if "channel_names" not in d and "modality" in d:  # nnU-Net v1 naming
        d = {**d, "channel_names": d["modality"]}
    require_keys(d, path, ("channel_names", "labels", "numTraining", "file_ending"), "nnU-Net v2")
    channels = indexed_names(d["channel_names"], path, "channel_names")
    if "regions_class_order" in d:
        raise DatasetError(f"{path}: region-based labels ('regions_class_order') are not supported; "
                           "give every label one integer value")
    labels = d["labels"]
    if not isinstance(labels, dict):
        raise DatasetError(f"{path}: 'labels' must map names to integers, like {{\"background\": 0, \"liver\": 1}}")
    by_value: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise DatasetError(f"{path}: label {name!r} is a region (a list of values {value}); region-based "
                               "labels are not supported (they need one output per region), give every label "
                               "one integer value")
        if not isinstance(value, int) or isinstance(value, bool) or value in by_value:
            raise DatasetError(f"{path}: label {name!r} must have its own integer value, got {value!r}")
        by_value[value] = str(name)
    ignore = labels.get("ignore")  # nnU-Net's ignore label: unannotated voxels
    if ignore is not None:
        del by_value[ignore]
    if ignore is not None and by_value and ignore != max(by_value) + 1:
        raise DatasetError(f"{path}: the 'ignore' label must be the highest label value, {max(by_value) + 1} "
                           f"(after {', '.join(f'{v}: {by_value[v]}' for v in sorted(by_value))}), got {ignore}")
    ending = str(d["file_ending"])
    if ending.lower() in NIFTI_ENDINGS:
        dims = 3
    elif ending.lower() in IMAGE_ENDINGS:
        dims = 2
    else:
        raise DatasetError(f"{path}: file_ending {ending!r} is not supported "
                           f"(3-D: {', '.join(NIFTI_ENDINGS)}; 2-D: {', '.join(IMAGE_ENDINGS)})")
    return DatasetInfo(path, dims, channels, class_names_from(by_value, path), ending, d["numTraining"], ignore)


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise expected_layout_error("nnU-Net", root, LAYOUT, f"no {name}/ folder")
    return folder


def _listing(folder: Path, ending: str) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def channel_pattern(ending: str) -> re.Pattern:
    return re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(ending)}$")


def case_image(cid: str, files: dict[int, Path], info: DatasetInfo, folder: Path, error=DatasetError) -> str | list[str]:
    """The image entry of a case from its channel files (channel number -> file): one RGB file that
    holds every channel of ``channel_names`` (2-D), as a path; else one file per channel, as a list in
    channel order (a missing one is an error naming it)."""
    ending, n = info.file_ending, len(info.channel_names)
    if info.spatial_dims == 2 and n > 1 and set(files) == {0}:
        try:
            k, _ = image_file_channels(files[0])
        except DatasetError as e:
            raise error(str(e)) from e
        if k == n:
            return str(files[0])
        if k > 1:
            try:
                check_file_channels([str(files[0])], n, info.channel_names)
            except DatasetError as e:
                raise error(str(e)) from e
    for ch in range(n):
        if ch not in files:
            raise error(f"case {cid}: channel {ch} ({info.channel_names[ch]}) file "
                        f"{folder / f'{cid}_{ch:04d}{ending}'} is missing")
    return [str(files[ch]) for ch in range(n)]


def find_nnunet_cases(root: Path, info: DatasetInfo) -> list[dict[str, Any]]:
    """Labelled cases of ``imagesTr/`` + ``labelsTr/``: ``{case_id, group, image, label}``, ``image`` the
    list of channel files or one RGB file (:func:`case_image`)."""
    ending, n = info.file_ending, len(info.channel_names)
    images, labels = _folder(root, "imagesTr"), _folder(root, "labelsTr")
    pattern = channel_pattern(ending)
    channels: dict[str, dict[int, Path]] = {}
    for f in _listing(images, ending):
        m = pattern.match(f.name)
        if not m:
            raise DatasetError(f"{f}: not named <case>_<4-digit channel>{ending} (nnU-Net's naming)")
        ch = int(m.group("channel"))
        if ch >= n:
            raise DatasetError(f"{f}: channel {ch}, but {info.json_path} lists {n} channel(s) in channel_names "
                               f"({', '.join(f'{i}: {c}' for i, c in enumerate(info.channel_names))})")
        channels.setdefault(m.group("case"), {})[ch] = f
    label_files = {f.name[: -len(ending)]: f for f in _listing(labels, ending)}
    for cid, files in channels.items():
        if cid not in label_files:
            raise DatasetError(f"{files[min(files)]}: image without its label (expected {labels / (cid + ending)})")
    cases = []
    for cid in sorted(label_files, key=natural_key):
        if cid not in channels:
            raise DatasetError(f"{label_files[cid]}: label without its image (expected {images / f'{cid}_0000{ending}'})")
        image = case_image(cid, channels[cid], info, images)
        for f in [*channels[cid].values(), label_files[cid]]:  # listed inside root; a symlink out is logged
            check_inside_root(root, str(f.relative_to(root)), root, "file")
        cases.append({"case_id": cid, "group": "all", "image": image, "label": str(label_files[cid])})
    if not cases:
        raise expected_layout_error("nnU-Net", root, LAYOUT, f"no {ending} label files in {labels}")
    count_matches(info.json_path, info.num_training, len(cases), f"{labels.name}/ holds")
    return cases


class NnUNetDataModule(StandardLayoutDataModule):
    """A dataset in nnU-Net's raw layout (see the module docstring)."""

    name = "nnunet"

    @classmethod
    def read_info(cls, root: Path) -> DatasetInfo:
        return read_nnunet_json(root)

    @classmethod
    def discover(cls, root: Path, info: DatasetInfo) -> list[dict[str, Any]]:
        return find_nnunet_cases(root, info)

    @classmethod
    def check_headers(cls, case: dict[str, Any], spatial_dims: int, n_channels: int) -> None:
        check_channel_files(case["image"], case["label"], spatial_dims, n_channels)

    def prediction_cases(self, files: list[Path]) -> list[tuple[str | None, list[Path]]]:
        """Input files -> ``(case name, its channel files)``: the channel files of a case are found
        beside any one of them (module docstring); a missing one is an error naming it."""
        ending, names = self.plan["meta"]["file_ending"], self.channel_names
        info = DatasetInfo(Path("dataset.json"), self.spatial_dims, tuple(names), (), ending, None)
        pattern = channel_pattern(ending)
        out: list[tuple[str | None, list[Path]]] = []
        seen: set[tuple[Path, str]] = set()
        for f in files:
            m = pattern.match(f.name)
            if not m:
                if len(names) == 1 or self._holds_every_channel(f):  # a plain file keeps its own name
                    out.append((None, [f]))
                    continue
                raise PredictError(f"{f}: this model takes {len(names)} channels ({', '.join(names)}), one file each, "
                                   f"named <case>_0000{ending}, <case>_0001{ending}, ... (nnU-Net's naming)"
                                   + (" or one RGB file" if self.spatial_dims == 2 and len(names) == 3 else ""))
            ch, cid = int(m.group("channel")), m.group("case")
            if ch >= len(names):
                raise PredictError(f"{f}: channel {ch}, but this model takes {len(names)} channel(s) ({', '.join(names)})")
            if (f.parent, cid) in seen:
                continue
            seen.add((f.parent, cid))
            present = {i: f.parent / f"{cid}_{i:04d}{ending}" for i in range(len(names))}
            image = case_image(cid, {i: p for i, p in present.items() if p.is_file()}, info, f.parent, PredictError)
            siblings = [Path(image)] if isinstance(image, str) else [Path(x) for x in image]
            try:
                check_channel_files([str(x) for x in siblings], None, self.spatial_dims, len(names))
            except DatasetError as e:
                raise PredictError(str(e)) from e
            out.append((cid, siblings))
        return out

    def _holds_every_channel(self, f: Path) -> bool:
        if self.spatial_dims != 2:
            return False
        try:
            return image_file_channels(f)[0] == len(self.channel_names)
        except DatasetError:
            return False
