"""Predictions back onto the grid of the file an image was read from (``monai.transforms.Invertd``).

Used by test-time export (:meth:`FileSegDataModule.invert_to_original`) and by prediction on new
files (:func:`uaseg.inference.segment_file`): undoes padding, resampling, reorientation (and crops).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd


def invert_to_file_grid(
    image: torch.Tensor, transforms: Compose, arrays: Mapping[str, torch.Tensor], nearest: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """``arrays`` (each ``(C, *spatial)`` on the grid of ``image``, the output of ``transforms``) on
    the grid of the file ``transforms`` read: nearest-neighbour for the keys in ``nearest`` (label
    maps), linear for the others (probabilities, uncertainty). An image that no recorded transform
    changed (arrays in memory) comes back unchanged. Float tensors on the CPU."""
    keys = list(arrays)
    if not (isinstance(image, MetaTensor) and image.applied_operations):
        return {k: torch.as_tensor(v).detach().float().cpu() for k, v in arrays.items()}
    nearest = set(nearest)
    inverter = Invertd(
        keys=keys, transform=transforms, orig_keys="image", nearest_interp=[k in nearest for k in keys], to_tensor=True
    )
    data = {"image": image, **{k: MetaTensor(torch.as_tensor(v).detach().float().cpu()) for k, v in arrays.items()}}
    out = inverter(data)
    return {k: torch.as_tensor(out[k]) for k in keys}
