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

:func:`logit_grad_norms` also gives the logged ``grad_ratio``: the ranking term's gradient norm at the
logits over the segmentation term's, so a user sees when the term dominates.
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


def logit_grad_norms(seg: Tensor, rank: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    """L2 norms of d seg / d logits and d rank / d logits (detached), without touching parameter
    gradients: only the loss head is differentiated, so this costs a small part of a training step."""
    g_seg, g_rank = (torch.autograd.grad(t, logits, retain_graph=True, allow_unused=True)[0]
                     for t in (seg, rank))
    norm = lambda g: torch.zeros((), device=logits.device) if g is None else g.detach().float().norm()  # noqa: E731
    return norm(g_seg), norm(g_rank)


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
