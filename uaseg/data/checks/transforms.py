"""The checks as MONAI dictionary transforms, run inside the loaders (on every case before training,
and again as each case is read): errors name the file."""

from __future__ import annotations

import logging
from typing import Any, Hashable, Iterable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform

from uaseg.data.checks.files import (
    check_label_values,
    check_same_geometry,
    nonfinite_problem,
    source_name,
)
from uaseg.errors import DatasetError, describe

log = logging.getLogger(__name__)


class LoadImageNamedd(MapTransform):
    """``monai.transforms.LoadImaged`` key by key, turning any reader error into a
    :class:`DatasetError` that names the file (corrupt, truncated, wrong format...). ``dtypes``
    overrides the data type per key (``{"label": None}``: the file's own, so a label value check
    sees ``421.5`` as it is stored)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False,
                 dtypes: Mapping[str, Any] | None = None, **load_kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        dtypes = dtypes or {}
        self.loaders = {k: LoadImaged(keys=k, **{**load_kwargs, **({"dtype": dtypes[k]} if k in dtypes else {})})
                        for k in self.keys}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            files = d[key]
            try:
                d = self.loaders[key](d)
            except Exception as e:
                raise DatasetError(f"{d[key]}: cannot read this file ({describe(e)})") from e
            if isinstance(files, (list, tuple)) and hasattr(d[key], "meta"):  # MONAI keeps only the first name
                d[key].meta["source_files"] = [str(f) for f in files]
        return d


class CheckSameGeometryd(MapTransform):
    """Image and label (already loaded, channel-first) must share spatial shape and, if
    ``check_affine``, their voxel spacing; the error names both files. An origin or direction that
    differs (:func:`~uaseg.data.checks.check_same_geometry`: a warning once per pair) is overridden:
    the label takes the image's affine, so reorientation and resampling treat both alike (nnU-Net
    works in array space and ignores the label's geometry)."""

    def __init__(self, image_key: str = "image", label_key: str = "label", check_affine: bool = True) -> None:
        super().__init__([image_key, label_key])
        self.image_key, self.label_key, self.check_affine = image_key, label_key, check_affine

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        img, lab = d[self.image_key], d[self.label_key]
        check_same_geometry(
            source_name(img),
            source_name(lab),
            img.shape[1:],
            lab.shape[1:],
            getattr(img, "affine", None) if self.check_affine else None,
            getattr(lab, "affine", None) if self.check_affine else None,
        )
        if self.check_affine and isinstance(img, MetaTensor) and isinstance(lab, MetaTensor):
            lab.affine = img.affine.clone()  # a freshly loaded tensor: set in place
        return d


class CheckChannelsd(MapTransform):
    """Channel-first arrays must have ``n`` channels (error naming the file)."""

    def __init__(self, keys: KeysCollection, n: int, what: str) -> None:
        super().__init__(keys)
        self.n, self.what = n, what

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].shape[0] != self.n:
                raise DatasetError(f"{source_name(d[key])}: {self.what} has {d[key].shape[0]} channels, expected {self.n}")
        return d


class CheckFinited(MapTransform):
    """Fail naming the file and the count when an image holds NaN or infinite voxels; channels stacked
    from one file each (nnU-Net's ``_0000``, ``_0001``...; ``source_files`` from LoadImageNamedd) are
    checked per file."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            files = (getattr(x, "meta", None) or {}).get("source_files")
            parts = zip(files, x) if isinstance(files, (list, tuple)) and len(files) == len(x) > 1 \
                else [(source_name(x), x)]
            for name, part in parts:
                problem = nonfinite_problem(str(name), part)
                if problem:
                    raise DatasetError(problem)
        return d


_warned_fixups: set[tuple[str, float]] = set()


class CheckLabelValuesd(MapTransform):
    """Fail (naming the file and the values) if a label holds a value outside ``allowed``.

    ``fixups`` maps known-bad values to good ones (e.g. MM-WHS ``{421: 420}``); each fix is logged
    with ``logging.warning`` once per file and value per process.
    """

    def __init__(
        self,
        keys: KeysCollection,
        allowed: Iterable[float],
        fixups: Mapping[float, float] | None = None,
        what: str = "label",
    ) -> None:
        super().__init__(keys)
        self.allowed = sorted(float(v) for v in allowed)
        self.fixups = {float(k): float(v) for k, v in (fixups or {}).items()}
        self.what = what

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            name = source_name(lab)
            values = torch.unique(torch.as_tensor(lab)).tolist()
            check_label_values(name, values, self.allowed, self.fixups, self.what)
            for bad, good in self.fixups.items():
                if bad in values:
                    if (name, bad) not in _warned_fixups:
                        _warned_fixups.add((name, bad))
                        log.warning("%s: %s value %g mapped to %g (known defect of the release)", name, self.what, bad, good)
                    lab = torch.where(lab == bad, torch.as_tensor(good, dtype=lab.dtype), lab)
            d[key] = lab
        return d


class Binarized(MapTransform):
    """Instance-id map -> binary foreground (``x > 0``), keeping dtype and metadata."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (d[key] > 0).to(d[key].dtype)
        return d
