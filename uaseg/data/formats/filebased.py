"""Shared machinery for datasets read from the user's own download folder (MM-WHS, GlaS).

On top of :class:`uaseg.data.base.SegDataModule` this adds

* the case hooks: :meth:`FileSegDataModule.find_cases` (discovery; :func:`uaseg.data.formats.discovery.find_pairs`
  and :func:`~uaseg.data.formats.discovery.require_pairs` do the shared part), :meth:`~FileSegDataModule.check_case_headers` (run on
  every case before training, see :mod:`uaseg.data.checks`) and
  :meth:`~FileSegDataModule.split_cases` (default: persisted k-fold by case, validation carved from
  the training folds);
* ``sw_overlap`` (read by the module's sliding-window inferer), ``augment`` (the dataset config's
  ``augment:`` block, which holds the defaults; every key of ``AUGMENT_KEYS`` is required, ``None``
  switches augmentation off), ``fg_fraction``, ``check_files`` and ``cache`` options;
* where things are written (see :meth:`FileSegDataModule.splits_path` / :meth:`cache_root`):

  - ``splits_final.json``: ``<root>/splits_final.json`` if it exists or ``root`` is writable, else
    ``<cache base>/splits_final.json``;
  - preprocessed cases (MONAI ``PersistentDataset``, the deterministic prefix of the transforms):
    ``<cache base>/<dataset>-<hash of the preprocessing settings>/{train,eval}/``;
  - ``<cache base>`` is ``dataset.cache_dir`` if set, else ``<root>/.uaseg_cache`` if ``root`` is
    writable, else ``~/.cache/uaseg/<dataset>-<hash of root path>``.

  Changing a preprocessing setting changes the hash (a fresh folder); changing a file on disk
  changes its cache key (size and mtime are hashed with the path), so stale tensors are never used.
* errors raised inside MONAI transforms surface as :class:`DatasetError` naming the case and file
  (:mod:`uaseg.data.monai_datasets`);
* :meth:`invert_to_original` -- predictions back onto the original image grid (``Invertd``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from monai.data import Dataset, decollate_batch
from monai.data.utils import json_hashing
from monai.transforms import Compose
from monai.transforms.utils import reset_ops_id

from uaseg.data.base import SegDataModule, check_dataset_options
from uaseg.data.monai_datasets import (
    NamedErrorsDataset,
    NamedErrorsPersistentDataset,
    file_stamped_hash,
)
from uaseg.data.plan.invert import invert_to_file_grid
from uaseg.errors import DatasetError
from uaseg.io import write_json

#: bump when the preprocessing code changes meaningfully, so old caches are not reused
CACHE_VERSION = 1


class FileSegDataModule(SegDataModule):
    """Base for datasets read from ``dataset.root``; subclasses define :meth:`find_cases`,
    :meth:`check_case_headers`, the transforms and :meth:`preprocessing_config` (everything the
    cached transforms depend on)."""

    #: short name used in cache folders and messages
    name: str = "dataset"
    #: the keys of ``dataset.augment`` (values and defaults: the dataset's YAML config)
    AUGMENT_KEYS: tuple[str, ...] = ()

    def __init__(
        self,
        *args: Any,
        fg_fraction: float = 0.33,
        augment: Mapping[str, Any] | None = None,
        check_files: bool = True,
        cache: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.root is None:
            raise DatasetError(f"{self.name}: dataset.root is not set; point it at the downloaded folder")
        self.augment = self._augment_settings(augment)
        check_dataset_options(fg_fraction=fg_fraction, augment=self.augment,
                              check_files=check_files, cache=cache)
        self.fg_fraction = float(fg_fraction)
        self.check_files = bool(check_files)
        self.cache = bool(cache)
        self._read_all = False

    def _augment_settings(self, augment: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if augment is None:
            return None
        given = set(augment)
        unknown, missing = sorted(given - set(self.AUGMENT_KEYS)), sorted(set(self.AUGMENT_KEYS) - given)
        if unknown or missing:
            raise TypeError(
                f"{type(self).__name__}: dataset.augment "
                + (f"has unknown keys {unknown}" if unknown else f"lacks keys {missing}")
                + f"; its keys are {sorted(self.AUGMENT_KEYS)} (defaults: conf/dataset/{self.name}.yaml)"
            )
        return dict(augment)

    # ------------------------------------------------------------------ to override
    def find_cases(self) -> list[dict[str, Any]]:
        """Every case under ``root``: ``{case_id, group, image, label, ...}``. A missing or empty
        folder, or a file without its partner, is a :class:`DatasetError` naming the file."""
        raise NotImplementedError

    def check_case_headers(self, case: dict[str, Any]) -> None:
        """Header-only check of one case (readable, dimensions, image and label on one grid)."""
        raise NotImplementedError

    def split_cases(self, cases: list[dict[str, Any]]) -> dict[str, list[dict]]:
        """Persisted ``num_folds``-fold split by case (``fold`` = test fold); validation carved from
        the other folds."""
        by_id = {c["case_id"]: c for c in cases}
        ids = self.kfold_split(list(by_id), self.splits_path(), self.seed)
        return {split: [by_id[i] for i in v] for split, v in ids.items()}

    def preprocessing_config(self) -> dict[str, Any]:
        """Every setting the deterministic (cached) transforms depend on."""
        raise NotImplementedError

    def load_cases(self) -> dict[str, list[dict]]:
        cases = self.find_cases()
        if self.check_files:
            for case in cases:
                self.check_case_headers(case)
        return self.split_cases(cases)

    def prepare_data(self) -> None:
        """Lightning calls this before the first training (or test) step, once per machine: with
        ``check_files``, read and check every case of every split, the test fold included (see
        :func:`uaseg.data.formats.scan.read_every_case`), so a bad file fails in seconds, not after training."""
        if self.check_files and not self._read_all:
            from uaseg.data.formats.scan import read_every_case

            read_every_case(self)
            self._read_all = True

    # ------------------------------------------------------------------ locations
    def _root_writable(self) -> bool:
        assert self.root is not None
        return root_writable(self.root)

    def cache_base(self) -> Path:
        assert self.root is not None
        return cache_base_for(self.name, self.root, self.cache_dir, self._root_writable())

    def preprocessing_hash(self) -> str:
        cfg = {"version": CACHE_VERSION, "dataset": self.name, **self.preprocessing_config()}
        return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def cache_root(self) -> Path:
        """Folder of this preprocessing configuration's cached cases."""
        folder = self.cache_base() / f"{self.name}-{self.preprocessing_hash()}"
        return folder

    def splits_path(self) -> Path:
        assert self.root is not None
        return persisted_path(self.root, "splits_final.json", self.cache_base(), self._root_writable())

    # ------------------------------------------------------------------ datasets
    def dataset(self, split: str, transforms: Compose | None = None) -> Dataset:
        self.setup()
        assert self.splits is not None
        default = transforms is None
        if transforms is None:
            transforms = self.train_transforms() if split == "train" else self.eval_transforms()
        data = self.splits[split]
        if not (self.cache and default):
            return NamedErrorsDataset(data, transform=transforms)
        folder = self.cache_root()
        folder.mkdir(parents=True, exist_ok=True)
        info = folder / "preprocessing.json"
        if not info.exists():
            write_json(info, self.preprocessing_config())
        sub = "train" if split == "train" else "eval"
        return NamedErrorsPersistentDataset(
            data,
            transform=transforms,
            cache_dir=folder / sub,
            hash_func=file_stamped_hash,
            hash_transform=json_hashing,
            track_meta=True,
            weights_only=False,  # our own cache of MetaTensors (affine, filename, applied ops)
        )

    # ------------------------------------------------------------------ inversion
    def invert_to_original(
        self, arrays: Mapping[str, torch.Tensor], batch: Mapping[str, Any], nearest: Sequence[str] = ()
    ) -> list[dict[str, torch.Tensor]]:
        """Map predictions made on eval-transformed images back onto each original image grid.

        ``arrays``: name -> ``(B, C, *spatial)`` on the grid of ``batch["image"]`` (e.g. the argmax
        map and the uncertainty); ``batch["case_id"]`` names the cases. Returns per case a dict of
        ``(C, *original_spatial)`` tensors on the original file's grid (undoes padding, resampling,
        reorientation and -- with ``paper_crop`` -- crop/resize), nearest-neighbour for the names in
        ``nearest`` (label maps), linear for the others.
        """
        transforms = self.eval_transforms()
        self.setup()
        assert self.splits is not None
        by_id = {c["case_id"]: c for cases in self.splits.values() for c in cases}
        per_case = [decollate_batch(a.detach(), detach=True) for a in arrays.values()]
        out = []
        for i, case_id in enumerate(batch["case_id"]):
            # The loader's image may come from the PersistentDataset cache, which does not keep
            # the record of the cached (deterministic) transforms: re-run them on the files to get
            # the complete record, then invert.
            image = reset_ops_id(transforms(dict(by_id[case_id]))["image"])
            case = {name: values[i] for name, values in zip(arrays, per_case)}
            out.append(invert_to_file_grid(image, transforms, case, nearest=nearest))
        return out

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(root=str(self.root), preprocessing=self.preprocessing_config())
        return info


def root_writable(root: Path) -> bool:
    return root.is_dir() and os.access(root, os.W_OK)


def cache_base_for(name: str, root: Path, cache_dir: Path | None, writable: bool) -> Path:
    """``<cache base>`` of the module docstring, for a dataset ``name`` read from ``root``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if writable:
        return root / ".uaseg_cache"
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "uaseg" / f"{name}-{tag}"


def persisted_path(root: Path, filename: str, cache_base: Path, writable: bool) -> Path:
    """Where a file written once and reused (``splits_final.json``, ``fingerprint.json``) lives:
    ``<root>/<filename>`` if it exists or ``root`` is writable, else ``<cache base>/<filename>``."""
    in_root = root / filename
    if in_root.exists() or writable:
        return in_root
    return cache_base / filename


def as_tuple(values: Sequence[float] | float, n: int, what: str) -> tuple[float, ...]:
    """``1.5`` -> ``(1.5,)*n``; lists must have ``n`` entries."""
    if isinstance(values, (int, float)):
        return (float(values),) * n
    vals = tuple(float(v) for v in values)
    if len(vals) != n:
        raise ValueError(f"{what} {list(vals)} must have {n} entries")
    return vals
