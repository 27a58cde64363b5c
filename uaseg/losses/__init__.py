"""Losses for uncertainty-aware training (paper Sec. 2.3)."""

from .ranking import (
    brute_force_ranking_loss,
    masked_pairwise_ranking_loss,
    pairwise_ranking_loss,
    random_mask_subset,
    subsample_ranking_loss,
)
from .scores import SCORES, get_score, max_softmax_uncertainty, register_score
from .segmentation import CrossEntropy, DiceCE
from .uncertainty_aware import UncertaintyAwareLoss, uncertainty_aware_loss

__all__ = [
    "pairwise_ranking_loss",
    "subsample_ranking_loss",
    "masked_pairwise_ranking_loss",
    "random_mask_subset",
    "brute_force_ranking_loss",
    "SCORES",
    "get_score",
    "register_score",
    "max_softmax_uncertainty",
    "CrossEntropy",
    "DiceCE",
    "UncertaintyAwareLoss",
    "uncertainty_aware_loss",
]
