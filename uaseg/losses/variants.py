"""Beyond the paper's objective: where ranking pairs are formed, which wrong voxels weigh more, and a
second view whose disagreement the one-pass uncertainty learns to rank (all exact, O(n log n)).

* ``pairing``: ``batch`` (paper: every wrong voxel of the batch against every correct one), ``case``
  (pairs within each image: the term is the mean over images of each image's exact term; an image
  without a pair is left out) or ``class`` (pairs within each predicted class, likewise averaged).
* ``wrong_weight``: ``uniform`` (paper) or ``dice``: wrong voxel j of image b, predicted a and
  labelled c, weighs sum over its foreground classes of 1 / (|P| + |G|) of that class in that image --
  the first-order rise of the image's Dice when j is referred, so the ranking term favours the
  referrals that the Dice risk rewards (small structures).
* consistency: a second view of the batch (all spatial axes flipped and flipped back, or Gaussian noise
  on the image), run without gradient; voxels where the two views' argmax disagree are ranked above
  those where they agree, with the same exact term (Mehrtash et al. 2020 / Zenk et al. 2025 show that
  view disagreement flags failures; here the one pass learns to predict it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ranking import masked_pairwise_ranking_loss

PAIRINGS = ("batch", "case", "class")
WRONG_WEIGHTS = ("uniform", "dice")
VIEWS = ("flip", "noise")


def grouped_ranking_loss(u: Tensor, wrong: Tensor, correct: Tensor, groups: Tensor, n_groups: int,
                         margin: float, power: int, weight: Tensor | None) -> Tensor:
    """Mean over groups (with at least one pair) of each group's exact ranking term; ``groups``
    holds each voxel's group id in ``0..n_groups-1`` (flat, like ``u``)."""
    total = u.sum() * 0.0
    n_with_pairs = torch.zeros((), device=u.device)
    for g in range(n_groups):
        in_g = groups == g
        w_g, c_g = wrong & in_g, correct & in_g
        total = total + masked_pairwise_ranking_loss(u, w_g, c_g, margin, power, weight)
        n_with_pairs = n_with_pairs + ((w_g.sum() > 0) & (c_g.sum() > 0)).float()
    return total / n_with_pairs.clamp(min=1.0)


def group_ids(pairing: str, pred: Tensor, num_classes: int) -> tuple[Tensor | None, int]:
    """Flat group ids of every voxel of a ``(B, *spatial)`` prediction (None for ``batch``)."""
    if pairing == "batch":
        return None, 1
    if pairing == "case":
        b = pred.shape[0]
        return torch.arange(b, device=pred.device).repeat_interleave(pred[0].numel()), b
    return pred.reshape(-1), num_classes


def dice_weights(pred: Tensor, target: Tensor, num_classes: int, valid: Tensor | None = None) -> Tensor:
    """Per voxel (flat), the sum over its predicted and true foreground classes of 1 / (|P| + |G|)
    of that class in its image (see the module docstring); meaningful on wrong voxels."""
    b, k = pred.shape[0], num_classes
    img = torch.arange(b, device=pred.device).repeat_interleave(pred[0].numel())
    p, y = pred.reshape(-1), target.reshape(-1).clamp(0, k - 1)
    keep = torch.ones_like(p, dtype=torch.float64) if valid is None else valid.reshape(-1).double()
    den = torch.zeros(b * k, dtype=torch.float64, device=pred.device)
    den.scatter_add_(0, img * k + p, keep)
    den.scatter_add_(0, img * k + y, keep)
    inv = torch.where(den > 0, 1.0 / den.clamp(min=1.0), 0.0)
    return torch.where(p > 0, inv[img * k + p], 0.0) + torch.where(y > 0, inv[img * k + y], 0.0)


@torch.no_grad()
def second_view_logits(net, image: Tensor, view: str, noise: float = 0.05) -> Tensor:
    """Logits of a second view of ``image`` on the original voxel grid (no gradient)."""
    if view == "flip":
        axes = list(range(2, image.ndim))
        return torch.flip(net(torch.flip(image, axes)), axes)
    return net(image + noise * torch.randn_like(image))
