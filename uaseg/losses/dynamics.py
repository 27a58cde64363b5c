"""How strongly, and in which direction, the ranking term pushes the logits (multi-class study, issue 19).

With K > 2 classes the paper's term, weighted by a fixed lambda * 1000, dominates the segmentation
gradient at the logits by orders of magnitude, and raising a wrong voxel's u = 1 - max p only
spreads the predicted class's mass over all K - 1 others (d u / d z_i = p_a p_i for i != a): the
network learns to be unsure where it is wrong instead of being right. Three remedies, each off by
default (the paper's objective):

* ``warmup_epochs``: lambda rises linearly from 0 over that many epochs after ``start_epoch``
  (per step; the paper's hard switch from 0 to lambda was harmful in its Appendix D).
* ``balance``: the ranking term's weight is set every step so that its gradient norm at the logits
  is ``balance`` times the segmentation term's (the weight is a detached number: it scales, it is not
  trained); lambda * scale is then unused except lambda > 0 switching the term on.
* ``steer``: a wrong voxel's uncertainty keeps its value (so which pairs violate the margin is
  unchanged) but its gradient is that of log p_true: raising it moves mass to the voxel's true class
  (known in training) rather than to every class. Test-time u stays 1 - max p.

:func:`measured_total` also gives the logged ``grad_ratio``: the ranking term's gradient norm at the
logits over the segmentation term's, so a user sees when the term dominates. Where the ratio is
needed (logging steps, ``balance``) the loss head is differentiated once, branch by branch, and the
training backward reuses that gradient instead of running the head's backward again.
"""

from __future__ import annotations

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
    when it is None, the weight makes the gradient ratio ``balance`` (balance * ramp). With a fixed weight
    the gradient at the logits is the one a plain backward of ``seg + weight * rank`` gives, bit for
    bit (each branch sees the same upstream gradient; the two meet in one addition).
    """
    g_seg = _grad(seg, x_seg)
    n_seg = g_seg.detach().float().norm()
    if weight is not None:
        g_rank = _grad(weight * rank, x_rank, retain=extra is not None)
        ratio = g_rank.float().norm() / n_seg.clamp(min=1e-30)
    else:
        g_unit = _grad(rank, x_rank, retain=extra is not None)
        n_rank = g_unit.float().norm()
        weight = torch.where(n_rank > 0, balance * n_seg / n_rank.clamp(min=1e-30), 0.0)
        g_rank = weight.to(g_unit.dtype) * g_unit
        ratio = weight * n_rank / n_seg.clamp(min=1e-30)
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
