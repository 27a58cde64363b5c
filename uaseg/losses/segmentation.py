"""Segmentation terms usable as ``seg_loss`` of the uncertainty-aware loss.

Both accept integer targets shaped (B, 1, *spatial) or (B, *spatial), and take class weights as
a plain list (what Hydra hands over), e.g. MM-WHS ``[1, 1, 1, 1, 1, 2, 1, 1]`` (Myo = class 5).
With ``ignore_index`` (nnU-Net's ignore label, which may equal the number of classes) voxels of that
label take no part: cross-entropy averages over the other voxels (torch's weighted mean), the Dice
term masks them out of its intersections and sums, and a batch of ignored voxels only gives 0 (not
torch's NaN), so a patch without annotation never stops training.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss as _MonaiDiceCE
from torch import Tensor, nn

__all__ = ["CrossEntropy", "DiceCE", "masked_cross_entropy"]


def _weight_tensor(weight: Sequence[float] | Tensor | None) -> Tensor | None:
    if weight is None:
        return None
    return torch.as_tensor([float(w) for w in weight], dtype=torch.float32)


def _squeeze_channel(logits: Tensor, target: Tensor) -> Tensor:
    if target.ndim == logits.ndim:  # (B, 1, *spatial)
        target = target.squeeze(1)
    return target.long()


def masked_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                         label_smoothing: float = 0.0) -> Tensor:
    """``F.cross_entropy(..., ignore_index=...)``'s weighted mean over the voxels not labelled
    ``ignore_index`` (sum of ``w[y] * loss`` over ``sum of w[y]``), but 0 -- still attached to the
    graph -- when every voxel is ignored (torch returns NaN there)."""
    per_voxel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                                label_smoothing=label_smoothing, reduction="none")
    valid = target != ignore_index
    if weight is None:
        denom = valid.sum()
    else:
        denom = torch.where(valid, weight[target.clamp(0, logits.shape[1] - 1)], 0.0).sum()
    return per_voxel.sum() / denom.clamp(min=torch.finfo(per_voxel.dtype).tiny)


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
        target = _squeeze_channel(logits, target)
        if self.ignore_index != -100:  # a batch may be all ignored: 0, not NaN
            return masked_cross_entropy(logits, target, w, self.ignore_index, self.label_smoothing)
        return F.cross_entropy(logits, target, weight=w, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)


class DiceCE(nn.Module):
    """``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, ...)`` with target-shape handling.

    With ``ignore_index`` the voxels of that label are masked out of both terms (module docstring):
    the Dice term is MONAI's ``DiceLoss`` on the softmax and the one-hot label, both zeroed there.
    """

    def __init__(self, weight: Sequence[float] | None = None, include_background: bool = True,
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0, ignore_index: int | None = None, **kwargs):
        super().__init__()
        self.loss = _MonaiDiceCE(to_onehot_y=True, softmax=True, include_background=include_background,
                                 weight=_weight_tensor(weight), lambda_dice=lambda_dice,
                                 lambda_ce=lambda_ce, **kwargs)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        if self.ignore_index is not None and self.loss.dice.reduction != "mean":
            raise ValueError("loss.seg_loss: ignore_index works with reduction 'mean' only")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.ndim == logits.ndim - 1:  # (B, *spatial) -> (B, 1, *spatial)
            target = target.unsqueeze(1)
        if self.ignore_index is None:
            return self.loss(logits, target.long())
        target = target.long()
        valid = target != self.ignore_index  # (B, 1, *spatial)
        k = logits.shape[1]
        onehot = F.one_hot(torch.where(valid, target, 0)[:, 0], k).movedim(-1, 1).to(logits.dtype)
        prob = logits.float().softmax(dim=1)
        dice = self.loss.dice
        saved = dice.to_onehot_y, dice.softmax
        try:  # the same DiceLoss (weights, smoothing, batch, jaccard...) on masked probabilities and labels
            dice.to_onehot_y, dice.softmax = False, False
            dice_term = dice(prob * valid, onehot * valid)
        finally:
            dice.to_onehot_y, dice.softmax = saved
        ce = self.loss.cross_entropy
        w = None if ce.weight is None else ce.weight.to(logits.dtype)
        ce_term = masked_cross_entropy(logits, target[:, 0], w, self.ignore_index, ce.label_smoothing)
        return self.loss.lambda_dice * dice_term + self.loss.lambda_ce * ce_term
