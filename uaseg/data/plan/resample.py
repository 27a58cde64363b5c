"""nnU-Net's preprocessing geometry as MONAI transforms: crop to the non-zero region and resample to the
target spacing the way nnU-Net v2 does (``preprocessing/resampling/default_resampling.py``).

Resampling (:func:`resample_case`), per channel, written with ``scipy.ndimage``:

* images: third-order spline (``skimage.transform.resize(order=3, mode="edge", anti_aliasing=False)``,
  output clipped to the input's range, as skimage does);
* labels: one class at a time, the class mask resized with order 1 and kept where >= 0.5;
* anisotropic data (largest / smallest spacing > ``ANISO_THRESHOLD``, of the case or of the target,
  with exactly one coarsest axis): every slice is resized in plane as above, then the coarse axis
  with order 0 (nearest; ``map_coordinates`` on nnU-Net's coordinate map), images and labels alike.

:class:`ResampleToSpacingd` records what it did, so ``Invertd`` maps predictions back (order 1, or
nearest for label maps) -- MONAI's ``Spacingd`` resamples the whole volume bilinearly instead.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from scipy import ndimage

#: nnU-Net's ANISO_THRESHOLD: spacing ratios above it make an axis "out of plane"
ANISO_THRESHOLD = 3.0


def nonzero(x: torch.Tensor) -> torch.Tensor:
    """``select_fn`` of ``CropForegroundd``: nnU-Net crops to the voxels non-zero in any channel (an
    all-zero image is kept whole)."""
    mask = x != 0
    return mask if bool(mask.any()) else torch.ones_like(mask)


def resize(x: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(x, shape, order, mode="edge", anti_aliasing=False)``: grid-mode zoom
    (voxel edges map onto voxel edges), clipped to the input range for order > 0."""
    x = np.asarray(x, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if x.shape == shape:
        return x.copy()
    out = ndimage.zoom(x, [n / o for n, o in zip(shape, x.shape)], order=order, mode="nearest", grid_mode=True)
    assert out.shape == shape, (out.shape, shape)
    if order > 0:
        np.clip(out, x.min(), x.max(), out=out)
    return out


def resize_label(x: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """nnU-Net's ``resize_segmentation``: each class mask resized with ``order``, kept where >= 0.5."""
    if order == 0:
        return resize(x, shape, 0)
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.float64)
    for c in np.unique(x):
        if c == 0:
            continue  # out starts as background
        out[resize((x == c).astype(np.float64), shape, order) >= 0.5] = c
    return out


def separate_axis(spacing: Sequence[float], target: Sequence[float]) -> int | None:
    """The axis nnU-Net resamples on its own (``determine_do_sep_z_and_axis``): the single coarsest
    axis of the case's spacing -- or of the target's -- when that spacing is anisotropic; else None."""
    for s in (np.asarray(spacing, float), np.asarray(target, float)):
        if s.max() / s.min() > ANISO_THRESHOLD:
            axes = np.flatnonzero(s.max() / s == 1)
            return int(axes[0]) if len(axes) == 1 else None
    return None


def new_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    """nnU-Net's ``compute_new_shape``: ``round(spacing / target * shape)`` (at least 1)."""
    return [max(1, int(round(s / t * n))) for n, s, t in zip(shape, spacing, target)]


def resample_case(arr: np.ndarray, spacing: Sequence[float], target: Sequence[float], is_label: bool) -> np.ndarray:
    """``(C, *spatial)`` resampled from ``spacing`` to ``target`` (module docstring); float64."""
    arr = np.asarray(arr, dtype=np.float64)
    shape, out_shape = arr.shape[1:], new_shape(arr.shape[1:], spacing, target)
    if list(shape) == out_shape:
        return arr.copy()
    order = 1 if is_label else 3
    fn = resize_label if is_label else resize
    axis = separate_axis(spacing, target) if arr.ndim == 4 else None
    if axis is None:
        return np.stack([fn(c, out_shape, order) for c in arr])
    in_plane = [n for i, n in enumerate(out_shape) if i != axis]
    # nearest along the coarse axis: nnU-Net's map_coordinates(order=0, mode="nearest") on the coordinate
    # map picks, per output slice, input slice floor(x + 0.5) of x = (in / out) (j + 0.5) - 0.5
    n_in, n_out = shape[axis], out_shape[axis]
    x = (n_in / n_out) * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
    nearest = np.clip(np.floor(x + 0.5), 0, n_in - 1).astype(np.intp)
    out = []
    for c in arr:
        slices = np.stack([fn(s, in_plane, order) for s in np.moveaxis(c, axis, 0)], axis=axis)
        out.append(np.take(slices, nearest, axis=axis) if n_in != n_out else slices)
    return np.stack(out)


def voxel_affine(affine: torch.Tensor, shape: Sequence[int], out_shape: Sequence[int]) -> torch.Tensor:
    """Affine of the resampled grid: output voxel ``j`` lies at input voxel ``(j + 0.5) * in/out - 0.5``."""
    n = len(shape)
    scale = torch.tensor([i / o for i, o in zip(shape, out_shape)], dtype=torch.float64)
    m = torch.eye(n + 1, dtype=torch.float64)
    m[:n, :n] = torch.diag(scale)
    m[:n, n] = 0.5 * scale - 0.5
    return torch.as_tensor(affine, dtype=torch.float64) @ m


class ResampleToSpacingd(MapTransform, InvertibleTransform):
    """Resample ``keys`` to ``pixdim`` as nnU-Net does (module docstring); ``label_keys`` are label
    maps. The spacing is that of the tensor's affine (after ``Orientationd``)."""

    def __init__(self, keys: Any, pixdim: Sequence[float], label_keys: Sequence[str] = ("label",),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.pixdim = [float(p) for p in pixdim]
        self.label_keys = tuple(label_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            affine = torch.as_tensor(img.affine, dtype=torch.float64)
            n = img.ndim - 1
            spacing = torch.linalg.norm(affine[:n, :n], dim=0).tolist()
            is_label = key in self.label_keys
            out = resample_case(img.detach().cpu().numpy(), spacing, self.pixdim, is_label)
            d[key] = self._wrap(img, out, voxel_affine(affine, img.shape[1:], out.shape[1:]))
            self.push_transform(d[key], orig_size=list(img.shape[1:]),
                                extra_info={"mode": "nearest" if is_label else "bilinear", "affine": affine})
        return d

    @staticmethod
    def _wrap(like: Any, arr: np.ndarray, affine: torch.Tensor) -> MetaTensor:
        meta = dict(like.meta) if isinstance(like, MetaTensor) else {}
        ops = list(like.applied_operations) if isinstance(like, MetaTensor) else []
        out = MetaTensor(torch.as_tensor(arr, dtype=like.dtype), meta=meta, applied_operations=ops)
        out.affine = affine
        return out

    def inverse(self, data: Mapping[Hashable, Any]) -> dict:
        """Back onto the grid before resampling: order 1, or nearest when Invertd asks for it."""
        d = dict(data)
        for key in self.key_iterator(d):
            t = self.pop_transform(d[key])
            order = 0 if t["extra_info"]["mode"] == "nearest" else 1
            arr = d[key].detach().cpu().numpy()
            back = np.stack([resize(c, t["orig_size"], order) for c in arr])
            d[key] = self._wrap(d[key], back, torch.as_tensor(t["extra_info"]["affine"], dtype=torch.float64))
        return d
