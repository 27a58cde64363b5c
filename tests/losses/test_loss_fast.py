"""The fast paths of the loss head (issue 28): the ranking core's bit-pattern sort and sorted-position
sums, the pair matrix on float32 inputs with ties and ignored voxels, and the logging / balance steps,
whose head is differentiated once and whose gradient at the logits is the plain backward's."""

from __future__ import annotations

import pytest
import torch

import uaseg.losses.ranking as ranking
from uaseg.losses import UncertaintyAwareLoss, brute_force_ranking_loss, masked_pairwise_ranking_loss
from uaseg.losses.ranking import _sort, _sum_wrong_at_or_below

F64 = torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_bit_pattern_sort_orders_like_torch_sort(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5000, generator=g, dtype=F64) * 3).to(dtype)
    x[::7], x[::11], x[::5] = 0.0, -0.0, x[::5].round()  # signed zeros, ties
    x[::13], x[::17], x[::19] = torch.inf, -torch.inf, torch.nan
    values, perm = _sort(x)
    assert torch.equal(values.nan_to_num(), torch.sort(x).values.nan_to_num())
    assert torch.equal(x[perm].nan_to_num(), values.nan_to_num())
    assert torch.equal(torch.sort(perm).values, torch.arange(x.numel()))


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_sums_over_sorted_positions_by_hand(sync_free, weighted):
    g = torch.Generator().manual_seed(1)
    pos = torch.sort(torch.randint(0, 301, (300,), generator=g)).values  # non-decreasing, as q
    wrong = torch.rand(300, generator=g) < 0.4
    vals = torch.rand(300, generator=g, dtype=F64) if weighted else None
    out = _sum_wrong_at_or_below(pos, wrong, vals, sync_free=sync_free, pos_sorted=True)
    ones = torch.ones(300, dtype=F64) if vals is None else vals
    brute = torch.stack([ones[wrong & (pos <= i)].sum() for i in range(300)])
    torch.testing.assert_close(out.to(F64), brute)


def _case(seed: int, n: int, kind: str):
    """u (float32) and labels 0 wrong / 1 correct / 2 ignored; dyadic u and margin put many pairs
    exactly on the hinge (computed exactly in float32 and float64 alike)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 17, (n,), generator=g).float() / 16
    lab = torch.randint(0, 3, (n,), generator=g)
    if kind == "all_wrong":
        lab = torch.where(lab == 1, 0, lab)
    elif kind == "none_wrong":
        lab = torch.where(lab == 0, 1, lab)
    return u, lab


@pytest.mark.parametrize("kind", ["mixed", "all_wrong", "none_wrong"])
@pytest.mark.parametrize("power", [1, 2])
def test_float32_core_matches_the_pair_matrix_with_ties_and_ignored_voxels(kind, power):
    for seed in range(3):
        u, lab = _case(seed, 1500, kind)
        x = u.clone().requires_grad_(True)
        out = masked_pairwise_ranking_loss(x, lab == 0, lab == 1, 0.125, power)
        out.backward()
        ud = u.double().requires_grad_(True)
        ref = brute_force_ranking_loss(ud[lab == 0], ud[lab == 1], 0.125, power)
        ref.backward()
        assert out.dtype == torch.float32 and x.grad.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(x.grad.double(), ud.grad, rtol=1e-6, atol=1e-12)
        assert torch.all(x.grad[lab == 2] == 0)


def _head(dtype=torch.float32, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, k, 6, 5, 4, generator=g, dtype=F64) * 2).to(dtype)
    target = torch.randint(0, k, (2, 1, 6, 5, 4), generator=g)
    return logits, target


def _run(loss, logits, target, measure, **kw):
    z = logits.clone().requires_grad_(True)
    total, logs = loss(z, target, epoch=0.5, measure=measure, **kw)
    total.backward()
    return total.detach(), z.grad, logs


@pytest.fixture
def rank_backwards(monkeypatch):
    """Counts the ranking core's backward calls."""
    calls = []
    inner = ranking._MaskedPairwiseRanking.backward

    def counted(ctx, grad_out):
        calls.append(1)
        return inner(ctx, grad_out)

    monkeypatch.setattr(ranking._MaskedPairwiseRanking, "backward", staticmethod(counted))
    return calls


@pytest.mark.parametrize("warmup", [0.0, 1.0])
def test_logging_step_gives_the_plain_gradient_bit_for_bit_with_one_head_backward(warmup, rank_backwards):
    """The paper's objective (and one_pass's ramp): a logging step trains exactly as any other step,
    and its head's ranking branch is differentiated once (it was twice: the ratio, then the step)."""
    logits, target = _head()
    loss = UncertaintyAwareLoss(lambda_=2.0, warmup_epochs=warmup)
    t0, g0, logs0 = _run(loss, logits, target, measure=False)
    assert len(rank_backwards) == 1 and "grad_ratio" not in logs0
    t1, g1, logs1 = _run(loss, logits, target, measure=True)
    assert len(rank_backwards) == 2 and float(logs1["grad_ratio"]) > 0
    assert torch.equal(t0, t1) and torch.equal(g0, g1)


@pytest.mark.parametrize("kw", [dict(balance=True, steer=True), dict(balance=True),
                                dict(consistency=0.5), dict(ignore_index=3)], ids=str)
def test_split_head_gives_the_graph_gradient(kw, rank_backwards):
    """Every variant through the measured path: the gradient at the logits is the one autograd gives
    through the whole head in one graph (to float rounding), from one ranking backward per term."""
    logits, target = _head(F64, seed=1)
    view = torch.randn_like(logits) if "consistency" in kw else None
    loss = UncertaintyAwareLoss(lambda_=2.0, **kw).double()
    t1, g1, logs = _run(loss, logits, target, measure=True, view_logits=view)
    assert len(rank_backwards) == (2 if view is not None else 1)
    # the same objective in one graph: its weight taken from the measured step
    z = logits.clone().requires_grad_(True)
    plain = UncertaintyAwareLoss(lambda_=2.0, **{k: v for k, v in kw.items() if k != "balance"}).double()
    seg = loss.seg_loss(z, target)
    total = seg + logs["rank_weight"].double() * _rank_of(plain, z, target, kw)
    if view is not None:
        total = total + 0.5 * 1000.0 * _cons_of(plain, z, target, view)
    total.backward()
    torch.testing.assert_close(g1, z.grad, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(t1, total.detach(), rtol=1e-6, atol=1e-12)


def _masks(loss, z, target):
    u, pred = loss._score_fn(z)
    t = target.reshape(-1)
    hit = pred.reshape(-1) == t
    valid = torch.ones_like(hit) if loss.ignore_index is None else t != loss.ignore_index
    return u.reshape(-1), pred, valid & ~hit, valid & hit, valid


def _rank_of(loss, z, target, kw):
    from uaseg.losses.dynamics import steered_uncertainty

    u, _, wrong, correct, _ = _masks(loss, z, target)
    if kw.get("steer"):
        u = steered_uncertainty(u, z, target[:, 0], wrong)
    return masked_pairwise_ranking_loss(u, wrong, correct, loss.margin)


def _cons_of(loss, z, target, view):
    u, pred, _, _, valid = _masks(loss, z, target)
    disagree = (view.argmax(1) != pred).reshape(-1)
    return masked_pairwise_ranking_loss(u, valid & disagree, valid & ~disagree, loss.margin)
