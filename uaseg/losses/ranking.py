"""Pairwise margin-ranking term of uncertainty-aware training (paper Sec. 2.3, eq. 2).

    L_unc = 1/(|W||C|) * sum_{j in W} sum_{k in C} max(u_k - u_j + m, 0)

W are the uncertainties of wrongly predicted voxels, C those of correct ones. The paper
evaluates it on a random subsample (300 x 6600) because the pair matrix is O(|W||C|). The
pair matrix is not needed: with s the sorted correct uncertainties and t_j = u_j - m,

    sum_k max(u_k - t_j, 0) = S_>(t_j) - t_j * N_>(t_j),

where N_>(t) / S_>(t) are the count / sum of the s greater than t, read off a float64
prefix-sum array at pos_j = ``searchsorted(s, t_j, right=True)``. That is O(n log n) time and
O(n) memory for n voxels, so the exact all-pairs term over a whole 2x64^3 batch (~524k voxels)
is cheap.

Gradients follow ``F.relu``'s convention (zero at the hinge): a pair with u_k - u_j + m == 0
contributes nothing. (``torch.clamp(x, min=0)`` and ``MarginRankingLoss`` pass gradient 1 there.)
With P = |W||C|,

    dL/du_j = -#{k : u_k > u_j - m} / P      (= -N_>(t_j) / P)
    dL/du_k = +#{j : u_j - m < u_k} / P      (sorted correct position i: #{j : pos_j <= i})

The core works on the full flattened u with boolean W / C masks instead of gathering
u[W], u[C]: on CUDA, boolean indexing and ``bincount`` wait for the GPU (host sync) to learn
output sizes; sort / searchsorted / cumsum on fixed-size tensors do not, so the term never
stalls the CUDA stream.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "masked_pairwise_ranking_loss",
    "pairwise_ranking_loss",
    "subsample_ranking_loss",
    "random_mask_subset",
    "brute_force_ranking_loss",
]


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    # at least float32: bfloat16/float16 inputs are accumulated and returned in float32
    return torch.promote_types(dtype, torch.float32)


def _sum_wrong_at_or_below(pos: Tensor, wrong: Tensor, values: Tensor | None = None,
                           sync_free: bool | None = None, pos_sorted: bool = False) -> Tensor:
    """out[i] = sum of ``values_j`` (1 when None) over wrong j with pos_j <= i, for i < n. On CUDA by
    a searchsorted on the sorted positions (bincount syncs there to size its output and is flagged
    nondeterministic), sorting them first unless ``pos_sorted`` says they are non-decreasing; on CPU
    bincount is faster."""
    n = pos.numel()
    if pos.is_cuda if sync_free is None else sync_free:
        ar = torch.arange(n, device=pos.device)
        if pos_sorted:  # the first idx entries are those with pos <= i
            ones = wrong.long() if values is None else torch.where(wrong, values, 0.0)
            cum = torch.cat([ones.new_zeros(1), torch.cumsum(ones, 0)])
            return cum[torch.searchsorted(pos, ar, right=True)]
        wrong_pos, order = torch.sort(torch.where(wrong, pos, n + 1))
        if values is None:
            return torch.searchsorted(wrong_pos, ar, right=True)
        cum = torch.cumsum(torch.where(wrong, values, 0.0)[order], 0)
        idx = torch.searchsorted(wrong_pos, ar, right=True)
        return torch.where(idx > 0, cum[(idx - 1).clamp(min=0)], 0.0)
    w = None if values is None else values[wrong]
    return torch.cumsum(torch.bincount(pos[wrong], weights=w, minlength=n + 1)[:n], 0)


def _count_wrong_at_or_below(pos: Tensor, wrong: Tensor, sync_free: bool | None = None) -> Tensor:
    """out[i] = #{j in wrong : pos_j <= i}, i < n."""
    return _sum_wrong_at_or_below(pos, wrong, None, sync_free)


_BITS = {torch.float32: (torch.int32, 0x7FFFFFFF), torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF)}


def _sort(x: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.sort(x)`` (ties in any order) of a float32 / float64 vector, by its bit pattern read
    as an integer with the negative floats' magnitude bits flipped, an order-preserving map: torch
    sorts integers by radix on CPU, 5-10x faster than floats (NaN last, -0.0 just before 0.0)."""
    if x.dtype not in _BITS:
        return torch.sort(x)
    itype, low = _BITS[x.dtype]
    bits = x.view(itype)
    perm = torch.sort(bits ^ ((bits >> (bits.element_size() * 8 - 1)) & low)).indices
    return x[perm], perm


def _prefix(x: Tensor) -> Tensor:
    """[0, x_0, x_0 + x_1, ...]: prefix[i] is the sum of the first i entries."""
    return torch.cat([x.new_zeros(1), torch.cumsum(x, 0)])


class _MaskedPairwiseRanking(torch.autograd.Function):
    """Exact (weighted) mean pairwise hinge^power over (wrong, correct) voxel pairs, explicit backward.

    One sort of every ranked u (W and C together; the rest, +inf, last) gives s; then t_p = s_p - m
    is sorted too, so q_p = #{s <= t_p} is a searchsorted with sorted queries (cache-friendly, unlike
    the same search with the voxels' own order), and the count / sum / sum of squares N / S1 / S2 of
    the correct s greater than t_p are read off prefix sums of the correct entries at q_p:
        power 1: sum_k h = S1 - t_j N                         dL/du_j = -w_j N / P
        power 2: sum_k h^2 = S2 - 2 t_j S1 + t_j^2 N          dL/du_j = -2 w_j (S1 - t_j N) / P
    and for the correct voxel at sorted position i, with W / WT the sums of w_j / w_j t_j over the
    wrong j with q_j <= i (those with t_j < s_i):
        power 1: dL/ds_i = W / P                              power 2: dL/ds_i = 2 (s_i W - WT) / P
    P = (sum_j w_j) |C|. A pair exactly on the hinge gets gradient 0 (F.relu's convention). The
    comparisons and sums are in float64 (O(n) elementwise work; the sort stays in u's dtype), so the
    value and the integer counts behind each gradient are those of the pair matrix.
    """

    @staticmethod
    def forward(ctx, u: Tensor, wrong: Tensor, correct: Tensor, margin: float, power: int,
                weight: Tensor | None) -> Tensor:
        ud = u.detach()
        n_c = correct.sum()
        # Sorting in the input dtype is cheaper; the cast to float64 is exact and monotone.
        s, perm = _sort(torch.where(wrong | correct, ud, torch.inf))
        is_w, is_c = wrong[perm], correct[perm]
        s = s.to(torch.float64)
        t = s - margin
        q = torch.searchsorted(s, t, right=True)  # #ranked u <= t_p (the +inf tail never counts)
        pos = _prefix(is_c.long())[q]  # #correct u <= t_p
        prefix = _prefix(torch.where(is_c, s, 0.0))
        n_gt = n_c - pos
        s1 = prefix[-1] - prefix[q]
        if power == 1:
            per_wrong = s1 - t * n_gt  # sum_k max(u_k - t_j, 0)
        else:
            prefix2 = _prefix(torch.where(is_c, s * s, 0.0))
            per_wrong = (prefix2[-1] - prefix2[q]) - 2 * t * s1 + t * t * n_gt
        w = None if weight is None else torch.where(is_w, weight.detach().to(torch.float64)[perm], 0.0)
        total_w = wrong.sum() if w is None else w.sum()
        n_pairs = torch.where(total_w * n_c > 0, total_w * n_c, torch.ones_like(total_w * n_c))
        weighted = per_wrong if w is None else per_wrong * w
        total = torch.where(is_w, weighted, 0.0).sum() / n_pairs  # empty W or C: sum 0, result 0
        ctx.save_for_backward(is_w, is_c, perm, q, pos, n_c, n_pairs, t, s, s1 if power == 2 else None, w)
        ctx.power, ctx.u_dtype, ctx.weighted = power, u.dtype, w is not None
        return total.to(_out_dtype(u.dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        is_w, is_c, perm, q, pos, n_c, n_pairs, t, s, s1, w = ctx.saved_tensors
        w = w if ctx.weighted else None
        g = grad_out.to(torch.float64) / n_pairs
        if ctx.power == 1:
            grad_w = (pos - n_c).to(torch.float64)  # -N_>(t_j)
            grad_c = _sum_wrong_at_or_below(q, is_w, w, pos_sorted=True).to(torch.float64)
        else:
            grad_w = -2.0 * (s1 - t * (n_c - pos).to(torch.float64))
            ones = is_w.to(torch.float64) if w is None else w
            w_le = _sum_wrong_at_or_below(q, is_w, ones, pos_sorted=True)
            wt_le = _sum_wrong_at_or_below(q, is_w, ones * t, pos_sorted=True)
            grad_c = 2.0 * (torch.where(is_c, s, 0.0) * w_le - wt_le)
        if w is not None:
            grad_w = grad_w * w
        grad_sorted = torch.where(is_w, grad_w, torch.where(is_c, grad_c, 0.0)) * g
        grad = torch.empty_like(grad_sorted).scatter_(0, perm, grad_sorted)
        return grad.to(ctx.u_dtype), None, None, None, None, None


def masked_pairwise_ranking_loss(u: Tensor, wrong: Tensor, correct: Tensor, margin: float = 0.1,
                                 power: int = 1, wrong_weight: Tensor | None = None) -> Tensor:
    """Exact mean over all pairs (j in ``wrong``, k in ``correct``) of ``max(u_k - u_j + margin, 0)``
    (``power=2``: its square, which weights badly ordered pairs more); with ``wrong_weight`` each
    wrong voxel's pairs count ``w_j`` times (weighted mean).

    ``u``, ``wrong``, ``correct`` (and ``wrong_weight``): same shape (flattened), masks boolean and
    disjoint; voxels in neither mask (ignored labels, not drawn) take no part. Any float dtype and
    device; the result is a scalar of dtype ``promote(u.dtype, float32)``, 0 (still attached to
    ``u``'s graph, so DDP sees gradients) when either set is empty. No host-device synchronisation.
    """
    if power not in (1, 2):
        raise ValueError(f"hinge power must be 1 or 2, got {power}")
    u = u.reshape(-1)
    weight = None if wrong_weight is None else wrong_weight.reshape(-1)
    return _MaskedPairwiseRanking.apply(u, wrong.reshape(-1), correct.reshape(-1), float(margin), int(power), weight)


def pairwise_ranking_loss(u_wrong: Tensor, u_correct: Tensor, margin: float = 0.1) -> Tensor:
    """Exact mean over all |W|*|C| pairs of ``max(u_correct[k] - u_wrong[j] + margin, 0)``."""
    u = torch.cat([u_wrong.reshape(-1), u_correct.reshape(-1)])
    wrong = torch.arange(u.numel(), device=u.device) < u_wrong.numel()
    return masked_pairwise_ranking_loss(u, wrong, ~wrong, margin)


def random_mask_subset(mask: Tensor, n: int | None, generator: torch.Generator | None = None) -> Tensor:
    """Boolean mask of ``n`` of ``mask``'s True entries drawn uniformly without replacement
    (all of them when fewer exist): the n smallest of i.i.d. uniform keys, via ``topk`` (no
    host sync). Uses torch's default generator on ``mask``'s device unless one is given, so
    ``torch.manual_seed`` / Lightning's ``seed_everything`` reproduce the draw."""
    flat = mask.reshape(-1)
    if n is None or n >= flat.numel():
        return mask
    keys = torch.rand(flat.shape, device=flat.device, generator=generator).masked_fill_(~flat, 2.0)
    pick = keys.topk(n, largest=False, sorted=False).indices
    out = torch.zeros_like(flat)
    out[pick] = flat[pick]
    return out.reshape(mask.shape)


def subsample_ranking_loss(
    u_wrong: Tensor,
    u_correct: Tensor,
    margin: float = 0.1,
    n_wrong: int = 300,
    n_correct: int = 6600,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The paper's estimator: ``n_wrong`` x ``n_correct`` random voxels, then the exact mean."""
    u = torch.cat([u_wrong.reshape(-1), u_correct.reshape(-1)])
    wrong = torch.arange(u.numel(), device=u.device) < u_wrong.numel()
    return masked_pairwise_ranking_loss(
        u, random_mask_subset(wrong, n_wrong, generator), random_mask_subset(~wrong, n_correct, generator), margin
    )


def brute_force_ranking_loss(u_wrong: Tensor, u_correct: Tensor, margin: float = 0.1, power: int = 1,
                             wrong_weight: Tensor | None = None) -> Tensor:
    """Reference O(|W||C|) pair-matrix form, for tests only."""
    if u_wrong.numel() == 0 or u_correct.numel() == 0:
        return (u_wrong.sum() + u_correct.sum()) * 0
    diff = u_correct.reshape(1, -1) - u_wrong.reshape(-1, 1) + margin
    # F.relu, not torch.clamp: clamp passes gradient 1 at exactly 0, relu passes 0 (our convention)
    h = torch.nn.functional.relu(diff) ** power
    if wrong_weight is None:
        return h.mean()
    w = wrong_weight.reshape(-1, 1).to(h.dtype)
    return (w * h).sum() / (w.sum() * u_correct.numel())
