"""Shared machinery for datasets read from the user's own download folder (MM-WHS, GlaS).

On top of :class:`uaseg.data.base.SegDataModule` this adds

* ``sw_overlap`` (read by the module's sliding-window inferer), ``augment`` (a dict merged over the
  subclass's ``DEFAULT_AUGMENT``), ``fg_fraction``, ``check_files`` and ``cache`` options;
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
  (MONAI wraps them in ``RuntimeError('applying transform ...')``);
* :meth:`invert_to_original` -- predictions back onto the original image grid (``Invertd``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from monai.data import Dataset, MetaTensor, PersistentDataset, decollate_batch
from monai.data.utils import json_hashing, pickle_hashing
from monai.transforms import Compose, Invertd
from monai.transforms.utils import reset_ops_id

from uaseg.data.base import SegDataModule
from uaseg.data.checks import DatasetError, first_cause, root_cause

#: bump when the preprocessing code changes meaningfully, so old caches are not reused
CACHE_VERSION = 1


def _file_stamped_hash(item: Mapping[str, Any]) -> bytes:
    """Cache key of a case dict: its content plus size and mtime of every file it names."""
    stamped = {}
    for k, v in item.items():
        stamped[k] = v
        if isinstance(v, (str, Path)) and os.path.isfile(v):
            st = os.stat(v)
            stamped[f"{k}__stat"] = (st.st_size, st.st_mtime_ns)
    return pickle_hashing(stamped)


class _NamedErrors:
    """Mixin for MONAI datasets: transform failures are re-raised naming the case (and, for our own
    :class:`DatasetError`, the file it named) instead of MONAI's bare ``applying transform``."""

    def _transform(self, index: int):  # type: ignore[override]
        try:
            return super()._transform(index)  # type: ignore[misc]
        except Exception as e:
            item = self.data[index]  # type: ignore[attr-defined]
            cid = item.get("case_id", index) if isinstance(item, Mapping) else index
            cause = first_cause(e)
            if cause is not None:
                raise DatasetError(f"case {cid}: {cause}") from e
            files = [str(v) for v in item.values() if isinstance(v, (str, Path)) and os.path.isfile(v)]
            deepest = root_cause(e)
            raise DatasetError(
                f"case {cid} ({', '.join(files)}): preprocessing failed ({type(deepest).__name__}: {deepest})"
            ) from e


class NamedErrorsDataset(_NamedErrors, Dataset):
    pass


class NamedErrorsPersistentDataset(_NamedErrors, PersistentDataset):
    pass


class FileSegDataModule(SegDataModule):
    """Base for datasets read from ``dataset.root``; subclasses define the three hooks plus
    :meth:`preprocessing_config` (everything the cached transforms depend on)."""

    #: short name used in cache folders and messages
    name: str = "dataset"
    #: default augmentation settings; ``dataset.augment`` overrides single keys
    DEFAULT_AUGMENT: dict[str, Any] = {}

    def __init__(
        self,
        *args: Any,
        sw_overlap: float = 0.5,
        fg_fraction: float = 0.33,
        augment: Mapping[str, Any] | None = None,
        check_files: bool = True,
        cache: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.root is None:
            raise DatasetError(f"{self.name}: dataset.root is not set; point it at the downloaded folder")
        self.sw_overlap = float(sw_overlap)
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ValueError(f"dataset.sw_overlap={sw_overlap} must be in [0, 1)")
        self.fg_fraction = float(fg_fraction)
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise ValueError(f"dataset.fg_fraction={fg_fraction} must be in [0, 1]")
        unknown = sorted(set(augment or {}) - set(self.DEFAULT_AUGMENT))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown dataset.augment keys {unknown}; known: {sorted(self.DEFAULT_AUGMENT)}"
            )
        self.augment = {**self.DEFAULT_AUGMENT, **dict(augment or {})}
        self.check_files = bool(check_files)
        self.cache = bool(cache)

    # ------------------------------------------------------------------ to override
    def preprocessing_config(self) -> dict[str, Any]:
        """Every setting the deterministic (cached) transforms depend on."""
        raise NotImplementedError

    # ------------------------------------------------------------------ locations
    def _root_writable(self) -> bool:
        assert self.root is not None
        return self.root.is_dir() and os.access(self.root, os.W_OK)

    def cache_base(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        assert self.root is not None
        if self._root_writable():
            return self.root / ".uaseg_cache"
        tag = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:8]
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "uaseg" / f"{self.name}-{tag}"

    def preprocessing_hash(self) -> str:
        cfg = {"version": CACHE_VERSION, "dataset": self.name, **self.preprocessing_config()}
        return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def cache_root(self) -> Path:
        """Folder of this preprocessing configuration's cached cases."""
        folder = self.cache_base() / f"{self.name}-{self.preprocessing_hash()}"
        return folder

    def splits_path(self) -> Path:
        assert self.root is not None
        in_root = self.root / "splits_final.json"
        if in_root.exists() or self._root_writable():
            return in_root
        return self.cache_base() / "splits_final.json"

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
            info.write_text(json.dumps(self.preprocessing_config(), indent=1, default=str))
        sub = "train" if split == "train" else "eval"
        return NamedErrorsPersistentDataset(
            data,
            transform=transforms,
            cache_dir=folder / sub,
            hash_func=_file_stamped_hash,
            hash_transform=json_hashing,
            track_meta=True,
            weights_only=False,  # our own cache of MetaTensors (affine, filename, applied ops)
        )

    # ------------------------------------------------------------------ inversion
    def invert_to_original(
        self, prediction: torch.Tensor, batch: Mapping[str, Any], nearest: bool = False
    ) -> list[torch.Tensor]:
        """Map predictions made on eval-transformed images back onto each original image grid.

        ``prediction``: ``(B, C, *spatial)`` on the grid of ``batch["image"]`` (e.g. the
        sliding-window output, probabilities or an argmax map); ``batch["case_id"]`` names the
        cases. Returns one tensor ``(C, *original_spatial)`` per case on the original file's grid
        (undoes padding, resampling, reorientation and -- with ``paper_crop`` -- crop/resize, via
        ``monai.transforms.Invertd`` on ``eval_transforms()``). Use ``nearest=True`` for label
        maps, ``False`` (linear) for probabilities.
        """
        transforms = self.eval_transforms()
        inverter = Invertd(
            keys="pred",
            transform=transforms,
            orig_keys="image",
            nearest_interp=nearest,
            to_tensor=True,
        )
        self.setup()
        assert self.splits is not None
        by_id = {c["case_id"]: c for cases in self.splits.values() for c in cases}
        preds = decollate_batch(prediction.detach(), detach=True)
        out = []
        for case_id, pred in zip(batch["case_id"], preds):
            # The loader's image may come from the PersistentDataset cache, which does not keep
            # the record of the cached (deterministic) transforms: re-run them on the files to get
            # the complete record, then invert.
            item = transforms(dict(by_id[case_id]))
            item = {"image": reset_ops_id(item["image"]), "pred": MetaTensor(pred.cpu())}
            out.append(inverter(item)["pred"])
        return out

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(root=str(self.root), preprocessing=self.preprocessing_config())
        return info


def as_tuple(values: Sequence[float] | float, n: int, what: str) -> tuple[float, ...]:
    """``1.5`` -> ``(1.5,)*n``; lists must have ``n`` entries."""
    if isinstance(values, (int, float)):
        return (float(values),) * n
    vals = tuple(float(v) for v in values)
    if len(vals) != n:
        raise ValueError(f"{what} {list(vals)} must have {n} entries")
    return vals
