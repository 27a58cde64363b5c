"""Headers of input files, read without loading the whole image: NIfTI shape, spacing and affine, 2-D
image size and mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uaseg.errors import DatasetError, describe


@dataclass(frozen=True)
class NiftiHeader:
    shape: tuple[int, ...]
    affine: np.ndarray
    zooms: tuple[float, ...]
    #: channels per voxel of structured dtypes (RGB24: 3), else 1
    voxel_channels: int = 1


def load_nifti(path: str | Path):
    """``nibabel`` image (header read, voxels lazy); an unreadable file is a :class:`DatasetError`."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises several types for a bad/truncated header
        raise DatasetError(f"{path}: cannot read the NIfTI header ({describe(e)})") from e


def affine_problem(affine: Any, spatial_axes: int = 3) -> str | None:
    """What makes a voxel-to-world matrix unusable (NaN/infinite entries, an axis of zero spacing),
    or None. Such a header breaks orientation, resampling and the grid comparison of image and label."""
    a = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(a).all():
        return "its affine (voxel-to-world matrix) holds NaN or infinite values"
    n = min(spatial_axes, a.shape[0] - 1, a.shape[1] - 1)
    zero = [i for i in range(n) if not np.linalg.norm(a[:n, i]) > 0]
    if zero:
        return (f"its affine (voxel-to-world matrix) gives axis {', '.join(map(str, zero))} a zero voxel spacing "
                "(pixdim / sform column of zeros)")
    return None


def read_nifti_header(path: str | Path) -> NiftiHeader:
    """Shape, affine and spacing from the header only (voxels are not read); a header whose affine
    is unusable (:func:`affine_problem`) is a :class:`DatasetError` naming the file."""
    img = load_nifti(path)
    try:
        shape = tuple(int(s) for s in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms()[: len(shape)])
        names = img.get_data_dtype().names
        header = NiftiHeader(shape, np.asarray(img.affine, dtype=np.float64), zooms, len(names) if names else 1)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read the NIfTI header ({describe(e)})") from e
    problem = affine_problem(header.affine, len(shape))
    if problem:
        raise DatasetError(f"{path}: bad NIfTI header: {problem}; fix the header (e.g. with nibabel or 3D Slicer)")
    return header


def read_image_header(path: str | Path) -> tuple[tuple[int, int], str]:
    """``((width, height), PIL mode)`` of a 2-D image file, without decoding its pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except Exception as e:
        raise DatasetError(f"{path}: cannot read this image ({describe(e)})") from e
