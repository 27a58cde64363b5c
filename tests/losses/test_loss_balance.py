"""loss.balance (issue 27): lambda is the gradient ratio, and the balanced weight is bounded -- never
above the paper's lambda x 1000, no float32 underflow, a fade-out as the ranking is satisfied, no logit
pushed over PEAK x lambda x the largest cross-entropy logit gradient. Crafted logits for each; the
weight is checked against a by-hand float64 computation of the documented formula."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from hydra.utils import instantiate

from uaseg.errors import ConfigError
from uaseg.losses import UncertaintyAwareLoss
from uaseg.losses.dynamics import FADE_BELOW, PAPER_SCALE, PEAK

F32 = torch.float32


def _grads(loss, z, target):
    """Gradients at the logits of the segmentation term and of the unweighted ranking term (float64)."""
    z64 = z.detach().double().requires_grad_(True)
    plain = UncertaintyAwareLoss(lambda_=1.0, scale=1.0, steer=loss.steer, seg_loss=loss.seg_loss).double()
    total, logs = plain(z64, target)
    g_seg = torch.autograd.grad(loss.seg_loss(z64, target), z64, retain_graph=True)[0]
    g_unit = torch.autograd.grad(total, z64)[0] - g_seg
    return g_seg, g_unit, float(logs["rank"])


def _by_hand(loss, z, target):
    """The documented weight: min(l ||g_seg||/||g_unit||, PEAK l max|g_seg|/max|g_unit|, l 1000) x fade."""
    g_seg, g_unit, rank = _grads(loss, z, target)
    lam = loss.lambda_
    unfaded = min(lam * float(g_seg.norm() / g_unit.norm()),
                  PEAK * lam * float(g_seg.abs().max() / g_unit.abs().max()), lam * PAPER_SCALE)
    return unfaded, unfaded * min(1.0, rank / FADE_BELOW), g_seg, g_unit, rank


def _voxels(conf_logit: list[float], pred: list[int], target: list[int], k: int = 4):
    """Logits (1, k, n) with ``conf_logit[i]`` on class ``pred[i]`` (0 elsewhere) and the target (1, n)."""
    z = torch.zeros(1, k, len(pred), dtype=F32)
    for i, (a, p) in enumerate(zip(conf_logit, pred)):
        z[0, p, i] = a
    return z.requires_grad_(True), torch.tensor([target])


def test_confidently_wrong_voxels_without_steer_hit_the_paper_cap():
    """u = 1 - max p has almost no gradient on confident voxels: the uncapped ratio-matching weight is
    above 1e7 here; the weight is the paper's lambda x 1000 instead."""
    n_wrong, n_right = 6, 10
    z, target = _voxels([22.0] * n_wrong + [19.0] * n_right, [0] * 16, [1] * n_wrong + [0] * n_right)
    loss = UncertaintyAwareLoss(lambda_=2.0, balance=True)
    total, logs = loss(z, target)
    g_seg, g_unit, _ = _grads(loss, z, target)
    assert 2.0 * float(g_seg.norm() / g_unit.norm()) > 1e7  # what the weight was before issue 27
    assert float(logs["rank_weight"]) == pytest.approx(2.0 * PAPER_SCALE, rel=1e-5)
    assert math.isfinite(float(total.detach())) and float(logs["grad_ratio"]) < 1


def test_a_tiny_segmentation_gradient_neither_underflows_nor_overflows():
    """A segmentation term whose logit gradients are ~1e-32: their squares are 0 in float32, so a plain
    norm is 0 and the weight was 0 (the term silently off). From log norms it is the asked ratio."""
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(2, 6, 6, 5, generator=g) * 2).requires_grad_(True)
    target = torch.randint(0, 6, (2, 6, 5), generator=g)
    ce = torch.nn.CrossEntropyLoss()
    loss = UncertaintyAwareLoss(lambda_=0.5, balance=True, seg_loss=lambda x, t: 1e-30 * ce(x, t))
    g_seg32 = torch.autograd.grad(loss.seg_loss(z, target), z)[0]
    assert float(g_seg32.abs().max()) > 0 and float(torch.linalg.vector_norm(g_seg32)) == 0.0  # the trap
    total, logs = loss(z, target)
    _, expected, *_ = _by_hand(loss, z, target)
    weight = float(logs["rank_weight"])
    assert 0 < weight < 1e-20 and math.isfinite(float(total.detach()))
    assert weight == pytest.approx(expected, rel=1e-4)
    assert float(logs["grad_ratio"]) == pytest.approx(0.5, rel=1e-4)
    g = torch.autograd.grad(total, z)[0]
    assert torch.isfinite(g).all() and float((g - g_seg32).abs().max()) > 0  # the term acts


def test_a_nearly_satisfied_ranking_fades_and_pushes_no_logit_harder_than_peak_times_ce():
    """One (wrong, correct) pair of 2613 violates the margin a little (L_unc ~ 1e-4 < FADE_BELOW): without
    the bounds the whole budget of lambda x ||g_seg|| lands on those two voxels (many times the largest CE
    logit gradient). The weight fades by L_unc / FADE_BELOW and no logit gets over PEAK x lambda x max CE."""
    right = [6.0, 5.0, 4.5, 4.0] * 3  # confident correct voxels, u < 0.05
    z, target = _voxels(right + [3.0] + [1.0] * 200 + [2.176], [0] * 214, [0] * 13 + [1] * 201, k=3)
    # voxel 12: correct, u = 0.091; voxels 13-212: wrong, u = 0.42, more than the margin above every correct
    # voxel; voxel 213: wrong, u = 0.185, 0.006 short of the margin above voxel 12 only: one violating pair
    lam = 1.0
    loss = UncertaintyAwareLoss(lambda_=lam, balance=True, steer=True)
    total, logs = loss(z, target)
    unfaded, expected, g_seg, g_unit, rank = _by_hand(loss, z, target)
    assert 0 < rank < FADE_BELOW / 2
    ratio_only = lam * float(g_seg.norm() / g_unit.norm()) * float(g_unit.abs().max() / g_seg.abs().max())
    assert ratio_only > 2 * PEAK * lam  # the ratio alone would push one logit that hard
    assert float(logs["rank_weight"]) == pytest.approx(expected, rel=1e-4)
    assert expected == pytest.approx(unfaded * rank / FADE_BELOW, rel=1e-9)
    g_rank = float(logs["rank_weight"]) * g_unit
    assert float(g_rank.abs().max()) <= PEAK * lam * float(g_seg.abs().max()) * (1 + 1e-6)


def _multiclass(tmp_path: Path, *extra: str):
    import uaseg.config.resolvers  # noqa: F401  (${uaseg.divide:...}: the preset's warm-up)

    cfg = compose_cfg(["dataset=demo3d", "loss=multiclass", *extra], tmp_path / "run", tmp_path / "cache")
    return instantiate(cfg.loss)


def test_lambda_is_the_strength_under_loss_multiclass(tmp_path):
    """Two lambdas under loss=multiclass give different weights and ratios (before issue 27 they were
    identical to the last digit); the preset's lambda 3 is a ratio of 3 (the warm-up is per epoch, off here)."""
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(2, 8, 4, 4, 4, generator=g) * 2).requires_grad_(True)
    target = torch.randint(0, 8, (2, 4, 4, 4), generator=g)
    logs = {lam: _multiclass(tmp_path, f"loss.lambda={lam}")(z, target)[1] for lam in (0.5, 2)}
    assert float(logs[2]["rank_weight"]) == pytest.approx(4 * float(logs[0.5]["rank_weight"]), rel=1e-5)
    assert float(logs[0.5]["grad_ratio"]) == pytest.approx(0.5, rel=1e-4)
    assert float(logs[2]["grad_ratio"]) == pytest.approx(2.0, rel=1e-4)
    default = _multiclass(tmp_path)
    assert default.balance is True and default.lambda_ == 3.0
    assert float(default(z, target)[1]["grad_ratio"]) == pytest.approx(3.0, rel=1e-4)


@pytest.mark.parametrize("override,message", [
    ("loss.scale=10", "loss.scale=10: no effect under loss.balance=true, where loss.lambda=3 is the gradient ratio"),
    ("loss.balance=0.5", "loss.balance=0.5: expected true or false; under balance loss.lambda is the gradient ratio "
                         "(loss.balance=true loss.lambda=0.5)"),
])
def test_a_key_without_effect_under_balance_is_refused(make_cfg, override, message):
    from uaseg.train import train

    cfg = make_cfg("demo2d", "loss=multiclass", override)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not Path(cfg.paths.output_dir).exists()
    train_ok = make_cfg("demo2d", "loss=multiclass", "loss.balance=false", "loss.scale=10")
    from uaseg.config.check import check_config

    check_config(train_ok)  # the paper's fixed weight: scale counts there


def test_the_report_names_balance_arms_by_lambda_not_scale():
    """A report tells balance arms apart by lambda (their scale has no effect and is not shown), and runs
    from before issue 27 (balance null) read as the paper's fixed weight."""
    from types import SimpleNamespace

    from uaseg.report.grouping import describe_loss, loss_of

    base = {"lambda": 3.0, "margin": 0.1, "scale": 1000.0, "sampling": "exact", "steer": True}
    balanced = describe_loss(loss_of(SimpleNamespace(identity={**base, "balance": True})))
    assert "λ=3" in balanced and "scale" not in balanced and "balance=True" in balanced
    old = describe_loss(loss_of(SimpleNamespace(identity={**base, "balance": None})))
    assert "scale=1000" in old and "balance" not in old
    # runs from before loss.score_temperature join the arm of the same runs made with it at 1
    new = loss_of(SimpleNamespace(identity={**base, "balance": True, "score_temperature": 1.0}))
    assert loss_of(SimpleNamespace(identity={**base, "balance": True})) == new
    hot = describe_loss(loss_of(SimpleNamespace(identity={**base, "balance": True, "score_temperature": 4})))
    assert "score_temperature=4" in hot and "score_temperature" not in describe_loss(new)


def test_a_lambda_sweep_with_scale_under_balance_is_refused_before_any_job(tmp_path):
    """A multirun checks every job before the first starts: a loss.scale sweep under balance (whose arms
    would be identical) exits 1 with the one line, and no job folder is made."""
    import os
    import subprocess
    import sys

    root, sweep = Path(__file__).resolve().parents[2], tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path}/cache",
           "loss=multiclass", "loss.scale=1000,10", "trainer.max_epochs=1", "model=unet_small", "dataset.num_cases=10",
           "dataset.image_size=48", "dataset.patch_size=[32,32]", "trainer.limit_train_batches=1",
           "trainer.limit_val_batches=1", "test=false", "callbacks.progress_bar=null"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "loss.scale=10: no effect under loss.balance=true" in proc.stderr + proc.stdout
    assert not sweep.exists() or not any(p.is_dir() for p in sweep.iterdir())


def test_a_checkpoint_made_while_balance_was_the_ratio_still_builds_with_that_ratio():
    """Before balance became a switch, ``balance: 1.0`` was the ratio and ``lambda: 2`` only switched the
    term on; such stored hyper-parameters build the loss they meant (λ = the old ratio)."""
    from uaseg.losses import uncertainty_aware_loss

    old = uncertainty_aware_loss(**{"lambda": 2.0, "balance": 0.5, "steer": True})
    assert old.balance is True and old.lambda_ == 0.5
    assert uncertainty_aware_loss(**{"lambda": 2.0, "balance": True}).lambda_ == 2.0
