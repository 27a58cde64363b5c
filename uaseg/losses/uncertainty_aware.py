"""L = L_seg + lambda * scale * L_unc (paper eq. 3; lambda = 2, scale = 1000, m = 0.1)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .dynamics import head_inputs, measured_total, ramp, steered_uncertainty
from .ranking import masked_pairwise_ranking_loss, random_mask_subset
from .scores import get_score
from .segmentation import CrossEntropy
from .variants import PAIRINGS, VIEWS, WRONG_WEIGHTS, dice_weights, group_ids, grouped_ranking_loss

__all__ = ["UncertaintyAwareLoss", "uncertainty_aware_loss"]

SAMPLINGS = ("exact", "subsample")


class UncertaintyAwareLoss(nn.Module):
    """Segmentation loss plus the pairwise ranking term on the whole batch, flattened together.

    ``sampling="exact"`` uses every (wrong, correct) voxel pair via the O(n log n) identity;
    ``"subsample"`` is the paper's estimator (``n_wrong`` x ``n_correct`` random voxels per step).
    With ``lambda_ == 0`` or before ``start_epoch`` the ranking term is skipped entirely (no
    uncertainty, no argmax), so the baseline costs exactly the segmentation loss.

    ``score_temperature`` T ranks the score of softmax(z / T) (1: the paper): T > 1 softens the
    probabilities, so the ranking gradient does not vanish on confident voxels.

    Variants beyond the paper (``pairing``, ``hinge_power``, ``wrong_weight``, ``consistency``) are
    described in :mod:`uaseg.losses.variants`, the multi-class remedies (``warmup_epochs``,
    ``balance``, ``steer``) in :mod:`uaseg.losses.dynamics`; their defaults give the paper's objective.
    Under ``balance`` lambda is the target gradient ratio and ``scale`` is unused.

    ``forward(logits, target, epoch=None, view_logits=None, measure=False) -> (total, logs)``; logs
    hold detached scalars ``seg`` and ``rank`` (unscaled L_unc, 0 when off) and, only when the term is
    on, ``rank_weight`` (what multiplies L_unc in the total), ``rank_weighted`` (their product),
    ``n_wrong`` / ``n_correct`` (all non-ignored voxels, before any subsampling) and ``error_rate``
    (and ``consistency``, ``disagree_rate`` with a second view). ``epoch`` may be fractional (the
    warm-up rises per step); ``None`` means "no epoch gating". With ``measure=True`` (or ``balance``)
    and logits that carry gradients, logs also hold ``grad_ratio``: the weighted ranking term's
    gradient norm at the logits over the segmentation term's.
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
        score_temperature: float = 1.0,
        pairing: str = "batch",
        hinge_power: int = 1,
        wrong_weight: str = "uniform",
        consistency: float = 0.0,
        consistency_view: str = "flip",
        warmup_epochs: float = 0.0,
        balance: bool = False,
        steer: bool = False,
    ):
        super().__init__()
        if isinstance(balance, (int, float)) and not isinstance(balance, bool) and lambda_ > 0:
            # a checkpoint made while balance was the ratio (and lambda only switched the term on)
            lambda_, balance = float(balance), True
        for key, value, allowed in (("sampling", sampling, SAMPLINGS), ("pairing", pairing, PAIRINGS),
                                    ("wrong_weight", wrong_weight, WRONG_WEIGHTS),
                                    ("consistency_view", consistency_view, VIEWS), ("hinge_power", hinge_power, (1, 2))):
            if value not in allowed:
                raise ValueError(f"loss.{key} must be one of {allowed}, got {value!r}")
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
        if not score_temperature > 0:
            raise ValueError(f"loss.score_temperature must be > 0, got {score_temperature!r}")
        self.score_temperature = float(score_temperature)
        self.pairing, self.hinge_power, self.wrong_weight = pairing, int(hinge_power), wrong_weight
        self.consistency, self.consistency_view = float(consistency), consistency_view
        balance = False if balance is None else balance  # null: the paper's fixed weight
        if warmup_epochs < 0 or not isinstance(balance, bool):
            raise ValueError(f"loss.warmup_epochs must be >= 0 and loss.balance true or false (the ratio is "
                             f"loss.lambda), got {warmup_epochs}, {balance!r}")
        self.warmup_epochs = float(warmup_epochs)
        self.balance = balance
        self.steer = bool(steer)

    def ranking_active(self, epoch: float | None) -> bool:
        return self.lambda_ != 0 and (epoch is None or epoch >= self.start_epoch)

    def _measures(self, logits: Tensor, epoch: float | None, measure: bool) -> bool:
        """Whether this step needs the gradient ratio at the logits (logged, or what ``balance`` sets)."""
        return (self.ranking_active(epoch) and (measure or self.balance)
                and logits.requires_grad and torch.is_grad_enabled())

    def needs_view(self, epoch: int | None) -> bool:
        """Whether ``forward`` wants a second view's logits this epoch (see ``second_view_logits``)."""
        return self.consistency != 0 and self.ranking_active(epoch)

    def _rank(self, u: Tensor, wrong: Tensor, correct: Tensor, pred: Tensor, weight: Tensor | None) -> Tensor:
        groups, n_groups = group_ids(self.pairing, pred, self._num_classes)
        if groups is None:
            return masked_pairwise_ranking_loss(u, wrong, correct, self.margin, self.hinge_power, weight)
        return grouped_ranking_loss(u, wrong, correct, groups, n_groups, self.margin, self.hinge_power, weight)

    def forward(self, logits: Tensor, target: Tensor, epoch: float | None = None,
                view_logits: Tensor | None = None, measure: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        split = self._measures(logits, epoch, measure)
        x_seg, x = head_inputs(logits) if split else (logits, logits)  # one leaf per branch to measure
        seg = self.seg_loss(x_seg, target)
        logs: dict[str, Tensor] = {"seg": seg.detach()}
        if not self.ranking_active(epoch):
            logs["rank"] = torch.zeros((), device=seg.device)
            return seg, logs

        if target.ndim == logits.ndim:  # (B, 1, *spatial) -> (B, *spatial)
            target = target.squeeze(1)
        self._num_classes = logits.shape[1]
        u, pred = self._score_fn(x if self.score_temperature == 1 else x / self.score_temperature)
        u, target_img, target = u.reshape(-1), target, target.reshape(-1)
        with torch.no_grad():  # which voxels are wrong is not differentiated
            hit = pred.reshape(-1) == target
            valid = None if self.ignore_index is None else target != self.ignore_index
            wrong, correct = (~hit, hit) if valid is None else (valid & ~hit, valid & hit)
            n_w, n_c = wrong.sum(), correct.sum()
            if self.sampling == "subsample":
                wrong = random_mask_subset(wrong, self.n_wrong)
                correct = random_mask_subset(correct, self.n_correct)
            weight = (dice_weights(pred, target_img, self._num_classes, valid)
                      if self.wrong_weight == "dice" else None)
        if self.steer:
            u = steered_uncertainty(u, x, target_img, wrong)
        # Masks, not u[wrong] / u[correct]: no host sync. Empty W or C gives a graph-connected 0.
        rank = self._rank(u, wrong, correct, pred, weight)
        cons = None
        if view_logits is not None and self.consistency != 0:
            with torch.no_grad():
                disagree = (view_logits.argmax(dim=1) != pred).reshape(-1)
                agree = ~disagree if valid is None else valid & ~disagree
                disagree = disagree if valid is None else valid & disagree
            cons = self._rank(u, disagree, agree, pred, None)
            logs.update(consistency=cons.detach(), disagree_rate=disagree.float().mean().detach())
        mult = ramp(epoch, self.start_epoch, self.warmup_epochs)
        extra = None if cons is None else (self.consistency * self.scale) * cons
        if split:  # the loss head's gradient, computed here once, carries the ratio
            fixed = None if self.balance else self.lambda_ * self.scale * mult
            total, rank_weight, logs["grad_ratio"] = measured_total(logits, x_seg, x, seg, rank, fixed,
                                                                    self.lambda_ * mult, extra)
        else:
            rank_weight = self.lambda_ * self.scale * mult
            total = seg + rank_weight * rank
            total = total if extra is None else total + extra

        rank_weight = torch.as_tensor(rank_weight, dtype=torch.float32, device=seg.device).detach()
        logs.update(
            rank=rank.detach(),
            rank_weight=rank_weight,
            rank_weighted=(rank_weight * rank.detach()),
            n_wrong=n_w.detach(),
            n_correct=n_c.detach(),
            error_rate=(n_w / (n_w + n_c).clamp(min=1)).detach(),
        )
        return total, logs

    def extra_repr(self) -> str:
        return (f"lambda_={self.lambda_}, margin={self.margin}, scale={self.scale}, sampling={self.sampling!r}, "
                f"n_wrong={self.n_wrong}, n_correct={self.n_correct}, start_epoch={self.start_epoch}, "
                f"ignore_index={self.ignore_index}, score={self.score!r}, "
                f"score_temperature={self.score_temperature}, pairing={self.pairing!r}, "
                f"hinge_power={self.hinge_power}, wrong_weight={self.wrong_weight!r}, "
                f"consistency={self.consistency}, consistency_view={self.consistency_view!r}, "
                f"warmup_epochs={self.warmup_epochs}, balance={self.balance}, steer={self.steer}")


def uncertainty_aware_loss(**cfg: Any) -> UncertaintyAwareLoss:
    """Hydra ``_target_``: accepts the config key ``lambda`` (a Python keyword) as ``lambda_``."""
    if "lambda" in cfg:
        if "lambda_" in cfg:
            raise TypeError("give either 'lambda' or 'lambda_', not both")
        cfg["lambda_"] = cfg.pop("lambda")
    return UncertaintyAwareLoss(**cfg)
