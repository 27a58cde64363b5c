"""Pairwise margin-ranking term of uncertainty-aware training (paper Sec. 2.3, eq. 2).

    L_unc = 1/(|W||C|) * sum_{j in W} sum_{k in C} max(u_k - u_j + m, 0)

W are the uncertainties of wrongly predicted voxels, C those of correct ones. The paper
evaluates it on a random subsample (300 x 6600) because the pair matrix is O(|W||C|). The
pair matrix is not needed: with s the sorted correct uncertainties and t_j = u_j - m,

    sum_k max(u_k - t_j, 0) = S_>(t_j) - t_j * N_>(t_j),

where N_>(t) / S_>(t) are the count / sum of the s greater than t, read off a prefix-sum
array at ``searchsorted(s, t, right=True)``. That is O((|W|+|C|) log min(|W|,|C|)) time, O(|W|+|C|)
memory, so the exact all-pairs term over a whole 2x64^3 batch (~524k voxels) is cheap.

Gradients follow ``F.relu``'s convention (zero at the hinge): a pair with u_k - u_j + m == 0
contributes nothing. With P = |W||C|,

    dL/du_j = -#{k : u_k > u_j - m} / P      (= -N_>(t_j) / P)
    dL/du_k = +#{j : u_j - m < u_k} / P.

The second count comes for free from the forward's searchsorted positions: in sorted order,
correct voxel i is above t_j iff i >= pos_j, so its count is a cumsum of bincount(pos).

Only one side needs sorting, so the smaller one is sorted: L(W, C) = L(-C, -W) (negation is
exact), and in training |W| << |C|.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pairwise_ranking_loss", "subsample_ranking_loss", "random_subset", "brute_force_ranking_loss"]


def _out_dtype(*ts: Tensor) -> torch.dtype:
    # Results are at least float32 (bfloat16/float16 inputs are accumulated and returned in float32).
    return torch.promote_types(torch.result_type(*ts), torch.float32)


class _PairwiseRanking(torch.autograd.Function):
    """Exact mean pairwise hinge with an explicit, count-based backward."""

    @staticmethod
    def forward(ctx, u_wrong: Tensor, u_correct: Tensor, margin: float) -> Tensor:
        n_w, n_c = u_wrong.numel(), u_correct.numel()
        # float64 accumulation keeps the prefix sums exact enough over ~1e6 voxels.
        t = u_wrong.detach().reshape(-1).to(torch.float64) - margin
        # sort in the input dtype (cheaper; the cast to float64 is exact and monotone)
        s, perm = torch.sort(u_correct.detach().reshape(-1))
        s = s.to(torch.float64)
        pos = torch.searchsorted(s, t, right=True)  # number of correct u <= t_j
        prefix = torch.cat([s.new_zeros(1), torch.cumsum(s, 0)])
        n_gt = n_c - pos
        s_gt = prefix[-1] - prefix[pos]
        total = (s_gt - t * n_gt.to(torch.float64)).sum()
        ctx.save_for_backward(pos, perm)
        ctx.shapes = (u_wrong.shape, u_correct.shape)
        ctx.dtypes = (u_wrong.dtype, u_correct.dtype)
        return (total / (n_w * n_c)).to(_out_dtype(u_wrong, u_correct))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        pos, perm = ctx.saved_tensors
        (shape_w, shape_c), (dtype_w, dtype_c) = ctx.shapes, ctx.dtypes
        n_w, n_c = pos.numel(), perm.numel()
        g = grad_out.to(torch.float64) / (n_w * n_c)
        grad_w = grad_c = None
        if ctx.needs_input_grad[0]:
            grad_w = (-(n_c - pos).to(torch.float64) * g).to(dtype_w).reshape(shape_w)
        if ctx.needs_input_grad[1]:
            # count of wrong j with pos_j <= i, for each sorted correct position i
            count_sorted = torch.cumsum(torch.bincount(pos, minlength=n_c + 1)[:n_c], 0)
            count = torch.empty_like(count_sorted).scatter_(0, perm, count_sorted)
            grad_c = (count.to(torch.float64) * g).to(dtype_c).reshape(shape_c)
        return grad_w, grad_c, None


def pairwise_ranking_loss(u_wrong: Tensor, u_correct: Tensor, margin: float = 0.1) -> Tensor:
    """Exact mean over all (wrong j, correct k) pairs of ``max(u_k - u_j + margin, 0)``.

    Inputs are 1-D (any shape is flattened) uncertainty tensors on the same device; any float
    dtype. Returns a scalar of dtype ``promote(float32, inputs)``. If either set is empty the
    result is a zero that stays attached to both inputs' graphs (so DDP still sees gradients).
    """
    if u_wrong.numel() == 0 or u_correct.numel() == 0:
        return (u_wrong.sum() + u_correct.sum()).to(_out_dtype(u_wrong, u_correct)) * 0
    if u_wrong.numel() < u_correct.numel():  # sort the smaller set: L(W, C) = L(-C, -W)
        return _PairwiseRanking.apply(-u_correct, -u_wrong, float(margin))
    return _PairwiseRanking.apply(u_wrong, u_correct, float(margin))


def brute_force_ranking_loss(u_wrong: Tensor, u_correct: Tensor, margin: float = 0.1) -> Tensor:
    """Reference O(|W||C|) pair-matrix form, for tests only."""
    if u_wrong.numel() == 0 or u_correct.numel() == 0:
        return (u_wrong.sum() + u_correct.sum()) * 0
    diff = u_correct.reshape(1, -1) - u_wrong.reshape(-1, 1) + margin
    # F.relu, not torch.clamp: clamp passes gradient 1 at exactly 0, relu passes 0 (our convention).
    return torch.nn.functional.relu(diff).mean()


def random_subset(x: Tensor, n: int | None, generator: torch.Generator | None = None) -> Tensor:
    """``n`` elements of 1-D ``x`` drawn without replacement (all of ``x`` if it has <= n).

    Uses ``torch.randperm`` on ``x``'s device with torch's default generator unless one is
    given, so ``torch.manual_seed`` / Lightning's ``seed_everything`` reproduce the draw.
    """
    x = x.reshape(-1)
    if n is None or x.numel() <= n:
        return x
    idx = torch.randperm(x.numel(), device=x.device, generator=generator)[:n]
    return x.index_select(0, idx)


def subsample_ranking_loss(
    u_wrong: Tensor,
    u_correct: Tensor,
    margin: float = 0.1,
    n_wrong: int = 300,
    n_correct: int = 6600,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The paper's estimator: random ``n_wrong`` x ``n_correct`` voxels, then the exact mean."""
    return pairwise_ranking_loss(
        random_subset(u_wrong, n_wrong, generator), random_subset(u_correct, n_correct, generator), margin
    )
