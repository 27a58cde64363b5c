"""``uaseg export-demo <folder>``: the built-in dataset's cases as the image files ``predict.py`` reads,
so prediction can be tried right after the quick start without any data of one's own.

The demo cases are generated into the cache as ``.npz`` arrays (``uaseg/data/datasets/demo.py``); this writes the
cases of one split (by default the test split a default run tests: same ``data_seed``, ``num_folds``,
``fold`` and ``val_fraction``) as

* ``demo2d``: 8-bit RGB PNG ``<case>.png`` (the tile scaled by 255, as ``predict.py`` scales it back);
* ``demo3d``: NIfTI ``<case>.nii.gz`` in HU (int16), 1 mm voxels, identity affine;

``shift="KIND:SEVERITY"`` (``--shift noise:3``) writes them corrupted exactly as the shift testbed
corrupts those test cases (:mod:`uaseg.shift.corruptions`, same ``shift_seed`` as ``eval.shift.seed``),
on the image the network sees (demo3d: after the HU window), up to the files' 8-bit / integer-HU
rounding; and their ground truth beside them in ``<folder>/labels/`` (palette PNG / uint8 NIfTI, values = class
indices), which ``predict.py`` does not read (it takes the files directly inside the folder).
``<folder>/export-demo.json`` records what was exported: a folder that holds anything else is
refused (``force``), so two test sets are never mixed in one folder without a word.
``--layout nnunet`` writes an nnU-Net raw dataset folder instead (:mod:`uaseg.data.datasets.export_nnunet`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from uaseg.errors import ConfigError

DATASETS = ("demo2d", "demo3d")
RECORD = "export-demo.json"
SPLITS = ("test", "val", "train", "all")
CONF = Path(__file__).resolve().parents[3] / "conf" / "dataset"


def demo_datamodule(dataset: str = "demo2d", overrides: Sequence[str] = (), cache_dir: str | Path | None = None):
    """The datamodule of ``conf/dataset/<dataset>.yaml`` with ``key=value`` overrides (``num_cases=120``,
    ``dataset.fold=1``: the ``dataset.`` prefix is optional) and the cache train.py uses by default
    (``$UASEG_CACHE``, else ``./.cache``)."""
    from omegaconf import OmegaConf

    from uaseg.data import build_datamodule

    if dataset not in DATASETS:
        raise ConfigError(f"export-demo: dataset {dataset!r}: choose from {list(DATASETS)}")
    cfg = OmegaConf.load(CONF / f"{dataset}.yaml")
    cfg.cache_dir = str(cache_dir or os.environ.get("UASEG_CACHE") or Path.cwd() / ".cache")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"export-demo: overrides are key=value, got {bad}")
    dotlist = [o[len("dataset."):] if o.startswith("dataset.") else o for o in overrides]
    unknown = [o.split("=", 1)[0] for o in dotlist if o.split("=", 1)[0].split(".")[0] not in cfg]
    if unknown:
        raise ConfigError(f"export-demo: unknown dataset key(s) {unknown}; keys: {sorted(k for k in cfg if k != 'meta')}")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    return build_datamodule(cfg)


def export_demo(folder: str | Path, dataset: str = "demo2d", split: str = "test", overrides: Sequence[str] = (),
                cache_dir: str | Path | None = None, force: bool = False, shift: str | None = None,
                shift_seed: int = 0) -> list[Path]:
    """Write the cases of ``split`` into ``folder`` (labels into ``folder/labels``), corrupted by ``shift``
    (``"KIND:SEVERITY"``) if given; returns the image files. ``folder`` must be new, empty or an earlier
    export of the same cases, unless ``force``."""
    from uaseg.io import write_json
    from uaseg.shift.corruptions import parse_condition

    if split not in SPLITS:
        raise ConfigError(f"export-demo: split {split!r}: choose from {list(SPLITS)}")
    condition = parse_condition(shift, "export-demo --shift") if shift else None
    if isinstance(shift_seed, bool) or not isinstance(shift_seed, int) or shift_seed < 0:
        raise ConfigError(f"export-demo --shift-seed={shift_seed!r}: expected an integer >= 0")
    folder = Path(folder)
    what = {"dataset": dataset, "split": split,
            "overrides": sorted(o[len("dataset."):] if o.startswith("dataset.") else o for o in overrides),
            **({"shift": f"{condition[0]}:{condition[1]}", "shift_seed": shift_seed} if condition else {})}
    check_target(folder, what, force)
    dm = demo_datamodule(dataset, overrides, cache_dir)
    dm.setup()
    cases = [c for s in ("train", "val", "test") for c in dm.splits[s]] if split == "all" else dm.splits[split]
    ext = ".png" if dm.spatial_dims == 2 else ".nii.gz"
    written, labels = [], []
    for case in cases:
        if condition is not None:
            case = {**case, "image": _corrupted(dm, np.asarray(case["image"]), condition, shift_seed, case["case_id"])}
        labels.append(folder / "labels" / f"{case['case_id']}{ext}")
        written.append(write_case(case, dm.spatial_dims, folder / f"{case['case_id']}{ext}", labels[-1]))
    write_json(folder / RECORD, {**what, "files": sorted(str(f.relative_to(folder)) for f in written + labels)})
    return written


def _corrupted(dm, image: np.ndarray, condition: tuple[str, int], seed: int, case_id: str) -> np.ndarray:
    """The case as the testbed corrupts it: on the network's input (demo3d: HU windowed to [0, 1]),
    then back to the file's units."""
    from uaseg.shift.corruptions import check_kind, corrupt

    check_kind(*condition, dm.spatial_dims, dm.in_channels, where="export-demo --shift")
    if dm.spatial_dims == 2:
        return corrupt(image.astype(np.float32), *condition, seed, case_id, 2)
    lo, hi = dm.hu_window
    x = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return np.round(corrupt(x, *condition, seed, case_id, 3) * (hi - lo) + lo)


def check_target(folder: Path, what: dict, force: bool) -> None:
    """A :class:`ConfigError` before any case is generated when ``folder`` cannot be written, or holds
    files that are not an earlier export of the same cases (``what``) and ``force`` is not given."""
    import json

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file there or above it, no permission
        raise ConfigError(f"export-demo: cannot write the cases into {folder} ({e.strerror or e}); give a folder") from None
    present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir() and p.name != RECORD)
    if not present or force:
        return
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and {k: record.get(k) for k in what} == what and set(present) <= set(record.get("files") or ()):
        return  # the same export again: the same files are written over themselves
    earlier = (f"an export of {record.get('dataset')} {record.get('split')} {' '.join(record.get('overrides') or [])}".rstrip()
               + (" and other files" if set(present) - set(record.get("files") or ()) else "")
               if isinstance(record, dict) else "other files")
    raise ConfigError(f"export-demo: {folder} is not empty ({len(present)} files, e.g. {present[0]}): it holds {earlier}; "
                      "choose an empty folder, or pass --force to write these cases into it as well")


def write_case(case: dict, spatial_dims: int, image_path: Path, label_path: Path) -> Path:
    """One demo case as an image file and its label file (PNG for 2-D, NIfTI for 3-D); the image path."""
    from uaseg.io import save_label_png, save_nifti, save_png

    image, label = np.asarray(case["image"]), np.asarray(case["label"])[0]
    if spatial_dims == 2:
        # MONAI reads a 2-D file as (width, height): the file holds the array transposed
        rgb = np.round(np.clip(np.moveaxis(image, 0, -1), 0, 1) * 255).astype(np.uint8).transpose(1, 0, 2)
        save_label_png(label_path, label.T)
        return save_png(image_path, rgb)
    save_nifti(label_path, label.astype(np.uint8))
    return save_nifti(image_path, image[0].astype(np.int16))


#: the dataset keys that decide which cases a run tests (and export-demo writes)
CASE_KEYS = ("num_cases", "image_size", "data_seed", "num_folds", "fold", "val_fraction")


def export_command(dataset_cfg, folder: str = "outputs/demo_input") -> str | None:
    """``uaseg export-demo`` writing the test cases of a run configured by ``dataset_cfg``: its dataset
    (by ``_target_``) and the keys of :data:`CASE_KEYS` that differ from ``conf/dataset/<dataset>.yaml``;
    None for a dataset export-demo cannot write."""
    from omegaconf import OmegaConf

    from uaseg.config.moved import current_target

    target = current_target(str(OmegaConf.select(dataset_cfg, "_target_", default="")))
    for dataset in DATASETS:
        defaults = OmegaConf.load(CONF / f"{dataset}.yaml")
        if defaults.get("_target_") != target:
            continue
        changed = [f"{k}={OmegaConf.select(dataset_cfg, k)}" for k in CASE_KEYS
                   if OmegaConf.select(dataset_cfg, k, default=None) != defaults.get(k)]
        flag = "" if dataset == "demo2d" else f" --dataset {dataset}"
        return " ".join([f"uaseg export-demo {folder}{flag}", *changed])
    return None
