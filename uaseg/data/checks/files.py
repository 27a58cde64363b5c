"""Checks of dataset files and values (header-only pair checks, label values, NaN voxels, image
modes, foreground), each raising :class:`~uaseg.errors.DatasetError` naming the file."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from uaseg.errors import DatasetError
from uaseg.io import affine_problem, read_image_header, read_nifti_header

log = logging.getLogger(__name__)


def natural_key(text: str) -> list:
    """Sort key splitting digits out: ``train_2`` < ``train_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


def source_name(x: Any) -> str:
    """The file a (Meta)tensor was loaded from, or ``'<unknown file>'``."""
    meta = getattr(x, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name) if name else "<unknown file>"


#: Image and label grids (nnU-Net's rule: shape and spacing must agree, origin and direction may
#: differ with a warning). Spacings (the affine's column norms) agree within ``SPACING_RTOL``
#: (relative; beyond: refused); origins within ``ORIGIN_ATOL_MM`` and direction cosines within
#: ``DIRECTION_ATOL`` are the same grid (silent); beyond, a warning names both files and the
#: differences, and the label is used on the image's grid.
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4
_warned_geometry: set[tuple[str, str]] = set()


def geometry_difference(affine_i, affine_l, n: int) -> dict[str, Any]:
    """Spacings, the largest origin offset (mm) and the largest direction-cosine difference of two
    voxel-to-world matrices (first ``n`` spatial axes)."""
    a, b = np.asarray(affine_i, dtype=np.float64), np.asarray(affine_l, dtype=np.float64)
    sa, sb = np.linalg.norm(a[:n, :n], axis=0), np.linalg.norm(b[:n, :n], axis=0)
    return {"spacing_image": sa, "spacing_label": sb,
            "origin_mm": float(np.abs(a[:n, -1] - b[:n, -1]).max()),
            "direction": float(np.abs(a[:n, :n] / sa - b[:n, :n] / sb).max())}


def check_same_geometry(
    image_file: str, label_file: str, shape_i, shape_l, affine_i=None, affine_l=None
) -> str | None:
    """Raise naming both files if the spatial shapes (or, with affines, the voxel spacings) of image
    and label differ. An origin or direction that differs beyond the tolerances above is logged once
    per pair (the label is then used on the image's grid: :class:`CheckSameGeometryd`) and returned
    as that warning text; None when the grids agree."""
    if tuple(shape_i) != tuple(shape_l):
        raise DatasetError(
            f"image {image_file} has shape {tuple(shape_i)} but its label {label_file} has shape "
            f"{tuple(shape_l)}; they must be on the same grid"
        )
    if affine_i is None or affine_l is None:
        return None
    n = len(tuple(shape_i))
    a, b = np.asarray(affine_i, dtype=np.float64), np.asarray(affine_l, dtype=np.float64)
    for f, m in ((image_file, a), (label_file, b)):
        problem = affine_problem(m, n)
        if problem:  # never "different affines" for two identical broken matrices
            raise DatasetError(f"{f}: bad NIfTI header: {problem}; fix the header (e.g. with nibabel or 3D Slicer)")
    d = geometry_difference(a, b, min(n, a.shape[0] - 1, b.shape[0] - 1))
    if not np.allclose(d["spacing_image"], d["spacing_label"], rtol=SPACING_RTOL, atol=0.0):
        raise DatasetError(
            f"image {image_file} and its label {label_file} have different affines (voxel-to-world matrices) "
            f"with different voxel spacings: {_fmt_spacing(d['spacing_image'])} vs {_fmt_spacing(d['spacing_label'])} "
            "mm; a label must be on its image's grid"
        )
    if d["origin_mm"] <= ORIGIN_ATOL_MM and d["direction"] <= DIRECTION_ATOL:
        return None
    warning = (f"label {label_file} and its image {image_file} differ in origin by up to {d['origin_mm']:.4g} mm "
               f"and in direction cosines by up to {d['direction']:.4g} (same shape and spacing): the label is "
               "used on the image's grid, as nnU-Net does")
    if (image_file, label_file) not in _warned_geometry:
        _warned_geometry.add((image_file, label_file))
        log.warning("%s", warning)
    return warning


def _fmt_spacing(s) -> str:
    return " x ".join(f"{float(v):.6g}" for v in s)


def check_nifti_pair(image_file: str, label_file: str, ndim: int = 3) -> None:
    """Header-only: both files readable ``ndim``-D NIfTI volumes on the same grid (shape, affine)."""
    hi, hl = read_nifti_header(image_file), read_nifti_header(label_file)
    for f, h in ((image_file, hi), (label_file, hl)):
        if len(h.shape) != ndim:
            raise DatasetError(f"{f}: expected a {ndim}-D volume, got shape {h.shape}")
    check_same_geometry(image_file, label_file, hi.shape, hl.shape, hi.affine, hl.affine)


def check_image_pair(image_file: str, label_file: str, image_modes: Sequence[str], label_modes: Sequence[str]) -> None:
    """Header-only (Pillow): both files readable, in an accepted mode, and of the same size."""
    si, mi = read_image_header(image_file)
    sl, ml = read_image_header(label_file)
    check_image_mode(image_file, mi, image_modes)
    if ml not in label_modes:
        raise DatasetError(f"{label_file}: label mode {ml!r} is not a single-channel label map")
    if si != sl:
        raise DatasetError(f"image {image_file} is {si[0]}x{si[1]} but its label {label_file} is {sl[0]}x{sl[1]}")


#: Pillow modes of 2-D colour images, read as RGB (the GlaS/demo loaders convert with ``to_rgb``);
#: greyscale modes are refused, in training and in prediction alike
COLOUR_MODES = ("RGB", "RGBA", "P")


def check_image_mode(path: str | Path, mode: str, modes: Sequence[str], what: str = "image") -> None:
    if mode not in modes:
        raise DatasetError(f"{path}: unsupported {what} mode {mode!r} (accepted: {', '.join(modes)})")


def count_nonfinite(x: Any) -> int:
    """NaN and +-inf entries of an array or tensor (0 for integer types)."""
    if isinstance(x, torch.Tensor):
        return int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
    a = np.asarray(x)
    return int(a.size - np.count_nonzero(np.isfinite(a))) if a.dtype.kind in "fc" else 0


def nonfinite_problem(name: str, x: Any) -> str | None:
    """``"<file>: N of M voxels are NaN or infinite"``, or None when every voxel is finite."""
    n = count_nonfinite(x)
    if not n:
        return None
    return (f"{name}: {n} of {np.prod(x.shape)} voxels are NaN or infinite; "
            "fix or remove this file (a network cannot learn from them)")


def check_label_values(name: str, values: Iterable[float], allowed: Iterable[float],
                       fixups: Mapping[float, float] | None = None, what: str = "label") -> list[float]:
    """``values`` (the distinct values of a label file, read in its own data type) must be exact
    integers in ``allowed``, after ``fixups`` (known defects, e.g. ``{421: 420}``; applied to exact
    matches only, so ``421.5`` is not ``421``). Returns the values after the fix-ups."""
    allowed = sorted(float(v) for v in allowed)
    fixups = {float(k): float(v) for k, v in (fixups or {}).items()}
    values = [float(v) for v in values]
    fractional = sorted(v for v in values if not v.is_integer())
    if fractional:
        raise DatasetError(
            f"{name}: {what} values must be integers from {_fmt(allowed)}; found {_fmt(fractional)} "
            "(a label map resampled with interpolation, or not a label map?)"
        )
    fixed = [fixups.get(v, v) for v in values]
    unexpected = sorted({v for v in fixed if v not in allowed})
    if unexpected:
        raise DatasetError(
            f"{name}: unexpected {what} values {_fmt(unexpected)}; allowed are {_fmt(allowed)}"
            + (f" (plus {_fmt(fixups)} fixed automatically)" if fixups else "")
        )
    return fixed


#: what a label without foreground holds (:func:`foreground_note`)
NO_FOREGROUND = ("all background", "only the ignore label (no voxel is annotated)",
                 "only background and the ignore label")


def foreground_note(values: Any, ignore: float | None = None) -> str | None:
    """None when the label ``values`` include a foreground class; else which of :data:`NO_FOREGROUND`
    the label holds (a voxel of the ignore label is not annotated, so it is not background either)."""
    present = {float(v) for v in values}
    if any(v > 0 and v != ignore for v in present):
        return None
    if ignore is None or float(ignore) not in present:
        return NO_FOREGROUND[0]
    return NO_FOREGROUND[1] if present == {float(ignore)} else NO_FOREGROUND[2]


def check_foreground(labels: Mapping[str, Mapping[str, tuple]]) -> None:
    """``labels``: split -> case id -> (label file, has foreground[, :func:`foreground_note`]). Warns
    naming every case whose label has no foreground; raises when the training split has none at all."""
    for split, cases in labels.items():
        for cid, (name, has_fg, *note) in cases.items():
            if not has_fg:
                what = (note[0] if note else None) or NO_FOREGROUND[0]
                log.warning("case %s (%s split): the label %s %s %s", cid, split, name or "?",
                            "is" if what == NO_FOREGROUND[0] else "holds", what)
    train = labels.get("train", {})
    if train and not any(fg for _, fg, *_ in train.values()):
        raise DatasetError(
            f"none of the {len(train)} training labels has any foreground (e.g. {next(iter(train.values()))[0]}); "
            "check that the label files belong to the images and hold the dataset's label values"
        )


def _fmt(values: Any) -> str:
    if isinstance(values, Mapping):
        return "{" + ", ".join(f"{_fmt_num(k)}->{_fmt_num(v)}" for k, v in values.items()) + "}"
    return "[" + ", ".join(_fmt_num(v) for v in values) + "]"


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def expected_layout_error(dataset: str, root: Path | None, layout: str, problem: str) -> DatasetError:
    """One clear error for a missing/empty dataset folder, showing the expected layout."""
    return DatasetError(
        f"{dataset}: {problem} (dataset.root={root}).\n"
        f"Point dataset.root at the folder you downloaded; the expected layout is:\n{layout}"
    )


def describe_values(values: Sequence[float]) -> str:
    return _fmt(values)


# ------------------------------------------------------------------ nnU-Net / Decathlon layouts
#: Pillow modes of a single-channel 2-D file (an nnU-Net channel file or a label map)
GRAY_MODES = ("1", "L", "P", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def _same_grid(ref: str, f: str, shape0, shape, affine0=None, affine=None) -> None:
    if tuple(shape0) != tuple(shape):
        raise DatasetError(
            f"{f} has shape {tuple(shape)} but {ref} (channel 0 of the same case) has shape {tuple(shape0)}; "
            "every channel must be on one grid"
        )
    if affine0 is not None and not np.allclose(affine0, affine, atol=1e-3, rtol=1e-4):
        raise DatasetError(
            f"{f} and {ref} (channel 0 of the same case) have different affines (voxel-to-world matrices):\n"
            f"{np.round(affine, 4)}\nvs\n{np.round(affine0, 4)}"
        )


#: Pillow modes of a 2-D file that holds several channels, and how many (nnU-Net's natural-image
#: convention: one ``<case>_0000.png`` in RGB for ``channel_names`` R, G, B)
MULTICHANNEL_MODES = {"RGB": 3}


def image_file_channels(path: str | Path) -> tuple[int, str]:
    """``(channels, PIL mode)`` of a 2-D channel file from its header: 1 for a grayscale mode, 3 for
    RGB; any other mode is a :class:`DatasetError` naming the file."""
    _, mode = read_image_header(path)
    if mode in GRAY_MODES:
        return 1, mode
    if mode in MULTICHANNEL_MODES:
        return MULTICHANNEL_MODES[mode], mode
    raise DatasetError(f"{path}: image mode {mode!r} is neither single-channel (grayscale) nor RGB; convert it "
                       "(e.g. with Pillow: Image.open(f).convert('RGB'))")


def check_file_channels(files: Sequence[str], n_channels: int, names: Sequence[str] | None = None) -> None:
    """The 2-D files of one case must hold ``n_channels`` channels together: one grayscale file per
    channel, or a single multi-channel (RGB) file holding them all. The error names the file."""
    found = [(f, *image_file_channels(f)) for f in files]
    listed = f"{n_channels} channel(s)" + (f" ({', '.join(names)})" if names else "")
    for f, k, mode in found:
        if k > 1 and (len(files) > 1 or k != n_channels):
            alone = "" if len(files) == 1 else f", beside {len(files) - 1} other channel file(s) of its case"
            raise DatasetError(
                f"{f}: a {k}-channel ({mode}) image{alone}, but channel_names lists {listed}; a case is either "
                "one grayscale file per channel (<case>_0000, <case>_0001, ...) or one RGB file for three channels"
            )


def check_channel_files(images: Sequence[str] | str, label: str | None, spatial_dims: int,
                        n_channels: int | None = None, names: Sequence[str] | None = None) -> None:
    """Header-only check of an nnU-Net case: every file readable, all channels on the grid of
    channel 0 (shape, and affine for NIfTI), and the label (if given) on that grid too (spacing;
    origin and direction may differ, with a warning: :func:`check_same_geometry`). 3-D: one
    single-channel volume per channel; 2-D: one grayscale file per channel or, with
    ``n_channels`` = 3, a single RGB file (:func:`check_file_channels`)."""
    images = [images] if isinstance(images, (str, Path)) else list(images)
    if spatial_dims == 3:
        heads = {f: read_nifti_header(f) for f in [*images, *([label] if label else [])]}
        for f, h in heads.items():
            if len(h.shape) != 3 or h.voxel_channels != 1:
                raise DatasetError(f"{f}: expected a single-channel 3-D volume, got shape {h.shape}")
        h0 = heads[images[0]]
        for f in images[1:]:
            _same_grid(images[0], f, h0.shape, heads[f].shape, h0.affine, heads[f].affine)
        if label:
            check_same_geometry(images[0], label, h0.shape, heads[label].shape, h0.affine, heads[label].affine)
        return
    check_file_channels(images, len(images) if n_channels is None else n_channels, names)
    sizes = {f: read_image_header(f)[0] for f in images}
    if label:
        sizes[label], mode = read_image_header(label)
        if mode not in GRAY_MODES:
            raise DatasetError(f"{label}: a label must be single-channel (grayscale), this is mode {mode!r}")
    for f in images[1:]:
        _same_grid(images[0], f, sizes[images[0]], sizes[f])
    if label:
        check_same_geometry(images[0], label, sizes[images[0]], sizes[label])


def check_multimodal_pair(image: str, label: str, n_channels: int) -> None:
    """Header-only check of a Decathlon case: the image a 3-D volume (1 modality) or a 4-D one with the
    ``n_channels`` modalities in its last axis, the label a 3-D volume on the same grid."""
    hi, hl = read_nifti_header(image), read_nifti_header(label)
    shape = hi.shape
    if len(shape) == 4 and shape[3] == n_channels:
        spatial = shape[:3]
    elif len(shape) == 3 and n_channels == 1:
        spatial = shape
    else:
        want = "a 3-D volume" if n_channels == 1 else f"a 4-D volume with {n_channels} modalities in the last axis"
        raise DatasetError(
            f"{image}: expected {want} (dataset.json 'modality' lists {n_channels}), got shape {shape}"
        )
    if len(hl.shape) != 3:
        raise DatasetError(f"{label}: expected a 3-D label volume, got shape {hl.shape}")
    check_same_geometry(image, label, spatial, hl.shape, hi.affine, hl.affine)
