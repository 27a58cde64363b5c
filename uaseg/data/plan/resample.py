"""nnU-Net's preprocessing geometry as MONAI transforms: crop to the non-zero region and resample to the
target spacing the way nnU-Net v2 does (``preprocessing/resampling/default_resampling.py``).

Resampling (:func:`resample_case`), per channel, written with ``scipy.ndimage``:

* images: third-order spline (``skimage.transform.resize(order=3, mode="edge", anti_aliasing=False)``,
  output clipped to the input's range, as skimage does);
* labels: one class at a time, the class mask resized with order 1 and kept where >= 0.5;
* anisotropic data (largest / smallest spacing > ``ANISO_THRESHOLD``, of the case or of the target,
  with exactly one coarsest axis): every slice is resized in plane as above, then the coarse axis
  with order 0 (nearest; ``map_coordinates`` on nnU-Net's coordinate map), images and labels alike.

The values are ``scipy.ndimage.zoom``'s, computed with less work (issue 28; a 160^3 volume went from
4x MONAI's ``Spacingd`` to below it): the image spline one axis at a time (equal up to float64
rounding), a label mask interpolated only where its taps straddle a class border (bit for bit).

:class:`ResampleToSpacingd` records what it did, so ``Invertd`` maps predictions back (order 1, or
nearest for label maps) -- MONAI's ``Spacingd`` resamples the whole volume bilinearly instead.
"""

from __future__ import annotations

import functools
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from scipy import ndimage, sparse

#: nnU-Net's ANISO_THRESHOLD: spacing ratios above it make an axis "out of plane"
ANISO_THRESHOLD = 3.0


def nonzero(x: torch.Tensor) -> torch.Tensor:
    """``select_fn`` of ``CropForegroundd``: nnU-Net crops to the voxels non-zero in any channel (an
    all-zero image is kept whole)."""
    mask = x != 0
    return mask if bool(mask.any()) else torch.ones_like(mask)


def resize(x: np.ndarray, shape: Sequence[int], order: int, batch_axis: int | None = None) -> np.ndarray:
    """``skimage.transform.resize(x, shape, order, mode="edge", anti_aliasing=False)``: grid-mode zoom
    (voxel edges map onto voxel edges), clipped to the input range for order > 0. With ``batch_axis``
    (its size kept) every slice across it is resized, and clipped, on its own."""
    x = np.asarray(x, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if order == 3:
        return _spline_resize(x, shape, batch_axis)
    if batch_axis is not None:
        keep = [n for i, n in enumerate(shape) if i != batch_axis]
        return np.stack([resize(s, keep, order) for s in np.moveaxis(x, batch_axis, 0)], axis=batch_axis)
    if x.shape == shape:
        return x.copy()
    out = ndimage.zoom(x, [n / o for n, o in zip(shape, x.shape)], order=order, mode="nearest", grid_mode=True)
    assert out.shape == shape, (out.shape, shape)
    if order > 0:
        np.clip(out, x.min(), x.max(), out=out)
    return out


#: ``scipy.ndimage.zoom``'s prefilter pads this many voxels (mode "edge") before its "nearest" spline filter
_NPAD = 12


def _axes(x: np.ndarray, shape: tuple, batch_axis: int | None) -> list[int]:
    return [a for a in range(x.ndim) if a != batch_axis and x.shape[a] != shape[a]]


def _coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinate of each output voxel centre along one axis, as ``zoom(grid_mode=True)`` computes it."""
    zoom = np.divide(np.float64(n_in), np.float64(n_out))
    return (np.arange(n_out, dtype=np.float64) + 0.5) * zoom - 0.5


def _spline_resize(x: np.ndarray, shape: tuple, batch_axis: int | None) -> np.ndarray:
    """Order-3 ``resize``: ``zoom``'s cubic B-spline -- the same prefilter on the same padding -- applied
    one axis at a time (the prefilter and the interpolation along different axes commute): 4 taps per
    output voxel and axis instead of ``zoom``'s 4**ndim per voxel, the same value up to float64
    rounding. An axis whose size is kept is left alone (the spline at its knots is the samples)."""
    axes = _axes(x, shape, batch_axis)
    if not axes:
        return x.copy()
    rest = [a for a in range(x.ndim) if a not in axes]
    y = np.ascontiguousarray(np.moveaxis(x, axes + rest, range(x.ndim)))  # resized axes first
    kept = y.shape[len(axes):]
    out = [shape[a] for a in axes]
    z = _resize_leading(y.reshape(*y.shape[:len(axes)], -1), out).reshape(*out, *kept)
    z = np.ascontiguousarray(np.moveaxis(z, range(x.ndim), axes + rest))
    other = tuple(a for a in range(x.ndim) if a != batch_axis)
    keep = batch_axis is not None
    return np.clip(z, x.min(axis=other, keepdims=keep), x.max(axis=other, keepdims=keep), out=z)


def _resize_leading(y: np.ndarray, out: list[int]) -> np.ndarray:
    """``y`` (n_0, ..., n_k-1, B) resized to (*out, B) along its first k axes: the first on the whole
    array, the others slab by slab (each slab stays in cache; a lone last axis goes through a transpose)."""
    z = _spline_axis0(y, out[0])
    if len(out) == 1:
        return z
    if len(out) == 2 and z.shape[-1] == 1:
        return _spline_axis0(z[..., 0].T, out[1]).T[..., None]
    res = np.empty((*out, z.shape[-1]))
    for i in range(out[0]):
        res[i] = _resize_leading(z[i], out[1:])
    return res


def _spline_axis0(c: np.ndarray, n_out: int) -> np.ndarray:
    """Along axis 0: ``zoom``'s edge padding and spline prefilter, then the cubic B-spline at its
    output coordinates, a sparse (n_out x padded) matrix with 4 weights a row."""
    matrix = _spline_matrix(c.shape[0], n_out)
    c = np.pad(c, [(_NPAD, _NPAD)] + [(0, 0)] * (c.ndim - 1), mode="edge")
    c = ndimage.spline_filter1d(c, 3, axis=0, output=np.float64, mode="nearest")
    return (matrix @ c.reshape(c.shape[0], -1)).reshape(n_out, *c.shape[1:])


@functools.lru_cache(maxsize=32)
def _spline_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """Cubic B-spline weights (n_out x n_in + 2 * padding): row j holds the 4 taps of output voxel j."""
    cc = _coordinates(n_in, n_out) + _NPAD
    f = np.floor(cc)
    t, first = cc - f, f.astype(np.intp) - 1
    w = np.stack([(1 - t) ** 3, (3 * t - 6) * t * t + 4, ((-3 * t + 3) * t + 3) * t + 1, t ** 3], axis=1) / 6
    cols = (first[:, None] + np.arange(4)).ravel()
    return sparse.csr_matrix((w.ravel(), (np.repeat(np.arange(n_out), 4), cols)), shape=(n_out, n_in + 2 * _NPAD))


def resize_label(x: np.ndarray, shape: Sequence[int], order: int, batch_axis: int | None = None) -> np.ndarray:
    """nnU-Net's ``resize_segmentation``: each class mask resized with ``order``, kept where >= 0.5.

    Order 1, exactly as ``resize`` of each mask but without resizing it all: an output voxel whose
    interpolation taps are all in (all out of) the class is in (out of) it; only the voxels whose taps
    straddle a class border are interpolated, by ``map_coordinates`` at ``zoom``'s coordinates (the same
    arithmetic, so the same values bit for bit: a voxel at exactly 0.5 stays where it was)."""
    x = np.asarray(x, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if order != 1:
        return resize(x, shape, order, batch_axis)
    axes = _axes(x, shape, batch_axis)
    if not axes:
        return x.copy()
    coords = {a: _coordinates(x.shape[a], shape[a]) for a in axes}
    taps = {a: (np.clip(np.floor(cc), 0, x.shape[a] - 1).astype(np.intp),) for a, cc in coords.items()}
    taps = {a: (i0, np.minimum(i0 + 1, x.shape[a] - 1)) for a, (i0,) in taps.items()}
    out = np.zeros(shape, dtype=np.float64)
    for c in np.unique(x):
        if c == 0:
            continue  # out starts as background
        mask = x == c
        inside, touched = mask, mask
        for a, (i0, i1) in taps.items():
            inside = np.take(inside, i0, axis=a) & np.take(inside, i1, axis=a)
            touched = np.take(touched, i0, axis=a) | np.take(touched, i1, axis=a)
        out[inside] = c
        border = np.nonzero(touched & ~inside)
        if border[0].size:
            at = [coords[a][i] if a in coords else i.astype(np.float64) for a, i in enumerate(border)]
            value = ndimage.map_coordinates(mask, at, output=np.float64, order=1, mode="nearest")
            out[tuple(i[value >= 0.5] for i in border)] = c
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
    # in plane, slice by slice; then nearest along the coarse axis: nnU-Net's map_coordinates(order=0,
    # mode="nearest") on the coordinate map picks, per output slice, input slice floor(x + 0.5) of
    # x = (in / out) (j + 0.5) - 0.5
    in_plane = [shape[axis] if i == axis else n for i, n in enumerate(out_shape)]
    n_in, n_out = shape[axis], out_shape[axis]
    x = (n_in / n_out) * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
    nearest = np.clip(np.floor(x + 0.5), 0, n_in - 1).astype(np.intp)
    out = []
    for c in arr:
        slices = fn(c, in_plane, order, batch_axis=axis)
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
