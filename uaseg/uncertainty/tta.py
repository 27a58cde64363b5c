"""Test-time augmentation by flips: the image flipped, segmented, and the output flipped back, which
maps every prediction exactly onto the original voxels (no interpolation)."""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
from torch import Tensor

from uaseg.errors import ConfigError


def flip_sets(spatial_dims: int, spec) -> list[tuple[int, ...]]:
    """The flips to average: ``"all"`` = every subset of the spatial axes (the identity included:
    4 in 2-D, 8 in 3-D), or an explicit list of axis lists such as ``[[], [0], [1]]``."""
    if spec == "all":
        axes = range(spatial_dims)
        return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]
    try:
        sets = [tuple(sorted({int(a) for a in s})) for s in spec]
    except TypeError as e:
        raise ConfigError(f"eval.tta_flips must be 'all' or a list of axis lists like [[], [0]], got {spec!r}") from e
    if not sets or any(a < 0 or a >= spatial_dims for s in sets for a in s):
        raise ConfigError(f"eval.tta_flips={spec!r}: axes must lie in 0..{spatial_dims - 1}, at least one set")
    return sets


def flip(x: Tensor, axes: Sequence[int]) -> Tensor:
    """Flip the spatial ``axes`` of a ``(B, C, *spatial)`` tensor."""
    return torch.flip(x, dims=[2 + a for a in axes]) if axes else x


def flipped_probabilities(segment: Callable[[Tensor], Tensor], image: Tensor, flips: Sequence[tuple[int, ...]]):
    """Yield the softmax of ``segment`` (image -> logits) on each flipped image, flipped back."""
    for axes in flips:
        logits = segment(flip(image, axes))
        yield flip(logits.float().softmax(dim=1), axes)
