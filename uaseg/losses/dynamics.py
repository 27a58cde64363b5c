"""How strongly, and in which direction, the ranking term pushes the logits (multi-class study, issue 19).

With K > 2 classes the paper's term, weighted by a fixed lambda * 1000, dominates the segmentation
gradient at the logits by orders of magnitude, and raising a wrong voxel's u = 1 - max p only
spreads the predicted class's mass over all K - 1 others (d u / d z_i = p_a p_i for i != a): the
network learns to be unsure where it is wrong instead of being right. Three remedies, each off by
default (the paper's objective):

* ``warmup_epochs``: lambda rises linearly from 0 over that many epochs after ``start_epoch``
  (per step; the paper's hard switch from 0 to lambda was harmful in its Appendix D).
* ``balance``: the ranking term's weight is set every step so that its gradient norm at the logits
  is lambda times the segmentation term's (lambda IS the target ratio; ``scale`` is unused). The
  weight is a detached number (it scales, it is not trained) and is bounded (:func:`balanced_weight`):
  never above the paper's lambda * 1000, no logit's ranking gradient above PEAK (4) x lambda x the
  largest logit gradient of the segmentation term, and it fades linearly once L_unc falls below
  :data:`FADE_BELOW`. It is computed from logs of the norms, so it neither underflows to 0 nor
  overflows in float32.
* ``steer``: a wrong voxel's uncertainty keeps its value (so which pairs violate the margin is
  unchanged) but its gradient is that of log p_true. Descending the ranking term then raises the
  true class's probability on wrong voxels that violate the margin (cross-entropy re-weighted by
  ranking violations), while correct voxels are made more confident as in the paper. Nothing asks a
  wrong voxel to become more uncertain. Test-time u stays 1 - max p.

:func:`measured_total` also gives the logged ``grad_ratio``: the ranking term's gradient norm at the
logits over the segmentation term's, so a user sees when the term dominates. Where the ratio is
needed (logging steps, ``balance``) the loss head is differentiated once, branch by branch, and the
training backward reuses that gradient instead of running the head's backward again.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ramp(epoch: float | None, start_epoch: int, warmup_epochs: float) -> float:
    """Multiplier of lambda at (fractional) ``epoch``: 0 before ``start_epoch``, then a linear rise
    to 1 over ``warmup_epochs`` (a step from 0 to 1 when ``warmup_epochs`` is 0)."""
    if epoch is None:
        return 1.0
    if epoch < start_epoch:
        return 0.0
    if warmup_epochs <= 0:
        return 1.0
    return float(min(1.0, (epoch - start_epoch) / warmup_epochs))


def head_inputs(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Two leaves holding ``logits``' values (float32 at least), one for the segmentation term and
    one for the ranking terms, so one backward through the loss head yields each term's gradient
    at the logits (they share no node below the logits)."""
    x = logits.detach()
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return x.requires_grad_(), x.detach().requires_grad_()


class _PrecomputedGrad(torch.autograd.Function):
    """``value`` whose gradient at ``logits`` is ``grad`` (per unit of loss), computed already: the
    training backward carries it into the network without differentiating the loss head again."""

    @staticmethod
    def forward(ctx, logits: Tensor, value: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        ctx.dtype = logits.dtype
        return value.detach().clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out.to(grad.dtype)).to(ctx.dtype), None, None


#: the paper's multiplier of L_unc (Appendix C): under balance the weight never exceeds lambda * this
PAPER_SCALE = 1000.0
#: under balance the weight is multiplied by min(1, L_unc / FADE_BELOW): as the ranking is satisfied
#: the term fades out instead of putting the whole gradient budget on the last few violating voxels
FADE_BELOW = 1e-3
#: under balance no logit's ranking gradient exceeds PEAK x lambda x the largest logit gradient of the
#: segmentation term (a near-satisfied ranking would otherwise put the whole budget on a few voxels)
PEAK = 4.0


def _log_norms(g: Tensor) -> tuple[Tensor, Tensor]:
    """``(log ||g||, log max |g|)`` without float32 underflow: the norm is taken of ``g / max |g|``
    (squares of values below ~1e-19 are 0 in float32). ``-inf`` for an all-zero ``g``."""
    top = g.abs().amax()
    unit = torch.linalg.vector_norm(g / top.clamp(min=torch.finfo(g.dtype).tiny))
    return top.log() + unit.log(), top.log()


def balanced_weight(g_seg: Tensor, g_unit: Tensor, rank: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """``(weight of L_unc, the gradient ratio it gives)`` under balance (detached 0-d tensors), from the
    gradients at the logits of the segmentation term (``g_seg``) and of the unweighted ranking term
    (``g_unit``)::

        w = min(ratio * ||g_seg|| / ||g_unit||,          # the gradient-norm ratio asked for
                ratio * PEAK * max|g_seg| / max|g_unit|, # no logit pushed over PEAK x ratio x CE's largest
                ratio * PAPER_SCALE)                     # the paper's weight at this lambda
            * min(1, L_unc / FADE_BELOW)                 # fade-out as the ranking is satisfied

    computed in log space; 0 when the ranking term has no gradient (no violating pair), when the
    segmentation term has none at all (nothing to balance against) or when ``ratio`` is 0.
    """
    if ratio <= 0:
        zero = torch.zeros((), dtype=g_unit.dtype, device=g_unit.device)
        return zero, zero
    n_seg, top_seg = _log_norms(g_seg.detach())
    n_rank, top_rank = _log_norms(g_unit.detach())
    log_w = torch.minimum(n_seg - n_rank, top_seg - top_rank + math.log(PEAK))
    log_w = log_w.clamp(max=math.log(PAPER_SCALE)) + math.log(ratio)
    fade = (rank.detach() / FADE_BELOW).clamp(max=1.0)
    ok = torch.isfinite(n_rank) & torch.isfinite(log_w)
    weight = torch.where(ok, torch.exp(log_w) * fade, 0.0).to(g_unit.dtype)
    got = torch.where(ok, torch.exp(log_w + n_rank - n_seg) * fade, 0.0)
    return weight, got


def _grad(term: Tensor, leaf: Tensor, retain: bool = False) -> Tensor:
    g = torch.autograd.grad(term, leaf, retain_graph=retain, allow_unused=True)[0]
    return torch.zeros_like(leaf) if g is None else g


def measured_total(logits: Tensor, x_seg: Tensor, x_rank: Tensor, seg: Tensor, rank: Tensor,
                   weight: float | None, balance: float | None = None, extra: Tensor | None = None
                   ) -> tuple[Tensor, Tensor | float, Tensor]:
    """``(total, weight of L_unc, grad_ratio)`` where the gradient ratio at the logits is needed.

    ``seg`` was computed from the leaf ``x_seg``, ``rank`` (and ``extra``, a further term added
    as is, e.g. the weighted consistency term) from ``x_rank`` (see :func:`head_inputs`). Each
    branch of the loss head is differentiated once, here; ``total`` carries the sum of the
    gradients into the network. ``weight`` is the fixed weight of ``rank`` (lambda * scale * ramp);
    when it is None, the weight is :func:`balanced_weight` at ratio ``balance`` (lambda * ramp). With a fixed weight
    the gradient at the logits is the one a plain backward of ``seg + weight * rank`` gives, bit for
    bit (each branch sees the same upstream gradient; the two meet in one addition).
    """
    g_seg = _grad(seg, x_seg)
    if weight is not None:
        g_rank = _grad(weight * rank, x_rank, retain=extra is not None)
        n_seg, _ = _log_norms(g_seg.detach().float())
        n_rank, _ = _log_norms(g_rank.detach().float())
        ratio = torch.exp(n_rank - n_seg).nan_to_num(nan=0.0)  # 0/0 (nothing on either side) reads 0
    else:
        g_unit = _grad(rank, x_rank, retain=extra is not None)
        weight, ratio = balanced_weight(g_seg, g_unit, rank, balance)
        g_rank = weight * g_unit
    grad = g_seg + g_rank
    value = seg.detach() + weight * rank.detach()
    if extra is not None:
        grad = grad + _grad(extra, x_rank)
        value = value + extra.detach()
    return _PrecomputedGrad.apply(logits, value, grad), weight, ratio.detach()


def steered_uncertainty(u: Tensor, logits: Tensor, target: Tensor, wrong: Tensor) -> Tensor:
    """``u`` (flat) with each wrong voxel's gradient replaced by that of log p_true (same value).

    ``logits`` (B, K, *spatial), ``target`` (B, *spatial) with valid class indices where ``wrong``;
    the ranking term's push to raise u_j then raises the true class's log-probability instead of
    flattening the distribution (its magnitude does not vanish on confidently wrong voxels either).
    """
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    k = x.shape[1]
    tgt = target.reshape(target.shape[0], 1, *target.shape[1:]).clamp(0, k - 1).long()
    log_p_true = torch.log_softmax(x, dim=1).gather(1, tgt).reshape(-1)
    pushed = log_p_true - log_p_true.detach()  # value 0, gradient d log p_true
    return torch.where(wrong, u.detach() + pushed.to(u.dtype), u)
