"""nnU-Net's planning and preprocessing on the datasets where they differ from the simple rules:
anisotropic CT (target spacing, separate-z resampling, patch) and zero-background MR (non-zero crop
and masked z-score). Every number is computed here independently (numpy / scipy), not by uaseg."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
from layoutfiles import ANISO_SPACINGS, ANISO_SHAPE, MR_SHAPE, head_mask, make_aniso_ct, make_nnunet_2d, make_zero_background_mr
from monai.transforms import CropForegroundd, Spacingd
from scipy import ndimage

from uaseg.data.plan.resample import ResampleToSpacingd, resample_case
from uaseg.train import build_datamodule


def dm_of(make_cfg, root, *extra):
    cfg = make_cfg("nnunet", f"dataset.root={root}", "dataset.num_workers=0", "dataset.cache=false", *extra)
    return build_datamodule(cfg.dataset), cfg


def case_of(dm, case_id):
    dm.setup()
    return next(c for s in dm.splits.values() for c in s if c["case_id"] == case_id)


# ------------------------------------------------------------------------ references (scipy, numpy)
def _coords(in_shape, out_shape):
    """nnU-Net's coordinate map (skimage's resize): output voxel j samples input (j + 0.5) * in/out - 0.5."""
    grid = np.mgrid[tuple(slice(0, n) for n in out_shape)].astype(float)
    scale = np.array(in_shape, float) / np.array(out_shape, float)
    return scale.reshape(-1, *[1] * len(out_shape)) * (grid + 0.5) - 0.5


def _spline(x, out_shape, order):
    return np.clip(ndimage.map_coordinates(x, _coords(x.shape, out_shape), order=order, mode="nearest"), x.min(), x.max())


def _nearest_indices(n_in, n_out):
    return np.clip(np.floor((np.arange(n_out) + 0.5) * n_in / n_out - 0.5 + 0.5), 0, n_in - 1).astype(int)


def _separate_z_reference(vol, out_shape, is_label):
    """In plane slice by slice (order 3, or order 1 per class for labels), then nearest along z."""
    if is_label:
        inplane = np.zeros((*out_shape[:2], vol.shape[2]))
        for k in range(vol.shape[2]):
            for c in np.unique(vol):
                inplane[..., k][_spline((vol[..., k] == c).astype(float), out_shape[:2], 1) >= 0.5] = c
    else:
        inplane = np.stack([_spline(vol[..., k], out_shape[:2], 3) for k in range(vol.shape[2])], axis=-1)
    return inplane[..., _nearest_indices(vol.shape[2], out_shape[2])]


# --------------------------------------------------------------------------------- anisotropic CT
def test_anisotropic_ct_plans_spacing_and_patch_as_nnunet(tmp_path, make_cfg):
    root = make_aniso_ct(tmp_path / "Dataset010_Aniso")
    dm, cfg = dm_of(make_cfg, root)
    spacings = np.array(ANISO_SPACINGS)
    # median z spacing 5 > 3 x 1 and median z size 6 x 3 < 24: z takes the 10th percentile of its spacings
    z = np.percentile(spacings[:, 2], 10)
    assert z == pytest.approx(4.2)
    assert dm.plan["target_spacing"] == pytest.approx([1.0, 1.0, z]) and dm.plan["fingerprint"]["anisotropic"]
    # median of each case's rounded resampled shape; unet_small halves 3 times: multiples of 8
    shapes = np.round(np.array(ANISO_SHAPE) * spacings / [1.0, 1.0, z])
    median = np.median(shapes, axis=0)
    assert median.tolist() == [24, 24, 7]
    assert dm.plan["network_stride"] == [8, 8, 8]
    assert dm.patch_size == (24, 24, 8)  # the old rule (multiples of 16 from the median) gave 32 x 32 x 16
    assert list(cfg.model.inferer.roi_size) == [24, 24, 8]
    # the paper's U-Net (model=unet) has the same 3 downsamplings; a fixed target spacing is not anisotropic
    dm2, _ = dm_of(make_cfg, root, "dataset.spacing=[1,1,5]")
    assert dm2.plan["target_spacing"] == [1.0, 1.0, 5.0] and not dm2.plan["fingerprint"]["anisotropic"]


def test_anisotropic_resampling_matches_a_scipy_reference(tmp_path, make_cfg):
    """ct_002 (1.1 x 1.1 x 5.5 mm) to 1 x 1 x 4.2: in plane 24 -> 26 (cubic spline per slice), 6 -> 8
    slices (nearest), the label per class (linear, >= 0.5) then nearest along z."""
    root = make_aniso_ct(tmp_path / "Dataset010_Aniso")
    dm, _ = dm_of(make_cfg, root)
    case = case_of(dm, "ct_002")
    out = dm.eval_transforms()(dict(case))
    raw = np.asarray(nib.load(case["image"][0]).dataobj, dtype=np.float64)
    lab = np.asarray(nib.load(case["label"]).dataobj, dtype=np.float64)
    n = dm.plan["normalization"][0]
    normed = (np.clip(raw, *n["clip"]) - n["mean"]) / n["std"]
    shape = (26, 26, 8)
    assert tuple(out["image"].shape[1:]) == shape  # the patch (24 x 24 x 8) needs no padding
    np.testing.assert_allclose(out["image"][0].numpy(), _separate_z_reference(normed, shape, False), atol=1e-4)
    np.testing.assert_array_equal(out["label"][0].numpy(), _separate_z_reference(lab, shape, True))
    spacing = np.linalg.norm(np.asarray(out["image"].affine)[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [1.1 * 24 / 26, 1.1 * 24 / 26, 5.5 * 6 / 8])
    # isotropic data: one cubic spline over the whole volume
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(1, 10, 9, 8))
    got = resample_case(vol, [1.0, 1.2, 1.5], [1.0, 1.0, 1.0], is_label=False)
    assert got.shape == (1, 10, 11, 12)
    np.testing.assert_allclose(got[0], _spline(vol[0], (10, 11, 12), 3), atol=1e-10)


def test_resampling_is_inverted_onto_the_file_grid(tmp_path, make_cfg):
    root = make_aniso_ct(tmp_path / "Dataset010_Aniso")
    dm, _ = dm_of(make_cfg, root)
    case = case_of(dm, "ct_002")
    out = dm.eval_transforms()(dict(case))
    assert any(op["class"] == "ResampleToSpacingd" for op in out["image"].applied_operations)
    back = dm.invert_to_original({"seg": out["label"][None].float()}, {"case_id": ["ct_002"]}, nearest=["seg"])[0]["seg"]
    lab = np.asarray(nib.load(case["label"]).dataobj)
    assert tuple(back.shape[1:]) == lab.shape
    assert (back[0].numpy() == lab).mean() > 0.95  # resampled there and back: only box edges may move


def test_evaluation_sees_a_case_smaller_than_the_patch_at_its_own_size(tmp_path, make_cfg):
    """Padding is for training crops only: a padded voxel in evaluation would count as a covered,
    correct voxel in coverage and the curves (the sliding window pads internally and crops back)."""
    root = make_aniso_ct(tmp_path / "Dataset010_Aniso")
    dm, _ = dm_of(make_cfg, root)
    dm.setup()
    spacings, z = np.array(ANISO_SPACINGS), dm.plan["target_spacing"][2]
    shapes = np.round(np.array(ANISO_SHAPE) * spacings / [1.0, 1.0, z]).astype(int)
    small = [i for i, s in enumerate(shapes) if s[2] < dm.patch_size[2]]
    assert small, "the dataset must have a case thinner than the patch"
    case = case_of(dm, f"ct_{small[0]:03d}")
    out = dm.eval_transforms()(dict(case))
    assert tuple(out["image"].shape[1:]) == tuple(out["label"].shape[1:]) == tuple(shapes[small[0]])
    patches = dm.train_transforms()(dict(case))
    assert all(tuple(p["image"].shape[1:]) == tuple(dm.patch_size) for p in patches)


# --------------------------------------------------------------------------------- zero background
def test_zero_background_mr_is_cropped_and_normalised_inside_the_mask(tmp_path, make_cfg):
    root = make_zero_background_mr(tmp_path / "Dataset011_Brain")
    dm, _ = dm_of(make_cfg, root)
    fp = json.loads((root / "fingerprint.json").read_text())
    shares, boxes = [], {}
    for i in range(5):
        head = head_mask(seed=i)
        lo = [int(np.flatnonzero(head.any(axis=tuple(j for j in range(3) if j != a)))[0]) for a in range(3)]
        boxes[f"mr_{i:03d}"] = (lo, [12, 10, 9])  # the cut corner and the hole do not change the box
        shares.append(12 * 10 * 9 / np.prod(MR_SHAPE))
        assert fp["cases"][f"mr_{i:03d}"]["shape_after_crop"] == [12, 10, 9]
    assert fp["median_relative_size_after_cropping"] == pytest.approx(np.median(shares))
    assert np.median(shares) < 0.75 and fp["use_nonzero_mask_for_norm"]
    assert [n["use_nonzero_mask"] for n in dm.plan["normalization"]] == [True, True]
    assert dm.plan["patch_size"] == [16, 16, 16]  # median cropped shape 12 x 10 x 9 -> multiples of 8, then padded
    case = case_of(dm, "mr_001")
    out = dm.eval_transforms()(dict(case))
    lo, size = boxes["mr_001"]
    crop = tuple(slice(a, a + s) for a, s in zip(lo, size))
    head = head_mask(seed=1)[crop]  # the hole is inside the head: part of the mask
    assert tuple(out["image"].shape[1:]) == tuple(size) == (12, 10, 9)  # cropped; evaluation does not pad
    for c in range(2):
        raw = np.asarray(nib.load(case["image"][c]).dataobj, dtype=np.float64)[crop]
        want = np.where(head, (raw - raw[head].mean()) / raw[head].std(), 0.0)
        got = out["image"][c].numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert not np.allclose(got, (raw - raw.mean()) / raw.std(), atol=1e-2)  # not the plain z-score
    lab = np.asarray(nib.load(case["label"]).dataobj)
    np.testing.assert_array_equal(out["label"][0].numpy(), lab[crop])


def test_a_fingerprint_of_the_older_version_is_recomputed_with_a_warning(tmp_path, make_cfg, caplog):
    root = make_zero_background_mr(tmp_path / "Dataset011_Brain")
    dm_of(make_cfg, root)
    path = root / "fingerprint.json"
    old = json.loads(path.read_text())
    old["version"] = 1
    for key in ("median_relative_size_after_cropping", "use_nonzero_mask_for_norm"):
        del old[key]
    for c in old["cases"].values():
        del c["shape_after_crop"]
    path.write_text(json.dumps(old))
    from uaseg.data.formats import layouts

    layouts._PLANS.clear()
    with caplog.at_level(logging.WARNING):
        dm, _ = dm_of(make_cfg, root)
    assert any("older uaseg" in r.getMessage() and "fingerprint.v1.json" in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_text())["version"] == 2 and (root / "fingerprint.v1.json").exists()
    assert dm.plan["normalization"][0]["use_nonzero_mask"]
    # a plan from an older checkpoint (no crop, no resampling key) keeps the preprocessing it was trained with
    plan = {k: v for k, v in dm.plan.items() if k not in ("crop_to_nonzero", "resampling")}
    old_dm = type(dm)(plan=plan, root=str(root), spacing=None, orientation="RAS", max_patch_size_2d=[192, 192],
                      max_patch_size_3d=[64, 64, 64])
    kinds = [type(t) for t in old_dm.eval_transforms().transforms]
    assert Spacingd in kinds and CropForegroundd not in kinds and ResampleToSpacingd not in kinds


# --------------------------------------------------------------------------------- 2-D axes
def test_a_non_square_2d_patch_says_its_axes_are_width_height(tmp_path, make_cfg, caplog):
    root = make_nnunet_2d(tmp_path / "Dataset003_Png")
    with caplog.at_level(logging.WARNING, logger="uaseg.data.formats.layouts"):
        dm_of(make_cfg, root, "dataset.patch_size=[24,16]")
    assert any("(width, height)" in r.getMessage() and "[16, 24]" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uaseg.data.formats.layouts"):
        dm_of(make_cfg, root, "dataset.patch_size=[16,16]")
    assert not caplog.records


def test_the_check_script_accepts_both_datasets(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("check_dataset", Path(__file__).resolve().parents[1] / "scripts" / "check_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for root, case in ((make_aniso_ct(tmp_path / "Dataset010_Aniso", n_test=0), "ct_004"),
                       (make_zero_background_mr(tmp_path / "Dataset011_Brain", n_test=0), "mr_004")):
        assert mod.main(["--dataset", "nnunet", "--root", str(root)]) == 0
        out = capsys.readouterr().out
        assert case in out and "OK" in out
