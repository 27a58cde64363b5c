"""L = L_seg + lambda * scale * L_unc (paper eq. 3; lambda = 2, scale = 1000, m = 0.1)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .ranking import masked_pairwise_ranking_loss, random_mask_subset
from .scores import get_score
from .segmentation import CrossEntropy

__all__ = ["UncertaintyAwareLoss", "uncertainty_aware_loss"]

SAMPLINGS = ("exact", "subsample")


class UncertaintyAwareLoss(nn.Module):
    """Segmentation loss plus the pairwise ranking term on the whole batch, flattened together.

    ``sampling="exact"`` uses every (wrong, correct) voxel pair via the O(n log n) identity;
    ``"subsample"`` is the paper's estimator (``n_wrong`` x ``n_correct`` random voxels per step).
    With ``lambda_ == 0`` or before ``start_epoch`` the ranking term is skipped entirely (no
    uncertainty, no argmax), so the baseline costs exactly the segmentation loss.

    ``forward(logits, target, epoch=None) -> (total, logs)``; logs hold detached scalars
    ``seg`` and ``rank`` (unscaled L_unc, 0 when off) and, only when the term is on,
    ``n_wrong`` / ``n_correct`` (all non-ignored voxels, before any subsampling) and ``error_rate``.
    ``epoch=None`` means "no epoch gating".
    """

    def __init__(
        self,
        seg_loss: nn.Module | Callable[[Tensor, Tensor], Tensor] | None = None,
        lambda_: float = 2.0,
        margin: float = 0.1,
        scale: float = 1000.0,
        sampling: str = "exact",
        n_wrong: int = 300,
        n_correct: int = 6600,
        start_epoch: int = 0,
        ignore_index: int | None = None,
        score: str = "max_softmax",
    ):
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.seg_loss = CrossEntropy(ignore_index=ignore_index) if seg_loss is None else seg_loss
        self.lambda_ = float(lambda_)
        self.margin = float(margin)
        self.scale = float(scale)
        self.sampling = sampling
        self.n_wrong = int(n_wrong)
        self.n_correct = int(n_correct)
        self.start_epoch = int(start_epoch)
        self.ignore_index = ignore_index
        self.score = score
        self._score_fn = get_score(score)

    def ranking_active(self, epoch: int | None) -> bool:
        return self.lambda_ != 0 and (epoch is None or epoch >= self.start_epoch)

    def forward(self, logits: Tensor, target: Tensor, epoch: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        seg = self.seg_loss(logits, target)
        logs: dict[str, Tensor] = {"seg": seg.detach()}
        if not self.ranking_active(epoch):
            logs["rank"] = torch.zeros((), device=seg.device)
            return seg, logs

        if target.ndim == logits.ndim:  # (B, 1, *spatial) -> (B, *spatial)
            target = target.squeeze(1)
        u, pred = self._score_fn(logits)
        u, target = u.reshape(-1), target.reshape(-1)
        with torch.no_grad():  # which voxels are wrong is not differentiated
            hit = pred.reshape(-1) == target
            if self.ignore_index is not None:
                valid = target != self.ignore_index
                wrong, correct = valid & ~hit, valid & hit
            else:
                wrong, correct = ~hit, hit
            n_w, n_c = wrong.sum(), correct.sum()
            if self.sampling == "subsample":
                wrong = random_mask_subset(wrong, self.n_wrong)
                correct = random_mask_subset(correct, self.n_correct)
        # Masks, not u[wrong] / u[correct]: no host sync. Empty W or C gives a graph-connected 0.
        rank = masked_pairwise_ranking_loss(u, wrong, correct, self.margin)
        total = seg + (self.lambda_ * self.scale) * rank

        logs.update(
            rank=rank.detach(),
            n_wrong=n_w.detach(),
            n_correct=n_c.detach(),
            error_rate=(n_w / (n_w + n_c).clamp(min=1)).detach(),
        )
        return total, logs

    def extra_repr(self) -> str:
        return (f"lambda_={self.lambda_}, margin={self.margin}, scale={self.scale}, sampling={self.sampling!r}, "
                f"n_wrong={self.n_wrong}, n_correct={self.n_correct}, start_epoch={self.start_epoch}, "
                f"ignore_index={self.ignore_index}, score={self.score!r}")


def uncertainty_aware_loss(**cfg: Any) -> UncertaintyAwareLoss:
    """Hydra ``_target_``: accepts the config key ``lambda`` (a Python keyword) as ``lambda_``."""
    if "lambda" in cfg:
        if "lambda_" in cfg:
            raise TypeError("give either 'lambda' or 'lambda_', not both")
        cfg["lambda_"] = cfg.pop("lambda")
    return UncertaintyAwareLoss(**cfg)
