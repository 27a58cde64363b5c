"""Tests of the uncertainty-aware loss: exact ranking term vs the pair matrix, module, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import uaseg.losses.uncertainty_aware as ua_mod
from uaseg.losses import (
    CrossEntropy,
    DiceCE,
    UncertaintyAwareLoss,
    brute_force_ranking_loss,
    masked_pairwise_ranking_loss,
    max_softmax_uncertainty,
    pairwise_ranking_loss,
    random_mask_subset,
    subsample_ranking_loss,
    uncertainty_aware_loss,
)

LOSS_CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"
F64 = torch.float64


def _value_and_grads(fn, w, c, m):
    w = w.clone().requires_grad_(True)
    c = c.clone().requires_grad_(True)
    out = fn(w, c, m)
    out.backward()
    return out.detach(), w.grad, c.grad


def _assert_matches_brute(w, c, m, grads=True):
    v, gw, gc = _value_and_grads(pairwise_ranking_loss, w, c, m)
    vb, gwb, gcb = _value_and_grads(brute_force_ranking_loss, w, c, m)
    torch.testing.assert_close(v, vb, rtol=1e-6, atol=1e-12)
    if grads:
        torch.testing.assert_close(gw, gwb, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(gc, gcb, rtol=1e-6, atol=1e-12)
    return v, gw, gc


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("m", [0.1, 0.0, 0.5])
def test_matches_brute_force_random(seed, m):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(int(torch.randint(1, 300, (1,), generator=g)), generator=g, dtype=F64)
    c = torch.rand(int(torch.randint(1, 500, (1,), generator=g)), generator=g, dtype=F64)
    _assert_matches_brute(w, c, m)


@pytest.mark.parametrize("m", [0.0, 0.05, 0.25])
def test_matches_brute_force_ties_decimal_grid(m):
    # values rounded to 0.1: many equal u's; with m = 0 the hinge is exactly 0 on every tie,
    # with m = 0.05 / 0.25 the hinge argument is never near 0.
    g = torch.Generator().manual_seed(1)
    w = torch.round(torch.rand(400, generator=g, dtype=F64) * 10) / 10
    c = torch.round(torch.rand(700, generator=g, dtype=F64) * 10) / 10
    _assert_matches_brute(w, c, m)
    _assert_matches_brute(c, w, m)


@pytest.mark.parametrize("m", [0.125, 0.25, 0.0])
def test_hinge_exactly_zero_gets_zero_gradient(m):
    # Dyadic values: u_k - u_j + m is computed exactly, so many pairs sit exactly on the hinge.
    # Convention (as F.relu): such pairs contribute no gradient. (torch.clamp(x, min=0) and
    # MarginRankingLoss pass gradient 1 at 0 instead.)
    g = torch.Generator().manual_seed(2)
    w = torch.randint(0, 9, (300,), generator=g).to(F64) / 8
    c = torch.randint(0, 9, (500,), generator=g).to(F64) / 8
    assert ((c[None, :] - w[:, None] + m) == 0).sum() > 1000
    _assert_matches_brute(w, c, m)
    _assert_matches_brute(c, w, m)  # roles swapped: |W| > |C|
    # spelled out on a tiny case: u_k - u_j + m == 0 exactly -> value 0, gradient 0
    _, gw, gc = _value_and_grads(pairwise_ranking_loss, torch.tensor([0.5], dtype=F64),
                                 torch.tensor([0.5 - m], dtype=F64), m)
    assert gw.item() == 0 and gc.item() == 0


def test_decimal_margin_value_matches():
    # u on a 0.1 grid with m = 0.1: u_k - u_j + m is "zero" only up to float rounding, so which side
    # of the hinge a pair lands on is decided by rounding in both implementations (gradients may
    # differ on those pairs); values agree since those pairs contribute ~1e-17 each.
    g = torch.Generator().manual_seed(3)
    w = torch.round(torch.rand(300, generator=g, dtype=F64) * 10) / 10
    c = torch.round(torch.rand(500, generator=g, dtype=F64) * 10) / 10
    _assert_matches_brute(w, c, 0.1, grads=False)


def test_analytic_gradients():
    w = torch.tensor([0.2, 0.6], dtype=F64)
    c = torch.tensor([0.05, 0.3, 0.9], dtype=F64)
    _, gw, gc = _value_and_grads(pairwise_ranking_loss, w, c, 0.1)
    # wrong j: -#{k: u_k > u_j - m} / 6 ; correct k: +#{j: u_j < u_k + m} / 6
    torch.testing.assert_close(gw, torch.tensor([-2.0, -1.0], dtype=F64) / 6)
    torch.testing.assert_close(gc, torch.tensor([0.0, 1.0, 2.0], dtype=F64) / 6)


@pytest.mark.parametrize("nw,nc", [(1, 1), (1, 50), (50, 1), (2, 2)])
def test_one_element_sets(nw, nc):
    g = torch.Generator().manual_seed(nw + nc)
    _assert_matches_brute(torch.rand(nw, generator=g, dtype=F64), torch.rand(nc, generator=g, dtype=F64), 0.1)


@pytest.mark.parametrize("nw,nc", [(0, 5), (5, 0), (0, 0)])
def test_empty_sets_zero_and_connected(nw, nc):
    w = torch.rand(nw, dtype=F64, requires_grad=True)
    c = torch.rand(nc, dtype=F64, requires_grad=True)
    out = pairwise_ranking_loss(w, c, 0.1)
    assert out.item() == 0 and torch.isfinite(out) and out.requires_grad
    out.backward()
    assert torch.all(w.grad == 0) and torch.all(c.grad == 0)


def test_gradcheck():
    g = torch.Generator().manual_seed(4)
    w = torch.rand(40, generator=g, dtype=F64, requires_grad=True)
    c = torch.rand(60, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pairwise_ranking_loss(a, b, 0.1), (w, c))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_inputs(dtype, tol):
    g = torch.Generator().manual_seed(5)
    w = torch.rand(2000, generator=g, dtype=F64)
    c = torch.rand(30000, generator=g, dtype=F64)
    ref = pairwise_ranking_loss(w, c, 0.1)
    wl, cl = w.to(dtype).requires_grad_(True), c.to(dtype).requires_grad_(True)
    out = pairwise_ranking_loss(wl, cl, 0.1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=0)
    out.backward()
    assert wl.grad.dtype == dtype and cl.grad.dtype == dtype
    # and against brute force on the same low-precision values (computed in float64)
    torch.testing.assert_close(out.double(), brute_force_ranking_loss(wl.double(), cl.double(), 0.1),
                               rtol=1e-6, atol=0)


def test_masked_form_skips_unmasked_voxels():
    g = torch.Generator().manual_seed(6)
    u = torch.rand(500, generator=g, dtype=F64)
    lab = torch.randint(0, 3, (500,), generator=g)  # 0 wrong, 1 correct, 2 neither (ignored)
    uu = u.clone().requires_grad_(True)
    out = masked_pairwise_ranking_loss(uu, lab == 0, lab == 1, 0.1)
    out.backward()
    v, gw, gc = _value_and_grads(brute_force_ranking_loss, u[lab == 0], u[lab == 1], 0.1)
    torch.testing.assert_close(out, v, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(uu.grad[lab == 0], gw, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(uu.grad[lab == 1], gc, rtol=1e-6, atol=1e-12)
    assert torch.all(uu.grad[lab == 2] == 0)


def test_count_paths_agree():
    from uaseg.losses.ranking import _count_wrong_at_or_below

    pos = torch.randint(0, 301, (300,))
    wrong = torch.rand(300) < 0.4
    a = _count_wrong_at_or_below(pos, wrong, sync_free=True)  # the CUDA path
    b = _count_wrong_at_or_below(pos, wrong, sync_free=False)
    assert torch.equal(a, b)


def test_random_mask_subset_and_subsample():
    mask = torch.rand(1000) < 0.3
    assert torch.equal(random_mask_subset(mask, 10**6), mask)
    assert torch.equal(random_mask_subset(mask, int(mask.sum()) + 50), mask)  # fewer exist -> all of them
    torch.manual_seed(0)
    a = random_mask_subset(mask, 40)
    torch.manual_seed(0)
    b = random_mask_subset(mask, 40)
    assert torch.equal(a, b) and int(a.sum()) == 40 and not (a & ~mask).any()
    # roughly uniform over the True entries
    torch.manual_seed(1)
    hits = sum(random_mask_subset(mask, 40).float() for _ in range(300))
    assert hits[~mask].sum() == 0 and hits[mask].min() > 0
    w, c = torch.rand(30, dtype=F64), torch.rand(50, dtype=F64)
    # fewer voxels than requested -> all of them -> identical to exact
    assert subsample_ranking_loss(w, c, 0.1, 300, 6600) == pairwise_ranking_loss(w, c, 0.1)
    torch.manual_seed(2)
    sub = subsample_ranking_loss(w, c, 0.1, 5, 7)
    assert 0 <= sub <= 1.1


def test_gradient_direction_one_step():
    torch.manual_seed(0)
    u_w = torch.nn.Parameter(torch.rand(50) * 0.5)
    u_c = torch.nn.Parameter(torch.rand(80) * 0.5 + 0.2)
    gap0 = (u_w.mean() - u_c.mean()).item()
    opt = torch.optim.SGD([u_w, u_c], lr=1.0)
    pairwise_ranking_loss(u_w, u_c, 0.1).backward()
    opt.step()
    assert (u_w.mean() - u_c.mean()).item() > gap0


# ----------------------------------------------------------------------------------------- module


def _batch(b=2, k=4, shape=(6, 7, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, *shape, generator=g)
    target = torch.randint(0, k, (b, 1, *shape), generator=g)
    return logits, target


def _manual_rank(logits, target, m, ignore_index=None):
    u = 1 - torch.softmax(logits.double(), 1).max(1).values.reshape(-1)
    pred = logits.argmax(1).reshape(-1)
    t = target.reshape(-1)
    keep = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    return brute_force_ranking_loss(u[keep & (pred != t)], u[keep & (pred == t)], m)


def test_module_value_and_logs():
    logits, target = _batch()
    loss = UncertaintyAwareLoss(lambda_=2.0, margin=0.1, scale=1000.0)
    total, logs = loss(logits, target, epoch=0)
    rank = _manual_rank(logits, target, 0.1)
    torch.testing.assert_close(logs["rank"].double(), rank, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(total, logs["seg"] + 2000.0 * logs["rank"])
    torch.testing.assert_close(logs["seg"], F.cross_entropy(logits, target[:, 0]))
    n = target.numel()
    assert int(logs["n_wrong"] + logs["n_correct"]) == n
    torch.testing.assert_close(logs["error_rate"], logs["n_wrong"] / n)
    assert all(not v.requires_grad and v.ndim == 0 for v in logs.values())
    assert (loss.lambda_, loss.margin, loss.sampling) == (2.0, 0.1, "exact")
    # (B, *spatial) targets work too
    total2, _ = loss(logits, target[:, 0], epoch=0)
    torch.testing.assert_close(total, total2)


def test_module_backward_and_max_softmax():
    logits, target = _batch()
    logits.requires_grad_(True)
    total, _ = UncertaintyAwareLoss()(logits, target)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    u, pred = max_softmax_uncertainty(logits)
    torch.testing.assert_close(u, 1 - torch.softmax(logits, 1).max(1).values)
    assert torch.equal(pred, logits.argmax(1))


def test_ignore_index_excluded():
    logits, target = _batch(k=3)
    target[:, :, :2] = 255
    loss = UncertaintyAwareLoss(seg_loss=CrossEntropy(ignore_index=255), ignore_index=255)
    _, logs = loss(logits, target)
    torch.testing.assert_close(logs["rank"].double(), _manual_rank(logits, target, 0.1, 255), rtol=1e-5, atol=1e-8)
    assert int(logs["n_wrong"] + logs["n_correct"]) == int((target != 255).sum())


def test_lambda_zero_never_ranks(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("ranking term computed with lambda=0")

    monkeypatch.setattr(ua_mod, "masked_pairwise_ranking_loss", boom)
    monkeypatch.setattr(ua_mod, "random_mask_subset", boom)
    loss = uncertainty_aware_loss(**{"lambda": 0})
    loss._score_fn = boom
    logits, target = _batch()
    total, logs = loss(logits, target, epoch=3)
    torch.testing.assert_close(total, F.cross_entropy(logits, target[:, 0]))
    assert logs["rank"] == 0 and "n_wrong" not in logs


def test_start_epoch(monkeypatch):
    calls = []
    real = ua_mod.masked_pairwise_ranking_loss
    monkeypatch.setattr(ua_mod, "masked_pairwise_ranking_loss", lambda *a: calls.append(1) or real(*a))
    loss = UncertaintyAwareLoss(start_epoch=2)
    logits, target = _batch()
    for epoch, expect in [(0, 0), (1, 0), (2, 1), (5, 2)]:
        _, logs = loss(logits, target, epoch=epoch)
        assert len(calls) == expect
    assert logs["rank"] > 0


def test_module_empty_wrong_set_connected():
    logits, target = _batch()
    target = logits.argmax(1, keepdim=True)  # everything correct -> W empty
    logits.requires_grad_(True)
    total, logs = UncertaintyAwareLoss()(logits, target)
    assert logs["rank"] == 0 and logs["n_wrong"] == 0 and torch.isfinite(total)
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_subsample_all_when_few_equals_exact():
    logits, target = _batch()
    exact = UncertaintyAwareLoss(sampling="exact")
    sub = UncertaintyAwareLoss(sampling="subsample", n_wrong=10**6, n_correct=10**6)
    torch.testing.assert_close(sub(logits, target)[0], exact(logits, target)[0])
    small = UncertaintyAwareLoss(sampling="subsample", n_wrong=20, n_correct=30)
    torch.manual_seed(7)
    a = small(logits, target)[1]["rank"]
    torch.manual_seed(7)
    b = small(logits, target)[1]["rank"]
    assert a == b  # global seed reproduces the draw


def test_dice_ce_targets():
    logits, target = _batch()
    d = DiceCE(weight=[1, 2, 1, 1])
    torch.testing.assert_close(d(logits, target), d(logits, target[:, 0]))


# ----------------------------------------------------------------------------------------- configs


def _compose(name, overrides=()):
    with initialize_config_dir(config_dir=str(LOSS_CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.mark.parametrize("name", ["uncertainty_aware", "baseline"])
@pytest.mark.parametrize("seg", ["ce", "ce_mmwhs", "dice_ce"])
def test_instantiate_from_yaml(name, seg):
    cfg = _compose(name, [f"seg_loss={seg}"])
    assert "lambda" in cfg
    loss = instantiate(cfg)
    assert isinstance(loss, UncertaintyAwareLoss)
    assert loss.lambda_ == (0.0 if name == "baseline" else 2.0)
    assert (loss.margin, loss.scale, loss.sampling, loss.start_epoch) == (0.1, 1000.0, "exact", 0)
    assert isinstance(loss.seg_loss, DiceCE if seg == "dice_ce" else CrossEntropy)
    if seg == "ce_mmwhs":
        assert loss.seg_loss.weight.tolist() == [1, 1, 1, 1, 1, 2, 1, 1]
    logits, target = _batch(k=8)
    total, _ = loss(logits, target, epoch=0)
    assert torch.isfinite(total)


def test_yaml_overrides():
    cfg = _compose("uncertainty_aware", ["lambda=0.5", "ignore_index=255", "seg_loss.weight=[1,1,1,1,1,2,1,1]"])
    loss = instantiate(cfg)
    assert loss.lambda_ == 0.5 and loss.ignore_index == 255 and loss.seg_loss.ignore_index == 255
    assert loss.seg_loss.weight.tolist() == [1, 1, 1, 1, 1, 2, 1, 1]


@pytest.mark.parametrize("nw,nc", [(100, 2200), (200, 4400), (300, 6600), (400, 2200), (600, 13200)])
def test_paper_ablation_sample_sizes(nw, nc):
    cfg = _compose("uncertainty_aware", ["sampling=subsample", f"n_wrong={nw}", f"n_correct={nc}"])
    loss = instantiate(cfg)
    assert (loss.sampling, loss.n_wrong, loss.n_correct) == ("subsample", nw, nc)


def test_factory_rejects_both_lambda_spellings():
    with pytest.raises(TypeError):
        uncertainty_aware_loss(**{"lambda": 1.0, "lambda_": 2.0})
    with pytest.raises(ValueError):
        UncertaintyAwareLoss(sampling="bogus")


# ---------------------------------------------------------------------------------------- variants
def _masked_vs_brute(u, lab, m, power, weight):
    """Masked exact form vs the pair matrix (values and gradients) on the same inputs."""
    uu = u.clone().requires_grad_(True)
    out = masked_pairwise_ranking_loss(uu, lab == 0, lab == 1, m, power=power,
                                       wrong_weight=None if weight is None else weight)
    out.backward()
    w = None if weight is None else weight[lab == 0]
    v, gw, gc = _value_and_grads(lambda a, b, mm: brute_force_ranking_loss(a, b, mm, power, w),
                                 u[lab == 0], u[lab == 1], m)
    torch.testing.assert_close(out, v, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(uu.grad[lab == 0], gw, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(uu.grad[lab == 1], gc, rtol=1e-6, atol=1e-12)
    assert torch.all(uu.grad[lab == 2] == 0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_power_and_weighted_variants_match_the_pair_matrix(seed, power, weighted, ties):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(400, generator=g, dtype=F64)
    if ties:  # dyadic grid and margin: many pairs exactly on the hinge
        u = torch.randint(0, 9, (400,), generator=g).to(F64) / 8
    lab = torch.randint(0, 3, (400,), generator=g)
    weight = torch.rand(400, generator=g, dtype=F64) * 3 if weighted else None
    _masked_vs_brute(u, lab, 0.125 if ties else 0.1, power, weight)


def test_squared_hinge_by_hand_and_gradcheck():
    # pairs (wrong 0.2; correct 0.05, 0.3): hinges max(0.05-0.1, 0)=0, max(0.3-0.1, 0)=0.2 -> mean 0.04/2
    w, c = torch.tensor([0.2], dtype=F64), torch.tensor([0.05, 0.3], dtype=F64)
    assert pairwise_ranking_loss(w, c, 0.1).item() == pytest.approx(0.1)
    out = masked_pairwise_ranking_loss(torch.cat([w, c]), torch.tensor([True, False, False]),
                                       torch.tensor([False, True, True]), 0.1, power=2)
    assert out.item() == pytest.approx(0.02)
    g = torch.Generator().manual_seed(8)
    u = torch.rand(60, generator=g, dtype=F64, requires_grad=True)
    lab = torch.randint(0, 2, (60,), generator=g)
    weight = torch.rand(60, generator=g, dtype=F64) + 0.5
    assert torch.autograd.gradcheck(
        lambda x: masked_pairwise_ranking_loss(x, lab == 0, lab == 1, 0.1, power=2, wrong_weight=weight), (u,))


def test_weighted_sum_paths_agree():
    from uaseg.losses.ranking import _sum_wrong_at_or_below

    g = torch.Generator().manual_seed(9)
    pos = torch.randint(0, 50, (300,), generator=g)
    wrong = torch.rand(300, generator=g) < 0.4
    vals = torch.rand(300, generator=g, dtype=F64)
    a = _sum_wrong_at_or_below(pos, wrong, vals, sync_free=False)
    b = _sum_wrong_at_or_below(pos, wrong, vals, sync_free=True)
    brute = torch.stack([vals[wrong & (pos <= i)].sum() for i in range(300)])
    torch.testing.assert_close(a, brute)
    torch.testing.assert_close(b, brute)
