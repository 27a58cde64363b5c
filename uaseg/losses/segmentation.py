"""Segmentation terms usable as ``seg_loss`` of the uncertainty-aware loss.

Both accept integer targets shaped (B, 1, *spatial) or (B, *spatial), and take class weights as
a plain list (what Hydra hands over), e.g. MM-WHS ``[1, 1, 1, 1, 1, 2, 1, 1]`` (Myo = class 5).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss as _MonaiDiceCE
from torch import Tensor, nn

__all__ = ["CrossEntropy", "DiceCE"]


def _weight_tensor(weight: Sequence[float] | Tensor | None) -> Tensor | None:
    if weight is None:
        return None
    return torch.as_tensor([float(w) for w in weight], dtype=torch.float32)


def _squeeze_channel(logits: Tensor, target: Tensor) -> Tensor:
    if target.ndim == logits.ndim:  # (B, 1, *spatial)
        target = target.squeeze(1)
    return target.long()


class CrossEntropy(nn.Module):
    """Thin wrapper over ``F.cross_entropy`` (mean over voxels, optional class weights)."""

    def __init__(self, weight: Sequence[float] | None = None, ignore_index: int | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", _weight_tensor(weight), persistent=False)
        self.ignore_index = -100 if ignore_index is None else int(ignore_index)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(logits.dtype)
        return F.cross_entropy(logits, _squeeze_channel(logits, target), weight=w,
                               ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)


class DiceCE(nn.Module):
    """``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, ...)`` with target-shape handling.

    MONAI's Dice+CE has no ignore_index, so none is offered here.
    """

    def __init__(self, weight: Sequence[float] | None = None, include_background: bool = True,
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0, **kwargs):
        super().__init__()
        self.loss = _MonaiDiceCE(to_onehot_y=True, softmax=True, include_background=include_background,
                                 weight=_weight_tensor(weight), lambda_dice=lambda_dice,
                                 lambda_ce=lambda_ce, **kwargs)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.ndim == logits.ndim - 1:  # (B, *spatial) -> (B, 1, *spatial)
            target = target.unsqueeze(1)
        return self.loss(logits, target.long())
