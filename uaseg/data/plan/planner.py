"""nnU-Net v2's planning rules (``ExperimentPlanner``), simplified where uaseg's network is fixed.

* :func:`target_spacing` -- ``determine_fullres_target_spacing``: the median spacing, except on strongly
  anisotropic data (coarsest median spacing > 3 x every other axis's and its median size x 3 < every
  other axis's), where the coarse axis takes the 10th percentile of its spacings (never finer than the
  other axes); a non-square plane (0.5 x 1.2 x 2 mm) is compared with its coarser in-plane axis.
* :func:`plan_patch` -- ``get_plans_for_configuration``: start from a patch with the spacing's aspect
  ratio (256³ voxels in 3-D, 2048² in 2-D), clip it to the median shape, round every axis up to a
  multiple of the network's total stride and down to its cap. Differences: the network is uaseg's
  (``model.net.strides``, the same downsampling on every axis, so every axis is a multiple of the
  total stride where nnU-Net adapts the pooling per axis), and the budget is a per-axis voxel cap
  (``dataset.max_patch_size_*``, its product the voxel budget) where nnU-Net shrinks the patch until
  its GPU-memory estimate fits; a cap below the stride is refused, as no side could meet it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from uaseg.errors import ConfigError

from .resample import ANISO_THRESHOLD

#: patch sides when the network's strides are unknown (every conf/model: at most 4 downsamplings)
DEFAULT_STRIDE = 16


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(target spacing, anisotropic?)`` from per-case spacings and (cropped) shapes, ``(cases, 3)``."""
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[i] for i in others)
    aniso_voxels = size[worst] * ANISO_THRESHOLD < min(size[i] for i in others)
    if not (aniso_spacing and aniso_voxels):
        return target, False
    coarse = float(np.percentile(spacings[:, worst], 10))
    finest_allowed = max(target[i] for i in others)
    if coarse < finest_allowed:
        coarse = max(finest_allowed, coarse) + 1e-5
    target = target.copy()
    target[worst] = coarse
    return target, True


def total_stride(strides: Any, dims: int) -> list[int]:
    """Per axis, the product of the network's strides (``model.net.strides``: ints or per-axis lists)."""
    if strides is None:
        return [DEFAULT_STRIDE] * dims
    total = [1] * dims
    for s in strides:
        per = list(s) if isinstance(s, (list, tuple)) else [s] * dims
        total = [t * int(p) for t, p in zip(total, per)]
    return total


def plan_patch(spacing: Sequence[float], median_shape: Sequence[float], stride: Sequence[int],
               cap: Sequence[int]) -> list[int]:
    """The training patch (module docstring); ``cap``: per-axis maximum, its product the voxel budget
    (met as every side is at most its cap). A cap below the stride is refused: no side can be under
    the stride, so the patch would exceed both the cap and, possibly, the budget."""
    dims = len(median_shape)
    if any(int(c) < s for c, s in zip(cap, stride)):
        key, show = f"dataset.max_patch_size_{dims}d", lambda v: "[" + ",".join(str(int(x)) for x in v) + "]"
        fit = [max(int(c), s) for c, s in zip(cap, stride)]
        raise ConfigError(f"{key}={show(cap)}: each entry must be at least the network's total stride {show(stride)} "
                          f"(every patch side is a multiple of it); e.g. {key}={show(fit)}")
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    start = 256 ** 3 if dims == 3 else 2048 ** 2
    patch = np.minimum([round(v) for v in inv * (start / np.prod(inv)) ** (1 / dims)], median_shape)
    patch = [max(s, int(math.ceil(round(float(p), 6) / s)) * s) for p, s in zip(patch, stride)]
    return [int(min(p, int(c) // s * s)) for p, s, c in zip(patch, stride, cap)]
