"""nnU-Net's planning and preprocessing on the datasets where they differ from the simple rules:
anisotropic CT (target spacing, separate-z resampling, patch) and zero-background MR (non-zero crop
and masked z-score). Every number is computed here independently (numpy / scipy), not by uaseg."""

from __future__ import annotations

import json
import logging
from pathlib import Path

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


# ------------------------------------------------------------------------ the planning rules alone
def _reference_target_spacing(spacings, shapes):
    """nnU-Net v2's full-resolution target spacing, restated: the median spacing; if the coarsest axis
    is more than 3x *every* other axis's spacing and its median size times 3 is below *every* other
    axis's median size, that axis takes its 10th-percentile spacing, lifted just above the coarsest
    other axis when it would fall below it."""
    med, size = np.median(spacings, axis=0), np.median(shapes, axis=0)
    order = sorted(range(3), key=lambda i: -med[i])
    coarse, rest = order[0], order[1:]
    flag = all(med[coarse] > 3 * med[i] and size[coarse] * 3 < size[i] for i in rest)
    out = med.copy()
    if flag:
        low, ceiling = np.percentile(spacings[:, coarse], 10), max(med[i] for i in rest)
        out[coarse] = low if low >= ceiling else ceiling + 1e-5
    return out, flag


@pytest.mark.parametrize("spacing,shape,aniso", [
    ((0.5, 1.2, 2.0), (400, 170, 50), False),  # in plane not square: 2 mm is not 3x the 1.2 mm axis
    ((0.5, 0.5, 2.0), (400, 170, 50), True),
    ((0.5, 0.5, 2.0), (300, 100, 40), False),  # 40 slices x 3 is not below every other axis's 100
    ((3.0, 0.8, 0.9), (20, 256, 200), True),  # the coarse axis first
    ((1.0, 1.0, 4.0), (200, 200, 190), False),
])
def test_target_spacing_follows_nnunet_on_non_square_and_other_spacings(spacing, shape, aniso):
    from uaseg.data.plan.planner import target_spacing

    rng = np.random.default_rng(0)
    spacings = np.array(spacing) * rng.uniform(0.9, 1.1, (7, 3))
    spacings[0, int(np.argmax(spacing))] *= 0.2  # one fine case: the 10th percentile differs from the median
    shapes = np.round(np.array(shape) * rng.uniform(0.9, 1.1, (7, 3)))
    got, flag = target_spacing(spacings, shapes)
    want, want_flag = _reference_target_spacing(spacings, shapes)
    assert flag == want_flag == aniso
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_target_spacing_matches_the_reference_on_random_fingerprints():
    from uaseg.data.plan.planner import target_spacing

    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(400):
        n = int(rng.integers(1, 9))
        spacings = rng.uniform(0.3, 1.5, 3) * rng.choice([1, 1, 2.5, 4, 8], 3) * rng.uniform(0.7, 1.3, (n, 3))
        shapes = np.round(rng.uniform(10, 400, 3) * rng.uniform(0.8, 1.2, (n, 3)))
        got, flag = target_spacing(spacings, shapes)
        want, want_flag = _reference_target_spacing(spacings, shapes)
        assert flag == want_flag
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        seen.add(flag)
    assert seen == {True, False}


def test_a_patch_cap_below_the_stride_is_refused_in_one_line(tmp_path, make_cfg):
    """The case that exceeded the budget: a 16-voxel stride and a cap of 8 on one axis (budget
    8 x 256 x 256 = 524,288) gave a 16 x 208 x 208 patch (692,224 voxels). Through train.py too,
    before any run folder is made."""
    from uaseg.data.plan.planner import plan_patch
    from uaseg.errors import ConfigError
    from uaseg.train import train

    cfg = make_cfg("nnunet", f"dataset.root={make_aniso_ct(tmp_path / 'Dataset010_Aniso')}", "dataset.num_workers=0",
                   "dataset.max_patch_size_3d=[4,64,64]")
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert str(e.value).startswith("dataset.max_patch_size_3d=[4,64,64]: each entry must be at least the network's "
                                   "total stride [8,8,8]") and "\n" not in str(e.value)
    assert not Path(cfg.paths.output_dir).exists()

    with pytest.raises(ConfigError) as e:
        plan_patch([5.0, 1.0, 1.0], [20, 200, 200], [16, 16, 16], [8, 256, 256])
    assert str(e.value).startswith("dataset.max_patch_size_3d=[8,256,256]: each entry must be at least the network's "
                                   "total stride [16,16,16]") and "\n" not in str(e.value)
    assert plan_patch([5.0, 1.0, 1.0], [20, 200, 200], [16, 16, 16], [16, 256, 256]) == [16, 208, 208]


def test_a_planned_patch_never_exceeds_its_caps_or_budget():
    """Random spacings, median shapes, strides and caps: the patch is refused (a cap below the stride)
    or every side is a positive multiple of the stride, at most its cap, and the voxels within the budget."""
    from uaseg.data.plan.planner import plan_patch
    from uaseg.errors import ConfigError

    rng = np.random.default_rng(2)
    refused = planned = 0
    for _ in range(3000):
        dims = int(rng.choice([2, 3]))
        spacing = rng.uniform(0.2, 6.0, dims)
        median = rng.integers(1, 400, dims)
        stride = [int(x) for x in (2 ** rng.integers(0, 6, dims) if rng.random() < 0.3 else [2 ** rng.integers(0, 6)] * dims)]
        cap = [int(x) for x in rng.integers(1, 300, dims)]
        try:
            patch = plan_patch(spacing, median, stride, cap)
        except ConfigError:
            assert any(c < s for c, s in zip(cap, stride))
            refused += 1
            continue
        planned += 1
        assert all(p % s == 0 and s <= p <= c for p, s, c in zip(patch, stride, cap)), (patch, stride, cap)
        assert np.prod(patch) <= np.prod(cap), (patch, cap)
    assert refused > 100 and planned > 1000


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

    spec = importlib.util.spec_from_file_location("check_dataset", Path(__file__).resolve().parents[2] / "scripts" / "check_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for root, case in ((make_aniso_ct(tmp_path / "Dataset010_Aniso", n_test=0), "ct_004"),
                       (make_zero_background_mr(tmp_path / "Dataset011_Brain", n_test=0), "mr_004")):
        assert mod.main(["--dataset", "nnunet", "--root", str(root)]) == 0
        out = capsys.readouterr().out
        assert case in out and "OK" in out
