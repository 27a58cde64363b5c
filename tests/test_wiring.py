"""Wiring tests: the places where parts connect (loss -> gradients -> network, config -> loss
arguments, label file -> class index -> resampling, per-case Dice -> case-level AURC -> group
average), each checked against an independent, brute-force or hand-computed value."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datafiles import SPACING, affine_for, make_mmwhs, mmwhs_image, save_nifti
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from monai.transforms import Compose
from omegaconf import DictConfig
from scipy.stats import chi2

import uaseg.losses.uncertainty_aware as ua_mod
from uaseg.data.datasets.mmwhs import MMWHSDataModule
from uaseg.losses import random_mask_subset, uncertainty_aware_loss
from uaseg.selective import SelectiveAccumulator, SelectiveResult
from uaseg.train import build_module

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
F64 = torch.float64
LAMBDA, SCALE, MARGIN = 2.0, 1000.0, 0.1  # the paper's values, written out (not read from the code)


def _compose_train(overrides) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


# ===================================================================== 1. ranking term -> gradients
def brute_unc(logits: torch.Tensor, target: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """L_unc written out: u = 1 - max softmax, wrong/correct from argmax vs label, mean over the
    full (wrong x correct) pair matrix of relu(u_correct - u_wrong + margin)."""
    conf, pred = torch.softmax(logits, 1).max(1)
    u = (1 - conf).reshape(-1)
    t = target.reshape(-1)
    wrong = pred.reshape(-1) != t
    pairs = u[~wrong][None, :] - u[wrong][:, None] + margin  # rows: wrong j, columns: correct k
    return F.relu(pairs).mean()


def _grad_total(lam: float, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = uncertainty_aware_loss(**{"lambda": lam, "scale": SCALE, "margin": MARGIN, "sampling": "exact"})
    x = logits.clone().requires_grad_(True)
    total, _ = loss(x, target, epoch=0)
    (g,) = torch.autograd.grad(total, x)
    return g


def test_ranking_gradient_reaches_the_logits():
    """d total / d logits at lambda=2 minus at lambda=0 is exactly lambda*scale*dL_unc/dlogits of
    the pair matrix: u is not detached, lambda and scale multiply it, wrong/correct are not swapped."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=F64)
    target = torch.randint(0, 3, (2, 1, 5, 6), generator=g)
    x = logits.clone().requires_grad_(True)
    (g_unc,) = torch.autograd.grad(brute_unc(x, target), x)
    assert g_unc.abs().sum() > 0  # the input has both sets and active pairs
    diff = _grad_total(LAMBDA, logits, target) - _grad_total(0.0, logits, target)
    torch.testing.assert_close(diff, LAMBDA * SCALE * g_unc, rtol=1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_ranking_gradient_reaches_the_network_parameters(make_cfg):
    """Through the real module (DynUNet of model=unet_small, composed by Hydra, its training_step):
    parameter gradients at lambda=2 minus lambda=0 equal autograd of lambda*scale*(pair-matrix L_unc)."""
    cfg2 = make_cfg("demo2d", "loss.lambda=2.0", "loss.sampling=exact")
    cfg0 = make_cfg("demo2d", "loss.lambda=0.0")
    assert cfg2.loss.scale == SCALE and cfg2.loss.margin == MARGIN
    torch.manual_seed(0)
    m2 = build_module(cfg2).double()
    m0 = build_module(cfg0).double()
    m0.load_state_dict(m2.state_dict())
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(2, 3, 16, 16, generator=g, dtype=F64),
             "label": torch.randint(0, 2, (2, 1, 16, 16), generator=g)}

    def param_grads(module, fn):
        module.zero_grad()
        fn(module).backward()
        return [p.grad.clone() for p in module.net.parameters()]

    g2 = param_grads(m2, lambda m: m.training_step(batch, 0))  # no trainer: self.log only warns
    g0 = param_grads(m0, lambda m: m.training_step(batch, 0))
    gb = param_grads(m0, lambda m: LAMBDA * SCALE * brute_unc(m.net(batch["image"]), batch["label"]))
    assert sum(float(t.abs().sum()) for t in gb) > 0
    for a, b, ref in zip(g2, g0, gb):
        torch.testing.assert_close(a - b, ref, rtol=1e-7, atol=1e-9)



# ===================================================================== 2. subsample sizes and draw
def _compose_loss(overrides) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF / "loss"), version_base="1.3"):
        return compose("uncertainty_aware", overrides=list(overrides))


def test_subsample_sizes_go_to_the_right_sets(monkeypatch):
    """loss.sampling=subsample hands n_wrong wrong voxels and n_correct correct ones (not swapped,
    each a subset of the truly wrong / correct voxels) to the ranking term."""
    seen = []
    real = ua_mod.masked_pairwise_ranking_loss

    def spy(u, wrong, correct, margin, *args):
        seen.append((wrong.clone(), correct.clone()))
        return real(u, wrong, correct, margin, *args)

    monkeypatch.setattr(ua_mod, "masked_pairwise_ranking_loss", spy)
    n_wrong, n_correct = 7, 13
    loss = instantiate(_compose_loss(["sampling=subsample", f"n_wrong={n_wrong}", f"n_correct={n_correct}"]))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 7, 5, generator=g)
    target = torch.randint(0, 4, (2, 1, 6, 7, 5), generator=g)
    truly_wrong = (logits.argmax(1) != target[:, 0]).reshape(-1)
    assert int(truly_wrong.sum()) > 3 * n_correct and int((~truly_wrong).sum()) > 3 * n_correct
    torch.manual_seed(0)
    _, logs = loss(logits, target, epoch=0)
    (wrong, correct), = seen
    assert int(wrong.sum()) == n_wrong and int(correct.sum()) == n_correct
    assert not (wrong & ~truly_wrong).any() and not (correct & truly_wrong).any()
    # the logged set sizes are the full sets, before subsampling
    assert int(logs["n_wrong"]) == int(truly_wrong.sum())


def test_random_mask_subset_is_uniform_over_candidates():
    """2000 draws of 5 out of 40 candidates (of 100 entries): exactly 5 each time, never a
    non-candidate, and per-candidate counts pass a chi-square test against 2000*5/40 = 250.

    (Without replacement the counts are less dispersed than multinomial, so Pearson's statistic
    is conservative here; the 0.999 quantile keeps the false-alarm rate at most 1e-3, and the
    seeded generator makes the test deterministic anyway.)"""
    mask = torch.zeros(100, dtype=torch.bool)
    mask[torch.randperm(100, generator=torch.Generator().manual_seed(0))[:40]] = True
    g = torch.Generator().manual_seed(1)
    draws, k = 2000, 5
    counts = torch.zeros(100)
    for _ in range(draws):
        pick = random_mask_subset(mask, k, generator=g)
        assert int(pick.sum()) == k
        counts += pick
    assert counts[~mask].sum() == 0
    expected = draws * k / 40
    stat = float(((counts[mask] - expected) ** 2 / expected).sum())
    assert stat < chi2.ppf(0.999, df=40 - 1), stat


# ===================================================================== 3. class weights applied
MMWHS_WEIGHT = [1, 1, 1, 1, 1, 2, 1, 1.0]  # Myo (class 5) weighted 2


def _eight_class_batch(seed: int = 0):
    """Logits (2, 8, 4, 4) float64 and a target in which every class 0..7 occurs 4 times."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(2, 8, 4, 4, generator=g, dtype=F64)  # x3: weighting moves the CE by ~0.1
    target = torch.arange(32)[torch.randperm(32, generator=g)].remainder(8).reshape(2, 1, 4, 4)
    assert set(target.unique().tolist()) == set(range(8))
    return logits, target


def _weighted_ce_by_hand(logits, target, weight):
    """sum_i w[y_i] * (-log softmax(x_i)[y_i]) / sum_i w[y_i] (torch's weighted mean)."""
    logp = torch.log_softmax(logits, 1)
    y = target[:, 0]
    nll = -logp.gather(1, y[:, None])[:, 0]
    w = torch.as_tensor(weight, dtype=F64)[y]
    return (w * nll).sum() / w.sum()


def _weighted_dice_by_hand(logits, target, weight, smooth=1e-5):
    """MONAI DiceLoss(softmax, to_onehot_y, include_background, weight): per (batch, class)
    1 - (2 tp + s) / (2 tp + fp + fn + s) over space, times weight[class], mean over (batch, class)."""
    p = torch.softmax(logits, 1)
    y = F.one_hot(target[:, 0], logits.shape[1]).movedim(-1, 1).to(F64)
    tp = (p * y).sum((2, 3))
    fp = (p * (1 - y)).sum((2, 3))
    fn = ((1 - p) * y).sum((2, 3))
    f = 1 - (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    return (f * torch.as_tensor(weight, dtype=F64)).mean()


def test_ce_mmwhs_class_weights_are_applied():
    """loss/seg_loss=ce_mmwhs (composed from conf/train.yaml) weights the CE: equal to the weighted
    CE written out, and to F.cross_entropy(weight=...), and different from the unweighted CE."""
    logits, target = _eight_class_batch()
    loss = instantiate(_compose_train(["loss/seg_loss=ce_mmwhs", "loss.lambda=0"]).loss)
    total, logs = loss(logits, target, epoch=0)
    expected = _weighted_ce_by_hand(logits, target, MMWHS_WEIGHT)
    torch.testing.assert_close(expected, F.cross_entropy(logits, target[:, 0], weight=torch.tensor(MMWHS_WEIGHT, dtype=F64)))
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logs["seg"], expected, rtol=1e-12, atol=1e-12)
    unweighted = F.cross_entropy(logits, target[:, 0])
    assert abs(float(total - unweighted)) > 1e-3
    # with the ranking term on (the default lambda), the seg part is still the weighted CE
    full = instantiate(_compose_train(["loss/seg_loss=ce_mmwhs"]).loss)
    torch.testing.assert_close(full(logits, target, epoch=0)[1]["seg"], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lambda_dice", [1.0, 0.0])
def test_dice_ce_class_weights_are_applied(lambda_dice):
    """loss/seg_loss=dice_ce with loss.seg_loss.weight: lambda_dice * weighted Dice + weighted CE
    (MONAI >= 1.2 DiceCELoss passes the weight to both parts), written out by hand; lambda_dice=0
    isolates the CE part. Differs from the same config without weights."""
    logits, target = _eight_class_batch(1)
    common = ["loss/seg_loss=dice_ce", "loss.lambda=0", f"loss.seg_loss.lambda_dice={lambda_dice}"]
    # .double(): MONAI keeps the weight as a float32 buffer of its CrossEntropyLoss, which refuses
    # float64 logits; Lightning's precision plugin casts the module (and so the buffer) the same way
    weighted = instantiate(_compose_train([*common, "loss.seg_loss.weight=[1,1,1,1,1,2,1,1]"]).loss).double()
    plain = instantiate(_compose_train(common).loss).double()
    got, _ = weighted(logits, target, epoch=0)
    expected = lambda_dice * _weighted_dice_by_hand(logits, target, MMWHS_WEIGHT) + _weighted_ce_by_hand(
        logits, target, MMWHS_WEIGHT)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    unweighted = lambda_dice * _weighted_dice_by_hand(logits, target, [1.0] * 8) + F.cross_entropy(
        logits, target[:, 0])
    torch.testing.assert_close(plain(logits, target, epoch=0)[0], unweighted, rtol=1e-10, atol=1e-10)
    assert abs(float(got - unweighted)) > 1e-3


# ===================================================================== 4. label resampled nearest
def _runs(line: np.ndarray) -> list[int]:
    """Run-length classes along a line: [0, 0, 1, 1, 5, 7, 7] -> [0, 1, 5, 7]."""
    return [int(v) for i, v in enumerate(line) if i == 0 or v != line[i - 1]]


def test_mmwhs_label_resampled_nearest_keeps_thin_structures(tmp_path):
    """MM-WHS preprocessing with a real (anisotropic -> 0.5 mm isotropic) resampling: the label
    keeps integer values from the input's class set only, and a 1-voxel Myo wall between LV and
    PA (and a 1-slice AO lid on the coarse axis) keeps its class, with no class appearing between."""
    shape, spacing = (12, 10, 6), (0.8, 1.0, 2.0)
    lab = np.zeros(shape, np.int16)
    lab[2:7, 2:8, 1:4] = 500  # LV   -> 1
    lab[7, 2:8, 1:4] = 205    # Myo  -> 5, one voxel thick (0.8 mm), between LV and PA
    lab[8:11, 2:8, 1:4] = 850  # PA  -> 7
    lab[2:7, 2:8, 4] = 820    # AO   -> 6, one slice (2 mm) on top of LV
    folder = tmp_path / "ct_train"
    folder.mkdir()
    aff = affine_for(spacing=spacing, shape=shape)
    case = {"case_id": "1001", "group": "ct",
            "image": str(save_nifti(mmwhs_image(lab), aff, folder / "ct_train_1001_image.nii.gz")),
            "label": str(save_nifti(lab, aff, folder / "ct_train_1001_label.nii.gz"))}
    dm = MMWHSDataModule(root=str(tmp_path), patch_size=(8, 8, 8), spacing=(0.5, 0.5, 0.5), cache=False,
                         num_workers=0, batch_size=1)
    out = dm.eval_transforms()(dict(case))["label"][0].numpy()
    assert all(o >= 1.5 * n for o, n in zip(out.shape, shape))  # really resampled (x1.6, x2, x4)
    assert set(np.unique(out).tolist()) == {0, 1, 5, 6, 7}
    # before the final int64 cast the label already holds whole numbers
    raw = Compose(dm._deterministic())(dict(case))["label"][0]
    np.testing.assert_array_equal(np.asarray(raw), np.round(np.asarray(raw)))
    # along x through the middle of the structures: background, LV, Myo, PA, background
    ys, zs = np.nonzero((out == 1).any(0))
    y, z = int(np.median(ys)), int(np.median(zs))
    assert _runs(out[:, y, z]) == [0, 1, 5, 7, 0]
    assert 1 <= int((out[:, y, z] == 5).sum()) <= 3  # 0.8 mm at 0.5 mm
    # along z (the coarse axis) through the LV: background, LV, AO lid, background
    xs = np.nonzero((out == 1).any((1, 2)))[0]
    assert _runs(out[int(np.median(xs)), y, :]) == [0, 1, 6, 0]


# ===================================================================== 5. value -> class mapping
#: released value(s) of each class 1..7, written out here (not imported from uaseg)
RELEASED = {1: (500,), 2: (600,), 3: (420, 421), 4: (550,), 5: (205,), 6: (820,), 7: (850,)}  # LV RV LA RA Myo AO PA


def test_mmwhs_classes_have_the_voxel_counts_of_their_released_values(tmp_path):
    """After the real preprocessing (native spacing, so no resampling), class k has exactly as
    many voxels as its released value in the raw file (LA including the stray 421). The fixture
    gives every structure a different size, so any swap in the mapping changes a count."""
    root = make_mmwhs(tmp_path / "MM-WHS", ids=(1002,), with_421=1002, flipped=None, plain_nii=None,
                      with_test=False)
    img, lab = (root / "ct_train" / f"ct_train_1002_{k}.nii.gz" for k in ("image", "label"))
    raw = np.asarray(nib.load(lab).dataobj)
    want = {k: int(np.isin(raw, vals).sum()) for k, vals in RELEASED.items()}
    assert len(set(want.values())) == 7 and int((raw == 421).sum()) > 0  # the fixture can tell a swap
    dm = MMWHSDataModule(root=str(root), patch_size=(16, 16, 16), spacing=SPACING, cache=False,
                         num_workers=0, batch_size=1)
    out = dm.eval_transforms()({"case_id": "1002", "group": "ct", "image": str(img), "label": str(lab)})
    got = {k: int((out["label"] == k).sum()) for k in RELEASED}
    assert got == want


# ===================================================================== 6. case-level AURC, groups
# Four cases of 4 voxels, 2 classes; label y = [1, 1, 0, 0] in all; u in units of 1/32 (exact).
#   case  group  pred          u (x32)         wrong voxels        TP FP FN  Dice   risk  mean u (x32)
#   A1    testA  [1, 1, 0, 0]  [1, 2, 3, 4]    none                 2  0  0  1      0     2.5
#   A2    testA  [1, 0, 0, 0]  [7, 14, 9, 11]  #1 FN (u 14)         1  0  1  2/3    1/3   10.25
#   A3    testA  [1, 0, 1, 0]  [5, 12, 10, 6]  #1 FN (12), #2 FP (10) 1 1 1  1/2    1/2   8.25
#   B1    testB  [0, 0, 1, 1]  [13, 15, 8, 16] all                  0  2  2  0      1     13
HAND_CASES = [
    ("A1", "testA", [1, 1, 0, 0], [1, 2, 3, 4]),
    ("A2", "testA", [1, 0, 0, 0], [7, 14, 9, 11]),
    ("A3", "testA", [1, 0, 1, 0], [5, 12, 10, 6]),
    ("B1", "testB", [0, 0, 1, 1], [13, 15, 8, 16]),
]

# Case-level AURC over all four (fd-shifts selective risk): keep the LEAST uncertain cases, i.e.
# ascending mean u: A1 (r 0), A3 (r 1/2), A2 (r 1/3), B1 (r 1); cumulative risk 0, 1/2, 5/6, 11/6;
# selective risk at coverage 1/4, 2/4, 3/4, 1: 0, 1/4, 5/18, 11/24; anchor (0, 0) = last risk.
# Trapezoids of width 1/4: 1/8 * [(11/24 + 5/18) + (5/18 + 1/4) + (1/4 + 0) + (0 + 0)]
#   = 1/8 * (33 + 20 + 20 + 18 + 18) / 72 = 109/576  ->  18.92 %
CASE_AURC = 100 * 109 / 576
# The wrong direction (most uncertain kept first): B1 (1), A2 (1/3), A3 (1/2), A1 (0); selective
# risk at 1/4..1: 1, 2/3, 11/18, 11/24; anchor (0, 1): 1/8 * (77 + 92 + 120 + 144) / 72 = 433/576.
CASE_AURC_REVERSED = 100 * 433 / 576
# Group A alone: A1 (0), A3 (1/2), A2 (1/3) -> selective 0, 1/4, 5/18 at 1/3, 2/3, 1; anchor (0, 0):
# 1/6 * [(5/18 + 1/4) + (1/4 + 0) + 0] = 1/6 * 28/36 = 7/54. Group B (one case): risk 1 flat -> 1.
CASE_AURC_A, CASE_AURC_B = 100 * 7 / 54, 100.0

# Dice curve of group A (12 voxels, threshold global to the group), referral by u descending:
#   refer 14 (A2 FN fixed: A2 -> 1)         cov 11/12  Dice (1, 1, 1/2)   mean 5/6    risk 1/6
#   refer 12 (A3 FN fixed: TP2 FP1 -> 4/5)  cov 10/12  Dice (1, 1, 4/5)   mean 14/15  risk 1/15
#   refer 11 (correct voxel)                cov  9/12                                risk 1/15
#   refer 10 (A3 FP fixed: A3 -> 1)         cov  8/12                                risk 0
# full coverage: mean (1 + 2/3 + 1/2)/3 = 13/18, risk 5/18. Area, widths 1/12:
#   1/24 * [(5/18 + 1/6) + (1/6 + 1/15) + (1/15 + 1/15) + (1/15 + 0)] = 1/24 * 79/90 = 79/2160
# at coverage 0.90 (10.8 of 12 -> nearest achievable 11): 5/6; at 0.75 (exactly 9): 14/15.
DICE_A = {"aurc": 100 * 79 / 2160, "full": 13 / 18, "0.90": 5 / 6, "0.75": 14 / 15}
# Group B (B1 alone), referral 16 (FP), 15 (FN), 13 (FN), 8 (FP):
#   cov 1: TP0 FP2 FN2 -> 0; 3/4: FP1 -> 0; 2/4: TP1 FP1 FN1 -> 1/2; 1/4: TP2 FP1 -> 4/5; 0: 1.
#   risk 1, 1, 1/2, 1/5, 0: area 1/8 * [(1 + 1) + (1 + 1/2) + (1/2 + 1/5) + (1/5 + 0)] = 4.4/8
# at 0.90 (3.6 of 4 -> 4) and 0.75 (3 -> refers the FP only): Dice 0.
DICE_B = {"aurc": 55.0, "full": 0.0, "0.90": 0.0, "0.75": 0.0}


def _hand_result() -> SelectiveResult:
    acc = SelectiveAccumulator(num_classes=2, coverages=(0.90, 0.75), bootstrap=0)
    for cid, group, pred, u32 in HAND_CASES:
        acc.add_case(np.array(u32, np.float32) / 32, np.array(pred), np.array([1, 1, 0, 0]), cid, group=group)
    return acc.compute()


def test_case_level_aurc_by_hand():
    """Case-level AURC ranks cases by mean uncertainty (higher referred first) against risk
    1 - Dice, with fd-shifts' selective-risk curve; the reversed direction gives another number."""
    r = _hand_result()
    assert r.dice_full.mean == pytest.approx((1 + 2 / 3 + 1 / 2 + 0) / 4)  # = 13/24
    assert [c.uncertainty["mean"] * 32 for c in r.cases] == [2.5, 10.25, 8.25, 13.0]
    assert r.case_level.aurc == pytest.approx(CASE_AURC, abs=1e-9)
    # the reversed hand value is what the same curve gives for -u: the direction is pinned down
    from uaseg.selective.case_level import case_level_aurc

    mean_u, risk = np.array([2.5, 10.25, 8.25, 13.0]), np.array([0, 1 / 3, 1 / 2, 1])
    assert case_level_aurc(-mean_u, risk, bootstrap=0)["aurc"] == pytest.approx(CASE_AURC_REVERSED, abs=1e-9)
    assert abs(CASE_AURC - CASE_AURC_REVERSED) > 50
    assert r.groups["testA"].case_level.aurc == pytest.approx(CASE_AURC_A, abs=1e-9)
    assert r.groups["testB"].case_level.aurc == pytest.approx(CASE_AURC_B, abs=1e-9)


def test_group_numbers_and_plain_group_average_by_hand():
    """Each group's Dice numbers (threshold global within the group) by hand, and group_average
    their plain mean (GlaS: parts A and B averaged), not a mean weighted by case count (3 vs 1)."""
    r = _hand_result()
    for g, want in (("testA", DICE_A), ("testB", DICE_B)):
        res = r.groups[g]
        assert res.n_cases == (3 if g == "testA" else 1)
        assert res.aurc_dice == pytest.approx(want["aurc"], abs=1e-9), g
        assert res.dice_full.mean == pytest.approx(want["full"], abs=1e-12), g
        for key in ("0.90", "0.75"):
            assert res.at_coverage[key].dice_mean == pytest.approx(want[key], abs=1e-12), (g, key)
    avg = r.group_average
    assert set(avg.dice_mean) == {"0.90", "0.75"}
    assert avg.aurc_dice == pytest.approx((DICE_A["aurc"] + DICE_B["aurc"]) / 2, abs=1e-9)
    assert avg.dice_full_mean == pytest.approx(13 / 36, abs=1e-12)  # (13/18 + 0) / 2
    assert avg.dice_mean["0.90"] == pytest.approx(5 / 12, abs=1e-12)  # (5/6 + 0) / 2
    assert avg.dice_mean["0.75"] == pytest.approx(7 / 15, abs=1e-12)  # (14/15 + 0) / 2
    # weighted by case count it would be (3 * 13/18 + 0) / 4 = 13/24, the pooled mean
    assert avg.dice_full_mean != pytest.approx(r.dice_full.mean)
