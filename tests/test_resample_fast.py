"""The fast nnU-Net resampling (issue 28) against the implementation it replaced, restated below: labels
bit for bit, images to float32 rounding (the transform stores float32), on random volumes -- isotropic
(one spline over the volume) and anisotropic (slice by slice, then nearest along the coarse axis), up
and down, with zoom factors whose label interpolation lands exactly on 0.5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from uaseg.data.resample import ResampleToSpacingd, new_shape, resample_case, resize, resize_label, separate_axis


# ----------------------------------------------------------------- the previous implementation, restated
def old_resize(x, shape, order):
    x = np.asarray(x, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if x.shape == shape:
        return x.copy()
    out = ndimage.zoom(x, [n / o for n, o in zip(shape, x.shape)], order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, x.min(), x.max(), out=out)
    return out


def old_resize_label(x, shape, order):
    if order == 0:
        return old_resize(x, shape, 0)
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.float64)
    for c in np.unique(x):
        if c != 0:
            out[old_resize((x == c).astype(np.float64), shape, order) >= 0.5] = c
    return out


def old_resample_case(arr, spacing, target, is_label):
    arr = np.asarray(arr, dtype=np.float64)
    shape, out_shape = arr.shape[1:], new_shape(arr.shape[1:], spacing, target)
    if list(shape) == out_shape:
        return arr.copy()
    order, fn = (1, old_resize_label) if is_label else (3, old_resize)
    axis = separate_axis(spacing, target) if arr.ndim == 4 else None
    if axis is None:
        return np.stack([fn(c, out_shape, order) for c in arr])
    in_plane = [n for i, n in enumerate(out_shape) if i != axis]
    n_in, n_out = shape[axis], out_shape[axis]
    x = (n_in / n_out) * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
    nearest = np.clip(np.floor(x + 0.5), 0, n_in - 1).astype(np.intp)
    out = []
    for c in arr:
        slices = np.stack([fn(s, in_plane, order) for s in np.moveaxis(c, axis, 0)], axis=axis)
        out.append(np.take(slices, nearest, axis=axis) if n_in != n_out else slices)
    return np.stack(out)


# ----------------------------------------------------------------------------------------- volumes
def _volume(rng, shape, channels=1):
    img = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 1.5) * 800 + 40 for _ in range(channels)])
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 2)
    lab = np.digitize(smooth, np.quantile(smooth, [0.5, 0.75, 0.9]))  # blobs of 3 classes on background
    lab[rng.random(shape) < 0.02] = 4  # and scattered single voxels: borders everywhere
    return img, lab[None].astype(np.float64)


CASES = [  # (shape, spacing, target): isotropic up / down / mixed, anisotropic (either axis coarse), 2D
    ((20, 20, 20), (1.0, 1.0, 1.0), (0.8, 0.8, 0.8)),  # x1.25: taps at exactly 0.5
    ((23, 17, 19), (1.0, 1.2, 0.9), (1.3, 0.7, 0.9)),  # down, up, kept
    ((16, 18, 14), (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),  # x0.5
    ((30, 28, 6), (0.7, 0.7, 5.0), (0.8, 0.8, 3.1)),  # the default bench, small: coarse z
    ((7, 26, 25), (4.0, 0.9, 1.1), (3.0, 1.0, 1.0)),  # coarse first axis
    ((24, 22, 5), (1.0, 1.0, 5.0), (0.8, 1.0, 5.0)),  # anisotropic, coarse axis kept
    ((33, 29), (1.0, 1.0), (0.75, 1.4)),  # 2D
]


@pytest.mark.parametrize("shape,spacing,target", CASES, ids=[str(c[0]) for c in CASES])
def test_fast_resampling_matches_the_previous_implementation(shape, spacing, target):
    rng = np.random.default_rng(sum(shape))
    img, lab = _volume(rng, shape, channels=2)
    new_img = resample_case(img, spacing, target, is_label=False)
    old_img = old_resample_case(img, spacing, target, is_label=False)
    assert new_img.shape == old_img.shape and new_img.dtype == np.float64
    np.testing.assert_allclose(new_img, old_img, rtol=1e-12, atol=1e-9)
    a, b = new_img.astype(np.float32), old_img.astype(np.float32)
    assert np.all(np.abs(a - b) <= np.spacing(np.abs(b))), "more than one float32 ulp apart"
    new_lab = resample_case(lab, spacing, target, is_label=True)
    old_lab = old_resample_case(lab, spacing, target, is_label=True)
    assert np.array_equal(new_lab, old_lab)
    assert set(np.unique(new_lab)) <= set(np.unique(lab))


def test_label_ties_at_one_half_are_decided_as_before():
    """x1.25 and x2.5: output voxels midway between two input voxels interpolate a two-class border to
    exactly 0.5 (or a rounding off it); the kept / dropped decision matches the previous code."""
    rng = np.random.default_rng(3)
    lab = (rng.random((12, 12, 12)) < 0.5).astype(np.float64)
    for shape in [(15, 15, 15), (30, 30, 12), (15, 30, 6)]:
        values = ndimage.zoom(lab, [n / o for n, o in zip(shape, lab.shape)], order=1, mode="nearest", grid_mode=True)
        assert np.any(values == 0.5) or np.any(np.abs(values - 0.5) < 1e-12)
        assert np.array_equal(resize_label(lab, shape, 1), old_resize_label(lab, shape, 1))


def test_order_three_resize_against_scipy_zoom_and_per_slice():
    rng = np.random.default_rng(4)
    vol = rng.normal(size=(9, 11, 7))
    np.testing.assert_allclose(resize(vol, (13, 8, 7), 3), old_resize(vol, (13, 8, 7), 3), rtol=0, atol=1e-12)
    per_slice = np.stack([old_resize(s, (13, 8), 3) for s in np.moveaxis(vol, 2, 0)], axis=2)
    np.testing.assert_allclose(resize(vol, (13, 8, 7), 3, batch_axis=2), per_slice, rtol=0, atol=1e-12)
    assert np.array_equal(resize(vol, vol.shape, 3), vol)


def test_transform_outputs_float32_as_before():
    rng = np.random.default_rng(5)
    img, lab = _volume(rng, (20, 18, 16))
    affine = torch.diag(torch.tensor([1.0, 1.1, 0.9, 1.0], dtype=torch.float64))
    data = {"image": MetaTensor(torch.as_tensor(img, dtype=torch.float32), affine=affine),
            "label": MetaTensor(torch.as_tensor(lab, dtype=torch.float32), affine=affine)}
    out = ResampleToSpacingd(keys=["image", "label"], pixdim=[0.8, 0.8, 0.8])(data)
    old_img = old_resample_case(img.astype(np.float32), [1.0, 1.1, 0.9], [0.8] * 3, False).astype(np.float32)
    old_lab = old_resample_case(lab, [1.0, 1.1, 0.9], [0.8] * 3, True).astype(np.float32)
    got = out["image"].numpy()
    assert got.dtype == np.float32 and np.all(np.abs(got - old_img) <= np.spacing(np.abs(old_img)))
    assert np.array_equal(out["label"].numpy(), old_lab)
