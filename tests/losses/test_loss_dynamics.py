"""Multi-class remedies of the ranking term (uaseg/losses/dynamics.py): the warm-up ramp, gradient
balancing, steering wrong voxels toward their label, and the logged gradient ratio -- each against a
hand or brute-force computation, and each reaching the loss that trains from the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uaseg.losses import UncertaintyAwareLoss, brute_force_ranking_loss
from uaseg.losses.dynamics import ramp

F64 = torch.float64


def _batch(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 6, 5, generator=g, dtype=F64) * 2
    target = torch.randint(0, k, (2, 6, 5), generator=g)
    return logits, target


def _grad(t, z):
    return torch.autograd.grad(t, z, retain_graph=True)[0]


def test_ramp_by_hand():
    assert [ramp(e, 2, 4) for e in (0, 1.99, 2, 3, 5, 6, 9)] == [0, 0, 0, 0.25, 0.75, 1, 1]
    assert ramp(2, 2, 0) == 1 and ramp(1.5, 2, 0) == 0 and ramp(None, 5, 3) == 1


def test_warmup_scales_the_fixed_weight():
    logits, target = _batch(4)
    loss = UncertaintyAwareLoss(lambda_=2.0, scale=1000.0, warmup_epochs=4, start_epoch=1).double()
    _, logs = loss(logits, target, epoch=2.0)  # a quarter of the way up
    assert float(logs["rank_weight"]) == pytest.approx(500.0)
    total, logs = loss(logits, target, epoch=7.5)
    assert float(logs["rank_weight"]) == pytest.approx(2000.0)
    torch.testing.assert_close(total, logs["seg"] + 2000.0 * logs["rank"])


def test_warmup_ramps_the_balanced_term_too():
    """balance with warmup_epochs: the warm-up still ramps the term -- the gradient ratio at the logits
    is lambda x the ramp (0 at start_epoch, a quarter a quarter of the way up, then lambda)."""
    logits, target = _batch(6, seed=1)
    z = logits.clone().requires_grad_(True)
    g_seg = _grad(torch.nn.functional.cross_entropy(z, target), z)
    loss = UncertaintyAwareLoss(lambda_=0.8, balance=True, warmup_epochs=4, start_epoch=1).double()
    for epoch, mult in ((0.5, 0.0), (1.0, 0.0), (2.0, 0.25), (4.0, 0.75), (5.0, 1.0), (9.0, 1.0)):
        total, logs = loss(z, target, epoch=epoch)
        ratio = float((_grad(total, z) - g_seg).norm() / g_seg.norm())
        assert ratio == pytest.approx(0.8 * mult, rel=1e-6, abs=1e-12), epoch
        if epoch >= 1:
            assert float(logs["grad_ratio"]) == pytest.approx(0.8 * mult, rel=1e-6, abs=1e-12), epoch


@pytest.mark.parametrize("k", [2, 5])
def test_grad_ratio_is_the_ratio_of_gradient_norms_at_the_logits(k):
    logits, target = _batch(k, seed=k)
    z = logits.clone().requires_grad_(True)
    loss = UncertaintyAwareLoss(lambda_=2.0, scale=1000.0).double()
    total, logs = loss(z, target, measure=True)
    g_seg = _grad(torch.nn.functional.cross_entropy(z, target), z)
    g_all = _grad(total, z)
    expected = (g_all - g_seg).norm() / g_seg.norm()
    assert float(logs["grad_ratio"]) == pytest.approx(float(expected), rel=1e-6)
    assert "grad_ratio" not in loss(z, target, measure=False)[1]  # only when asked (it costs a backward)
    with torch.no_grad():
        assert "grad_ratio" not in loss(z, target, measure=True)[1]  # nothing to differentiate


@pytest.mark.parametrize("ratio", [0.3, 2.0])
def test_balance_makes_lambda_the_gradient_ratio_whatever_scale(ratio):
    logits, target = _batch(6, seed=1)
    z = logits.clone().requires_grad_(True)
    for scale in (1000.0, 1.0):
        loss = UncertaintyAwareLoss(lambda_=ratio, scale=scale, balance=True).double()
        total, logs = loss(z, target)
        g_seg = _grad(torch.nn.functional.cross_entropy(z, target), z)
        g_rank = _grad(total, z) - g_seg
        assert float(g_rank.norm() / g_seg.norm()) == pytest.approx(ratio, rel=1e-6)
        assert float(logs["grad_ratio"]) == pytest.approx(ratio, rel=1e-6)
        torch.testing.assert_close(total, logs["seg"] + logs["rank_weight"] * logs["rank"])


def test_balance_with_no_pair_adds_nothing():
    logits, _ = _batch(3)
    z = logits.clone().requires_grad_(True)
    total, logs = UncertaintyAwareLoss(balance=True).double()(z, logits.argmax(1))  # nothing wrong
    assert float(logs["rank_weight"]) == 0.0 and torch.isfinite(total)


def test_steer_keeps_the_value_and_sends_wrong_voxels_toward_their_label():
    k = 5
    logits, target = _batch(k, seed=3)
    plain = UncertaintyAwareLoss(lambda_=2.0, scale=1000.0).double()
    steer = UncertaintyAwareLoss(lambda_=2.0, scale=1000.0, steer=True).double()
    z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    t1, _ = plain(z1, target)
    t2, _ = steer(z2, target)
    torch.testing.assert_close(t1, t2)  # same value: the same pairs violate the margin

    # brute force: per voxel, the hinge's dL/du from the pair matrix, then the chain rule by hand
    p = logits.softmax(1)
    u = (1 - p.max(1).values).reshape(-1).clone().requires_grad_(True)
    pred, y = logits.argmax(1).reshape(-1), target.reshape(-1)
    wrong = pred != y
    (2000.0 * brute_force_ranking_loss(u[wrong], u[~wrong], 0.1)).backward()
    dl_du = u.grad  # (N,)
    pf = p.movedim(1, -1).reshape(-1, k)
    onehot = torch.nn.functional.one_hot(y, k).to(F64)
    # wrong voxel: u behaves like log p_true, d log p_true / dz = onehot - p
    expected_wrong = dl_du[:, None] * (onehot - pf)
    z0 = logits.clone().requires_grad_(True)
    g_seg = _grad(torch.nn.functional.cross_entropy(z0, target), z0).movedim(1, -1).reshape(-1, k)
    g_steer = _grad(t2, z2).movedim(1, -1).reshape(-1, k) - g_seg
    g_plain = _grad(t1, z1).movedim(1, -1).reshape(-1, k) - g_seg
    torch.testing.assert_close(g_steer[wrong], expected_wrong[wrong])
    torch.testing.assert_close(g_steer[~wrong], g_plain[~wrong])  # correct voxels untouched
    # descent raises the true class's logit on every wrong voxel the term acts on
    acts = wrong & (dl_du != 0)
    assert acts.any() and bool((-g_steer[acts] * onehot[acts]).sum(1).gt(0).all())


@pytest.mark.parametrize("option,key,value", [("loss.steer=true", "steer", True),
                                              ("loss.balance=true", "balance", True),
                                              ("loss.warmup_epochs=3", "warmup_epochs", 3)])
def test_options_reach_the_training_loss_and_the_log(make_cfg, option, key, value):
    """Config -> the instantiated loss -> a train run that logs the gradient ratio and the weight."""
    from uaseg.train import train

    cfg = make_cfg("demo3d", "loss.lambda=2", option, "test=false", "trainer.limit_val_batches=1")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/grad_ratio", "train/rank_weight", "train/rank_weighted"} <= set(header)
    ck = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["hyper_parameters"]["loss"][key] == value


@pytest.mark.parametrize("extra,column,expected", [([], "rank_weight", [0.0, 1000.0]),
                                                    (["loss.balance=true"], "grad_ratio", [0.0, 1.0])])
def test_warmup_rises_per_step_in_training(make_cfg, extra, column, expected):
    """The module hands the loss a fractional epoch: with 2 batches per epoch and a 1-epoch warm-up,
    the weight is 0 at the first step and half of lambda * scale at the second; under balance the
    gradient ratio is 0 and then half of lambda (the warm-up is kept)."""
    import csv

    from uaseg.train import train

    cfg = make_cfg("demo2d", "loss.lambda=2", "loss.warmup_epochs=1", *extra, "test=false", "trainer.limit_val_batches=1")
    train(cfg)
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))
    values = [float(r[f"train/{column}"]) for r in rows if r.get(f"train/{column}")]
    assert values == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dataset,warned", [("demo3d", True), ("demo2d", False)])
def test_a_dominating_ranking_term_is_warned_once_with_more_than_two_classes(make_cfg, caplog, dataset, warned):
    import logging

    from uaseg.train import train

    cfg = make_cfg(dataset, "loss.lambda=2", "test=false", "trainer.limit_val_batches=1")
    with caplog.at_level(logging.WARNING, logger="uaseg.losses.schedule"):
        train(cfg)
    hits = [r for r in caplog.records if "ranking term's gradient" in r.getMessage()]
    assert len(hits) == (1 if warned else 0)
