"""Datasets nnU-Net accepts that uaseg used to refuse: an RGB ``_0000.png`` holding the channels R, G,
B; a label whose origin or direction differs slightly from its image's; nnU-Net's ``ignore`` label
(unannotated voxels: no part in the loss, the ranking term, the selective metrics or risk control).
Each is checked against numbers computed independently here (brute force on random inputs)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from layoutfiles import CT_SPACINGS, affine_for, make_decathlon, make_nnunet_2d, make_nnunet_3d, save_nifti, write_json
from PIL import Image

from uaseg.errors import ConfigError, DatasetError, PredictError, first_cause
from uaseg.train import build_datamodule, build_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_dataset.py"


def dm_of(make_cfg, root: Path, *extra: str):
    cfg = make_cfg("nnunet", f"dataset.root={root}", "dataset.num_workers=0", "dataset.cache=false", *extra)
    return build_datamodule(cfg.dataset), cfg


def case_of(dm, cid: str) -> dict:
    dm.setup()
    return dict(next(c for s in dm.splits.values() for c in s if c["case_id"] == cid))


def zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.mean()) / x.std()


# ------------------------------------------------------------------------------------------ RGB PNG
def test_an_rgb_png_is_the_three_channels_like_three_grayscale_files(tmp_path, make_cfg):
    rgb = make_nnunet_2d(tmp_path / "Dataset004_Rgb", channels="rgb", n_test=0)
    split = make_nnunet_2d(tmp_path / "Dataset006_Split", channels="rgb-split", n_test=0)
    dm, cfg = dm_of(make_cfg, rgb)
    assert cfg.dataset.meta.in_channels == 3 and build_module(cfg).net.in_channels == 3
    case = case_of(dm, "img_001")
    assert case["image"] == str(rgb / "imagesTr" / "img_001_0000.png")  # one file, not a list of three
    out = dm.eval_transforms()(case)["image"].numpy()
    raw = np.asarray(Image.open(case["image"]))  # (height, width, 3); MONAI reads (channel, width, height)
    assert out.shape[0] == 3
    (w, h), (pw, ph) = (raw.shape[1], raw.shape[0]), out.shape[1:]
    inner = out[:, (pw - w) // 2: (pw - w) // 2 + w, (ph - h) // 2: (ph - h) // 2 + h]  # padded symmetrically
    for c in range(3):  # channel names R, G, B: per-case z-score each, as nnU-Net
        np.testing.assert_allclose(inner[c], zscore(raw[..., c]).T, atol=1e-4)
    # one grayscale file per channel keeps working, and reads the same numbers
    dm2, _ = dm_of(make_cfg, split)
    case2 = case_of(dm2, "img_001")
    assert [Path(f).name for f in case2["image"]] == [f"img_001_000{c}.png" for c in range(3)]
    np.testing.assert_allclose(dm2.eval_transforms()(case2)["image"].numpy(), out, atol=1e-5)


@pytest.mark.parametrize("names,mode,expected", [
    ({"0": "R", "1": "G"}, "RGB", "a 3-channel (RGB) image, but channel_names lists 2 channel(s) (R, G)"),
    ({"0": "gray"}, "RGB", "a 3-channel (RGB) image, but channel_names lists 1 channel(s)"),
    ({"0": "R", "1": "G", "2": "B"}, "RGBA", "image mode 'RGBA' is neither single-channel (grayscale) nor RGB"),
])
def test_a_png_whose_channels_disagree_with_channel_names_is_one_line_naming_it(tmp_path, make_cfg, names, mode, expected):
    root = make_nnunet_2d(tmp_path / "Dataset004_Rgb", channels="rgb", n_test=0)
    bad = root / "imagesTr" / "img_000_0000.png"
    Image.open(bad).convert(mode).save(bad)
    d = __import__("json").loads((root / "dataset.json").read_text())
    write_json(root / "dataset.json", {**d, "channel_names": names})
    with pytest.raises(DatasetError) as e:
        dm_of(make_cfg, root)
    message = str(e.value)
    assert message.startswith(f"{bad}: ") and expected in message and "\n" not in message, message


def test_prediction_takes_an_rgb_file_as_a_whole_case(tmp_path, make_cfg):
    root = make_nnunet_2d(tmp_path / "Dataset004_Rgb", channels="rgb")
    dm, _ = dm_of(make_cfg, root)
    ts = root / "imagesTs" / "img_005_0000.png"
    plain = tmp_path / "photo.png"
    plain.write_bytes(ts.read_bytes())
    assert dm.prediction_cases([ts, plain]) == [("img_005", [ts]), (None, [plain])]
    gray = tmp_path / "gray_0000.png"
    Image.open(ts).convert("L").save(gray)  # one grayscale file of three channels: G and B are missing
    with pytest.raises(PredictError, match=r"case gray: channel 1 \(G\) file .*gray_0001.png is missing"):
        dm.prediction_cases([gray])


# ------------------------------------------------------------------------------ origin / direction
def _tilted(affine: np.ndarray, degrees: float, shift_mm: float) -> np.ndarray:
    """``affine`` rotated by ``degrees`` about the z axis (spacing kept) and its origin moved."""
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    out = affine.copy()
    out[:3, :3] = rot @ affine[:3, :3]
    out[:3, 3] += shift_mm
    return out


def test_a_label_with_a_shifted_origin_warns_once_and_takes_the_image_grid(tmp_path, make_cfg, caplog):
    root = make_nnunet_3d(tmp_path / "Dataset001_CT", n_test=0)
    label = root / "labelsTr" / "case_000.nii.gz"
    lab = np.asarray(nib.load(label).dataobj)
    aff = affine_for(CT_SPACINGS[0])
    save_nifti(lab, _tilted(aff, degrees=1.0, shift_mm=0.5), label)
    # below the tolerance (1e-3 mm, 1e-4 in direction cosines) a grid is the same grid: silent
    quiet = root / "labelsTr" / "case_001.nii.gz"
    save_nifti(np.asarray(nib.load(quiet).dataobj), _tilted(affine_for(CT_SPACINGS[1]), 0.0, 5e-4), quiet)
    with caplog.at_level(logging.WARNING):
        dm, _ = dm_of(make_cfg, root)
        case = case_of(dm, "case_000")
        out = dm.eval_transforms()(case)
        dm.eval_transforms()(case)
    image = root / "imagesTr" / "case_000_0000.nii.gz"
    warnings = [r.getMessage() for r in caplog.records if str(label) in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per case, however often it is read
    assert str(image) in warnings[0] and "origin by up to 0.5 mm" in warnings[0]
    assert f"direction cosines by up to {np.sin(np.deg2rad(1.0)):.4g}" in warnings[0]  # sin 1 degree
    assert not any("case_001.nii.gz" in r.getMessage() for r in caplog.records)
    # the label is used on the image's grid: same affine, voxels as stored (case_000 is not resampled)
    np.testing.assert_allclose(out["label"].affine.numpy(), out["image"].affine.numpy())
    np.testing.assert_array_equal(out["label"][0].numpy(), lab)


def test_a_label_with_another_spacing_is_refused_naming_both_files(tmp_path, make_cfg):
    root = make_nnunet_3d(tmp_path / "Dataset001_CT", n_test=0)
    label = root / "labelsTr" / "case_002.nii.gz"
    save_nifti(np.asarray(nib.load(label).dataobj), affine_for((1.0, 1.2, 2.002)), label)
    with pytest.raises(DatasetError) as e:
        dm_of(make_cfg, root)
    assert str(root / "imagesTr" / "case_002_0000.nii.gz") in str(e.value) and str(label) in str(e.value)
    assert "different voxel spacings: 1 x 1.2 x 2 vs 1 x 1.2 x 2.002 mm" in str(e.value)


# ------------------------------------------------------------------------------------- ignore label
def test_the_ignore_label_reaches_the_loss_the_metrics_and_the_crops(tmp_path, make_cfg):
    root = make_nnunet_2d(tmp_path / "Dataset005_Sparse", ignore=True, n_test=0)
    dm, cfg = dm_of(make_cfg, root)
    assert cfg.dataset.meta.num_classes == 3 and cfg.dataset.meta.ignore_label == 3
    module = build_module(cfg)
    assert module.net.out_channels == 3 and module.ignore_label == 3  # no output for "ignore"
    assert module.loss.ignore_index == 3 and module.loss.seg_loss.ignore_index == 3
    assert module.val_metric._acc.ignore_index == 3 and all(m._acc.ignore_index == 3 for m in module.test_metrics.values())
    from uaseg.config.check import check_config

    for key in ("loss.ignore_index", "loss.seg_loss.ignore_index"):  # refused with the values, before any work
        with pytest.raises(ConfigError, match=rf"{key}=null: the dataset marks unannotated voxels with its ignore label 3"):
            check_config(make_cfg("nnunet", f"dataset.root={root}", f"{key}=null"))
    # training patches are centred on annotated voxels only
    from uaseg.data.formats.layout_transforms import AnnotatedIndicesd

    lab = torch.as_tensor(np.asarray(Image.open(root / "labelsTr" / "img_000.png")).T[None].copy())
    d = AnnotatedIndicesd("label", 3)({"label": lab})
    flat = lab.reshape(-1)
    assert set(flat[d["label_fg_indices"]].tolist()) == {1, 2} and set(flat[d["label_bg_indices"]].tolist()) == {0}
    assert len(d["label_fg_indices"]) + len(d["label_bg_indices"]) == int((flat != 3).sum())
    # the ignore value passes the label check and stays in the label; a value above it is refused
    assert dm.eval_transforms()(case_of(dm, "img_000"))["label"].max() == 3
    bad = root / "labelsTr" / "img_001.png"
    Image.fromarray(np.minimum(np.asarray(Image.open(bad)) * 2, 4).astype(np.uint8), "L").save(bad)
    with pytest.raises(Exception) as e:  # MONAI wraps it; the cause is ours
        dm.eval_transforms()(case_of(dm, "img_001"))
    assert "img_001.png: unexpected label values [4]; allowed are [0, 1, 2, 3]" in str(first_cause(e.value, DatasetError))


@pytest.mark.parametrize("labels,expected", [
    ({"background": 0, "a": 1, "ignore": 5}, "the 'ignore' label must be the highest label value, 2"),
    ({"background": 0, "a": 1, "ignore": 1}, "label 'ignore' must have its own integer value"),
    ({"background": 0, "a": [1, 2], "ignore": 3}, "label 'a' is a region"),
])
def test_a_bad_ignore_label_is_one_line(tmp_path, make_cfg, labels, expected):
    root = make_nnunet_2d(tmp_path / "Dataset005_Sparse", ignore=True, n_test=0)
    d = __import__("json").loads((root / "dataset.json").read_text())
    write_json(root / "dataset.json", {**d, "labels": labels})
    with pytest.raises(DatasetError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        dm_of(make_cfg, root)


def _random_case(seed: int, k: int = 3, shape=(2, 12, 10)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], k, *shape[1:], generator=g)
    target = torch.randint(0, k + 1, (shape[0], 1, *shape[1:]), generator=g)  # k = the ignore label
    return logits, target


def test_segmentation_losses_leave_ignored_voxels_out():
    from uaseg.losses import CrossEntropy, DiceCE

    k = 3
    for seed in range(3):
        logits, target = _random_case(seed)
        valid = target[:, 0] != k
        w = torch.tensor([1.0, 2.0, 0.5])
        # CE by hand: weighted mean of -log p_y over annotated voxels
        logp = torch.log_softmax(logits, 1).movedim(1, -1)[valid]
        y = target[:, 0][valid]
        by_hand = -(w[y] * logp.gather(1, y[:, None])[:, 0]).sum() / w[y].sum()
        torch.testing.assert_close(CrossEntropy(weight=w.tolist(), ignore_index=k)(logits, target), by_hand)
        # Dice + CE with ignored columns == plain Dice + CE on the image without them
        cut = target.clamp(max=k - 1)
        cut[..., 7:] = k
        masked = DiceCE(ignore_index=k)(logits, cut)
        plain = DiceCE()(logits[..., :7], cut[..., :7])
        torch.testing.assert_close(masked, plain)
    # an all-ignored batch gives 0 (torch's mean gives NaN), still attached to the graph
    logits = torch.randn(1, k, 4, 4, requires_grad=True)
    for loss in (CrossEntropy(ignore_index=k), DiceCE(ignore_index=k, include_background=False)):
        out = loss(logits, torch.full((1, 1, 4, 4), k))
        assert torch.isfinite(out) and out.requires_grad
    assert float(CrossEntropy(ignore_index=k)(logits, torch.full((1, 1, 4, 4), k))) == 0.0


def test_ranking_term_exact_and_subsampled_pairs_only_annotated_voxels(monkeypatch):
    import uaseg.losses.uncertainty_aware as ua
    from uaseg.losses import UncertaintyAwareLoss
    from uaseg.losses.ranking import brute_force_ranking_loss

    k = 3
    for seed in range(4):
        logits, target = _random_case(seed, shape=(2, 9, 7))
        u = 1 - torch.softmax(logits.double(), 1).max(1).values.reshape(-1)
        pred, t = logits.argmax(1).reshape(-1), target.reshape(-1)
        valid = t != k
        brute = brute_force_ranking_loss(u[valid & (pred != t)], u[valid & (pred == t)], 0.1)
        _, logs = UncertaintyAwareLoss(ignore_index=k)(logits, target)
        torch.testing.assert_close(logs["rank"].double(), brute, rtol=1e-5, atol=1e-8)
        assert int(logs["n_wrong"] + logs["n_correct"]) == int(valid.sum())
        # subsampled: every drawn voxel is annotated; with room for all it is the exact term
        seen = []
        real = ua.masked_pairwise_ranking_loss
        monkeypatch.setattr(ua, "masked_pairwise_ranking_loss", lambda u_, w_, c_, *a: seen.append((w_, c_)) or real(u_, w_, c_, *a))
        _, logs = UncertaintyAwareLoss(ignore_index=k, sampling="subsample", n_wrong=5, n_correct=7)(logits, target)
        wrong, correct = seen[-1]
        assert not (wrong & ~valid).any() and not (correct & ~valid).any()
        assert int(wrong.sum()) == min(5, int((valid & (pred != t)).sum())) and int(correct.sum()) == min(7, int((valid & (pred == t)).sum()))
        _, logs = UncertaintyAwareLoss(ignore_index=k, sampling="subsample", n_wrong=10**6, n_correct=10**6)(logits, target)
        torch.testing.assert_close(logs["rank"].double(), brute, rtol=1e-5, atol=1e-8)
        monkeypatch.undo()


def _dice_by_hand(pred: np.ndarray, label: np.ndarray, k: int) -> float:
    scores = []
    for c in range(1, k):
        p, y = pred == c, label == c
        if p.any() or y.any():
            scores.append(2 * (p & y).sum() / (p.sum() + y.sum()))
    return float(np.mean(scores)) if scores else 1.0


def test_selective_metrics_and_case_losses_count_only_annotated_voxels():
    from uaseg.selective import SelectiveAccumulator, SelectiveSegmentationMetric
    from uaseg.selective.case_losses import case_losses
    from uaseg.selective.case_stats import make_case_stats

    k, rng = 3, np.random.default_rng(0)
    cases = []
    for i in range(4):
        label = rng.integers(0, k + 1, (10, 9))  # value k: ignored
        pred = np.where(rng.random(label.shape) < 0.3, rng.integers(0, k, label.shape), np.minimum(label, k - 1))
        u = rng.random(label.shape).astype(np.float32)
        u[label == k] = 2.0  # ignored voxels are the most uncertain: counted, they would move every number
        cases.append((u, pred, label))
    acc = SelectiveAccumulator(k, bootstrap=0, ignore_index=k)
    ref = SelectiveAccumulator(k, bootstrap=0)  # the same cases with the ignored voxels cut out
    metric = SelectiveSegmentationMetric(k, bootstrap=0, ignore_index=k)
    for i, (u, p, y) in enumerate(cases):
        keep = y != k
        acc.add_case(u, p, y, f"c{i}")
        ref.add_case(u[keep], p[keep], y[keep], f"c{i}")
        metric.update(torch.from_numpy(u), torch.from_numpy(p), torch.from_numpy(y), f"c{i}")
    metric.update(torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.long), torch.full((3, 3), k), "unannotated")
    got, want, via_metric = acc.compute(), ref.compute(), metric.compute()
    assert got.n_voxels == want.n_voxels == via_metric.n_voxels == sum(int((y != k).sum()) for _, _, y in cases)
    assert via_metric.n_cases == 4  # the all-ignored case is left out (with a warning)
    for r in (got, via_metric):
        assert r.aurc_dice == pytest.approx(want.aurc_dice) and r.aurc == pytest.approx(want.aurc)
        for key, point in want.at_coverage.items():
            assert r.at_coverage[key].achieved_coverage == pytest.approx(point.achieved_coverage)
            assert r.at_coverage[key].dice_mean == pytest.approx(point.dice_mean)
    # brute force: Dice at full coverage, and at the 0.9 threshold with referred voxels set to the label
    full = [_dice_by_hand(p[y != k], y[y != k], k) for u, p, y in cases]
    assert got.dice_full.mean == pytest.approx(np.mean(full))
    t = got.at_coverage["0.90"].threshold
    covered = np.concatenate([u[y != k] for u, _, y in cases]) <= t
    assert got.at_coverage["0.90"].achieved_coverage == pytest.approx(covered.mean())
    # risk control's case losses: L_i(t) = 1 - Dice_i with u > t referred, annotated voxels only
    stats = [make_case_stats(u, p, y, num_classes=k, case_id=str(i), ignore_index=k) for i, (u, p, y) in enumerate(cases)]
    losses = case_losses(stats)
    for t in (0.2, 0.5, 0.9, 1.5):
        by_hand = [1 - _dice_by_hand(np.where(u > t, y, p)[y != k], y[y != k], k) for u, p, y in cases]
        np.testing.assert_allclose(losses.loss_at(t), by_hand, atol=1e-12)
        assert losses.coverage_at(t) == pytest.approx(np.mean(np.concatenate([u[y != k] for u, _, y in cases]) <= t))


# ----------------------------------------------------------------------- check_dataset.py, plan line
def test_check_dataset_prints_every_channel_range_and_the_ignore_count(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("check_dataset", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dec = make_decathlon(tmp_path / "Task01", n_test=0)
    assert mod.main(["--dataset", "decathlon", "--root", str(dec)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("case"))
    row = next(line for line in lines if line.startswith("BRATS_000")).split()
    raw = np.asarray(nib.load(dec / "imagesTr" / "BRATS_000.nii.gz").dataobj)
    assert "ch0 min/max" in header and "ch1 min/max" in header
    for c in range(2):  # one column per modality of the 4-D file, not one range over all
        assert f"{raw[..., c].min():.4g}/{raw[..., c].max():.4g}" in row, (header, row)
    sparse = make_nnunet_2d(tmp_path / "Dataset005_Sparse", ignore=True, n_test=0)
    assert mod.main(["--dataset", "nnunet", "--root", str(sparse)]) == 0
    out = capsys.readouterr().out
    assert "ignore label 3 (not annotated)" in out and "OK" in out
    lab = np.asarray(Image.open(sparse / "labelsTr" / "img_001.png"))
    row = next(line for line in out.splitlines() if line.startswith("img_001"))
    assert row.split()[-1] == str(int((lab == 3).sum()))


def test_the_plan_line_prints_the_patch_the_run_uses(tmp_path, make_cfg, caplog):
    root = make_nnunet_2d(tmp_path / "Dataset003_Png", n_test=0)
    with caplog.at_level(logging.INFO, logger="uaseg.data.formats.layouts"):
        dm, _ = dm_of(make_cfg, root, "dataset.patch_size=[16,32]")
        dm.setup()
    text = "\n".join(r.getMessage() for r in caplog.records if "fingerprint" in r.getMessage())
    planned = " x ".join(str(int(x)) for x in dm.plan["patch_size"])
    assert planned != "16 x 32"
    assert "patch size 16 x 32 (width x height)\n" in text
    assert f"patch size 16 x 32 set by dataset.patch_size (the plan's: {planned})" in text
