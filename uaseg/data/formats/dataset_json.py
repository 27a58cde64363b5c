"""Reading a standard layout's ``dataset.json`` (nnU-Net, Decathlon) into the layout-independent
:class:`DatasetInfo`, with the checks every layout shares: required keys, indexed names, counts, files
inside the root, consecutive label values. Its text is data: no ``${...}`` is ever resolved."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from uaseg.errors import DatasetError
from uaseg.config.interpolation import refuse_interpolations

log = logging.getLogger(__name__)


NIFTI_ENDINGS = (".nii.gz", ".nii")
IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")

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
