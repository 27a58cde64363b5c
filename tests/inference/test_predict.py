"""predict.py / uaseg.predict: new images in, segmentation + uncertainty + referral mask out, on the
input's own grid (NIfTI affine and shape, PNG pixel layout), threshold from the checkpoint's
validation curve; refusals and error messages."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import FAST, TINY, compose_cfg
from omegaconf import OmegaConf
from PIL import Image

from uaseg.errors import PredictError
from uaseg.inference import predict_files, resolve_checkpoint
from uaseg.io import class_colour, overlay_rgb, save_label_png
from uaseg.selective import ThresholdGrid
from uaseg.train import build_datamodule, build_module

ROOT = Path(__file__).resolve().parents[2]
SHAPE3 = (20, 18, 16)
SHAPE2 = (40, 56)  # (height, width): non-square, so a transposition cannot go unnoticed


# ---------------------------------------------------------------------------------------- fixtures
def _cfg(tmp: Path, dataset: str, *extra: str):
    return compose_cfg([f"dataset={dataset}", *TINY.get(dataset, []), *FAST, *extra], tmp / "run", tmp / "cache")


def _module(cfg):
    torch.manual_seed(0)
    return build_module(cfg)  # the resolved dataset config is one of its hyper-parameters


def _save(module, path: Path, curve: dict | None) -> Path:
    """A Lightning-format checkpoint, through the module's own ``on_save_checkpoint``."""
    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    module.val_curve = ThresholdGrid.from_dict(curve) if curve else None
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


SYNTH_CURVE = {"coverage": [1.0, 0.95, 0.9, 0.5, 0.0], "threshold": [0.9, 0.6, 0.5, 0.2, -math.inf]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Checkpoints with untrained weights: demo3d (no resampling) and mmwhs (1.5 mm RAS resampling)."""
    tmp = tmp_path_factory.mktemp("models")
    out = {}
    cfg = _cfg(tmp, "demo3d", "dataset.patch_size=[16,16,16]")
    out["demo3d"] = _module(cfg)
    cfg = _cfg(tmp, "mmwhs", f"dataset.root={tmp}", "dataset.patch_size=[16,16,16]", "model=unet_small")
    out["mmwhs"] = _module(cfg)
    return {k: (m, _save(m, tmp / f"{k}.ckpt", SYNTH_CURVE)) for k, m in out.items()}


@pytest.fixture(scope="module")
def demo2d_ckpt(tmp_path_factory):
    """A real checkpoint: one training step and one validation pass of a Lightning Trainer."""
    tmp = tmp_path_factory.mktemp("demo2d")
    cfg = _cfg(tmp, "demo2d")
    module = _module(cfg)
    trainer = L.Trainer(
        max_steps=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp,
    )
    trainer.fit(module, datamodule=build_datamodule(cfg.dataset))
    path = tmp / "demo2d.ckpt"
    trainer.save_checkpoint(path)
    return module.eval(), path


def _nifti(path: Path, flip: bool = True, qform_only: bool = False, channels: int | None = None, seed: int = 0) -> Path:
    """A tiny CT-like volume, anisotropic spacing, one flipped axis, non-zero origin."""
    rng = np.random.default_rng(seed)
    shape = SHAPE3 + ((channels,) if channels else ())
    data = rng.normal(-700, 300, shape)
    data[5:14, 4:12, 3:12] = 300 + rng.normal(0, 40, (9, 8, 9) + ((channels,) if channels else ()))
    aff = np.diag([0.8, -1.3, 2.5, 1.0]) if flip else np.diag([0.8, 1.3, 2.5, 1.0])
    aff[:3, 3] = (-12.0, 30.0, 5.5)
    img = nib.Nifti1Image(data.astype(np.int16), aff)
    if qform_only:
        img.set_sform(None, code=0)
        img.set_qform(aff, code=1)
    nib.save(img, str(path))
    return path


def _png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = (rng.random((*SHAPE2, 3)) * 80 + 150).astype(np.uint8)
    arr[8:30, 10:25] = (120, 40, 140)  # a purple gland-ish blob, not symmetric under transposition
    Image.fromarray(arr).save(path)
    return path


def _curve_from(u: np.ndarray) -> dict:
    """The exact (uncompressed) coverage/threshold curve of these uncertainties."""
    v = np.sort(u.ravel().astype(np.float64))
    distinct = np.unique(v)[::-1]
    cov = np.searchsorted(v, distinct, side="right") / v.size
    return {"coverage": [*cov.tolist(), 0.0], "threshold": [*distinct.tolist(), -math.inf]}


# ---------------------------------------------------------------------------------------- threshold rule
def test_threshold_at_is_the_nearest_point_ties_to_larger_coverage():
    """The one coverage -> threshold rule (used by prediction and the report's case panel)."""
    grid = ThresholdGrid.from_dict({"coverage": [1.0, 0.9, 0.8, 0.0], "threshold": [0.7, 0.4, 0.3, -math.inf]})
    assert grid.threshold_at(0.91) == (0.4, 0.9)
    assert grid.threshold_at(0.86) == (0.4, 0.9)
    assert grid.threshold_at(0.84) == (0.3, 0.8)
    assert grid.threshold_at(0.85) == (0.4, 0.9)  # tie in distance -> larger coverage
    assert grid.threshold_at(1.0) == (0.7, 1.0)
    assert grid.threshold_at(0.01) == (-math.inf, 0.0)


# ---------------------------------------------------------------------------------------- NIfTI, 3-D models
@pytest.mark.parametrize("dataset", ["demo3d", "mmwhs"])
def test_nifti_outputs_on_the_input_grid_at_the_requested_coverage(models, dataset, tmp_path):
    module, ckpt = models[dataset]
    src = _nifti(tmp_path / "scan_01.nii.gz", qform_only=dataset == "demo3d")
    ref = nib.load(str(src))

    # threshold mode first: the uncertainties on the input's own grid
    (rec,) = predict_files(ckpt, src, tmp_path / "a", threshold=0.5)
    assert rec["threshold_source"] == "explicit" and rec["threshold"] == 0.5
    names = {k: Path(v) for k, v in rec["outputs"].items()}
    assert {p.name for p in names.values()} == {
        "scan_01_seg.nii.gz", "scan_01_uncertainty.nii.gz", "scan_01_refer.nii.gz"}
    for key, p in names.items():
        out = nib.load(str(p))
        assert out.shape == SHAPE3, key
        assert np.array_equal(out.affine, ref.affine), key
    u = np.asarray(nib.load(str(names["uncertainty"])).dataobj)
    assert u.dtype == np.float32 and 0.0 <= u.min() and u.max() <= 1.0 - 1.0 / 8 + 1e-6
    refer = np.asarray(nib.load(str(names["refer"])).dataobj)
    assert np.array_equal(refer.astype(bool), u > 0.5)
    seg = np.asarray(nib.load(str(names["seg"])).dataobj)
    assert seg.dtype == np.uint8 and seg.max() < 8
    assert sum(rec["voxel_counts"].values()) == seg.size == rec["voxels"]
    assert rec["voxel_counts"] == {n: int((seg == i).sum()) for i, n in
                                   enumerate(["background", "LV", "RV", "LA", "RA", "Myo", "AO", "PA"])}
    if dataset == "demo3d":  # no spatial preprocessing: same as segmenting the array directly
        image = torch.as_tensor(np.asarray(ref.dataobj), dtype=torch.float32)
        image = ((image.clamp(-1000, 1000) + 1000) / 2000)[None, None]
        u_mem, pred_mem, _ = module.eval().segment(image)
        assert np.array_equal(seg, pred_mem[0].numpy())
        assert np.allclose(u, u_mem[0].numpy(), atol=1e-6)

    # a validation curve built from this very input's uncertainties: its coverage is the requested one
    curve_ckpt = tmp_path / "curve.ckpt"
    ck = torch.load(ckpt, weights_only=True)
    ck["uaseg_val_curve"] = _curve_from(u)
    torch.save(ck, curve_ckpt)
    target = 0.9
    (rec,) = predict_files(curve_ckpt, src, tmp_path / "b", coverage=target)
    refer = np.asarray(nib.load(rec["outputs"]["refer"]).dataobj).astype(bool)
    assert rec["threshold_source"] == "coverage" and rec["requested_coverage"] == target
    assert rec["coverage"] == pytest.approx(1.0 - refer.mean(), abs=1e-12)
    assert rec["coverage"] == pytest.approx(rec["validation_coverage"], abs=1e-12)
    _, tie_counts = np.unique(u, return_counts=True)
    assert abs(rec["coverage"] - target) <= (tie_counts.max() + 1) / u.size
    on_disk = json.loads((tmp_path / "b" / "scan_01.json").read_text())
    assert on_disk["coverage"] == rec["coverage"] and on_disk["checkpoint"] == str(curve_ckpt.resolve())


def test_mmwhs_model_resamples_and_inverts(models, tmp_path):
    """1.5 mm RAS inside the model, but outputs on the input's 0.8 x 1.3 x 2.5 mm flipped grid."""
    module, ckpt = models["mmwhs"]
    src = _nifti(tmp_path / "ct.nii", seed=1)
    dm = build_datamodule(OmegaConf.create(module.dataset_cfg))
    inner = dm.predict_transforms()({"image": str(src)})["image"]
    assert tuple(inner.shape[1:]) != SHAPE3 and np.allclose(np.abs(np.diag(inner.affine[:3, :3])), 1.5)
    (rec,) = predict_files(ckpt, src, tmp_path / "out", coverage=0.9)
    assert rec["threshold"] == 0.5 and rec["validation_coverage"] == 0.9  # from SYNTH_CURVE
    for p in rec["outputs"].values():
        assert nib.load(p).shape == SHAPE3 and np.array_equal(nib.load(p).affine, nib.load(str(src)).affine)


# ---------------------------------------------------------------------------------------- PNG, 2-D model
def test_png_outputs_match_in_memory_segmentation(demo2d_ckpt, tmp_path):
    module, ckpt = demo2d_ckpt
    src = _png(tmp_path / "tile.png")
    (rec,) = predict_files(ckpt, src, tmp_path / "out", coverage=0.9)
    out = {k: Path(v) for k, v in rec["outputs"].items()}
    seg = np.asarray(Image.open(out["seg"]))
    u16 = Image.open(out["uncertainty"])
    u = np.load(out["uncertainty_npy"])
    refer = np.asarray(Image.open(out["refer"]))
    assert seg.shape == u.shape == refer.shape == SHAPE2 and u16.size == (SHAPE2[1], SHAPE2[0])
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1}
    # a palette PNG: indices are the classes, and a viewer shows the glands in colour, not black
    with Image.open(out["seg"]) as im:
        assert im.mode == "P"
        rgb = np.asarray(im.convert("RGB"))
    assert (rgb[seg == 1] == class_colour(1)).all() and (rgb[seg == 0] == 0).all()
    overlay = np.asarray(Image.open(out["overlay"]))
    assert overlay.shape == (*SHAPE2, 3) and overlay.dtype == np.uint8
    assert u.dtype == np.float32 and set(np.unique(refer)) <= {0, 255}
    assert np.array_equal(refer == 255, u > rec["threshold"])
    assert np.abs(np.asarray(u16, dtype=np.float64) / 65535 - u).max() <= 0.5 / 65535 + 1e-7
    assert rec["coverage"] == pytest.approx(1.0 - (refer == 255).mean())

    # the same image in memory, in MONAI's PIL layout (C, width, height), segmented by the module
    arr = np.asarray(Image.open(src), dtype=np.float32) / 255.0  # (H, W, 3)
    image = torch.from_numpy(arr.transpose(2, 1, 0).copy())[None]
    u_mem, pred_mem, _ = module.segment(image)
    assert np.array_equal(seg, pred_mem[0].numpy().T)
    assert np.allclose(u, u_mem[0].numpy().T, atol=1e-6)


def test_glas_model_pads_small_images_and_crops_back(tmp_path):
    """GlaS preprocessing pads images smaller than the patch; outputs are cropped back to (H, W)."""
    cfg = _cfg(tmp_path, "glas", f"dataset.root={tmp_path}", "dataset.patch_size=[32,32]")
    ckpt = _save(_module(cfg), tmp_path / "glas.ckpt", SYNTH_CURVE)
    src = tmp_path / "testA_1.bmp"
    Image.fromarray((np.random.default_rng(3).random((20, 28, 3)) * 255).astype(np.uint8)).save(src)
    (rec,) = predict_files(ckpt, src, tmp_path / "out", coverage=0.5)
    assert rec["threshold"] == 0.2 and rec["shape"] == [20, 28]
    u = np.load(rec["outputs"]["uncertainty_npy"])
    assert u.shape == np.asarray(Image.open(rec["outputs"]["seg"])).shape == (20, 28)
    assert np.array_equal(np.asarray(Image.open(rec["outputs"]["refer"])) == 255, u > 0.2)


def test_checkpoint_metadata_is_plain_for_weights_only(demo2d_ckpt):
    _, ckpt = demo2d_ckpt
    ck = torch.load(ckpt, weights_only=True)  # a Trainer-written checkpoint loads without pickled objects
    assert ck["hyper_parameters"]["dataset"]["_target_"] == "uaseg.data.datasets.demo2d.Demo2DDataModule"
    assert ck["hyper_parameters"]["dataset"]["meta"]["in_channels"] == 3
    curve = ck["uaseg_val_curve"]
    assert curve["coverage"][0] == 1.0 and curve["coverage"][-1] == 0.0
    assert all(type(v) is float for v in curve["coverage"] + curve["threshold"])


def test_folder_input_natural_order_and_threshold_mode(demo2d_ckpt, tmp_path):
    _, ckpt = demo2d_ckpt
    folder = tmp_path / "in"
    folder.mkdir()
    for i in (10, 2, 1):
        _png(folder / f"img{i}.png", seed=i)
    (folder / "notes.txt").write_text("ignored")
    recs = predict_files(ckpt, folder, tmp_path / "out", threshold=0.2)
    assert [Path(r["input"]).name for r in recs] == ["img1.png", "img2.png", "img10.png"]
    assert all(r["threshold"] == 0.2 and r["threshold_source"] == "explicit" for r in recs)


# ---------------------------------------------------------------------------------------- refusals
def test_existing_outputs_are_never_overwritten(models, tmp_path):
    _, ckpt = models["demo3d"]
    src = _nifti(tmp_path / "v.nii.gz")
    (rec,) = predict_files(ckpt, src, tmp_path / "out", threshold=0.3)
    seg = Path(rec["outputs"]["seg"])
    stamp = seg.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="v_seg.nii.gz") as err:
        predict_files(ckpt, src, tmp_path / "out", threshold=0.1)
    assert "overwrite=true" in str(err.value)
    assert seg.stat().st_mtime_ns == stamp
    (rec,) = predict_files(ckpt, src, tmp_path / "out", threshold=0.1, overwrite=True)
    assert rec["threshold"] == 0.1
    assert json.loads((tmp_path / "out" / "v.json").read_text())["threshold"] == 0.1


def test_error_messages(models, demo2d_ckpt, tmp_path):
    _, ct = models["demo3d"]
    _, rgb = demo2d_ckpt
    vol = _nifti(tmp_path / "vol.nii.gz")
    png = _png(tmp_path / "photo.png")
    out = tmp_path / "out"

    with pytest.raises(PredictError, match="checkpoint not found"):
        predict_files(tmp_path / "nope.ckpt", vol, out, threshold=0.5)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(Path(ct).read_bytes()[:5000])
    with pytest.raises(PredictError, match=f"{cut}: not a readable checkpoint: the file is truncated or corrupted"):
        predict_files(cut, vol, out, threshold=0.5)
    with pytest.raises(PredictError, match="input not found: .*missing.nii.gz"):
        predict_files(ct, tmp_path / "missing.nii.gz", out, threshold=0.5)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(PredictError, match="broken.nii.gz: cannot read"):
        predict_files(ct, bad, out, threshold=0.5)
    with pytest.raises(PredictError, match=r"photo.png: a 2-D colour image .* segments 3-D volumes .* 1 channel"):
        predict_files(ct, png, out, threshold=0.5)
    rgb_vol = _nifti(tmp_path / "rgbvol.nii.gz", channels=3)
    with pytest.raises(PredictError, match=r"rgbvol.nii.gz: .* 3 channels, but .* 1 channel"):
        predict_files(ct, rgb_vol, out, threshold=0.5)
    with pytest.raises(PredictError, match=r"vol.nii.gz: a 3-D volume .* segments 2-D images .* 3 channels"):
        predict_files(rgb, vol, out, threshold=0.5)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros(SHAPE2, np.uint8)).save(gray)
    with pytest.raises(PredictError, match=r"gray.png: .*grayscale.* 1 channel, but .* 3 channels"):
        predict_files(rgb, gray, out, threshold=0.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="holds no NIfTI"):
        predict_files(ct, tmp_path / "empty", out, threshold=0.5)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _nifti(mixed / "a.nii.gz"), _png(mixed / "b.png")
    with pytest.raises(PredictError, match="mix NIfTI volumes and 2-D images"):
        predict_files(ct, mixed, out, threshold=0.5)
    with pytest.raises(PredictError, match="exactly one of coverage"):
        predict_files(ct, vol, out, coverage=0.9, threshold=0.5)
    with pytest.raises(PredictError, match="exactly one of coverage"):
        predict_files(ct, vol, out)
    with pytest.raises(PredictError, match=r"coverage=1.5: expected .*in \(0, 1\]"):
        predict_files(ct, vol, out, coverage=1.5)
    no_curve = _save(models["demo3d"][0], tmp_path / "nocurve.ckpt", None)
    with pytest.raises(PredictError, match="no validation risk-coverage curve.*threshold="):
        predict_files(no_curve, vol, out, coverage=0.9)
    assert not out.exists()  # every refusal came before any output


def test_weights_only_refuses_pickled_objects(models, tmp_path):
    module, _ = models["demo3d"]
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__,
            "extra": Path("an/arbitrary/object")}
    torch.save(ckpt, tmp_path / "pickled.ckpt")
    vol = _nifti(tmp_path / "v.nii.gz")
    with pytest.raises(PredictError, match="weights_only=True.*trust_checkpoint=true"):
        predict_files(tmp_path / "pickled.ckpt", vol, tmp_path / "out", threshold=0.5)
    (rec,) = predict_files(tmp_path / "pickled.ckpt", vol, tmp_path / "out", threshold=0.5, trust_checkpoint=True)
    assert rec["voxels"] == int(np.prod(SHAPE3))


# ---------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_predict_py_command_line(models, tmp_path):
    """From another working directory: outputs and nothing else (no .hydra/, no log file)."""
    _, ckpt = models["demo3d"]
    work = tmp_path / "work"
    work.mkdir()
    _nifti(work / "cli.nii.gz")
    cmd = [sys.executable, str(ROOT / "predict.py"), f"ckpt={ckpt}", "input=cli.nii.gz", "output=out", "coverage=0.9"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in work.iterdir()) == ["cli.nii.gz", "out"]
    assert sorted(p.name for p in (work / "out").iterdir()) == [
        "cli.json", "cli_refer.nii.gz", "cli_seg.nii.gz", "cli_uncertainty.nii.gz"]
    rec = json.loads((work / "out" / "cli.json").read_text())
    assert rec["threshold"] == 0.5 and rec["threshold_source"] == "coverage" and "coverage 0." in proc.stdout


def test_predict_py_refusals_exit_2_with_the_message(models, tmp_path, monkeypatch, capsys):
    """The Hydra app in-process: known errors are one line on stderr and exit status 2."""
    import importlib.util

    from hydra.core.global_hydra import GlobalHydra

    spec = importlib.util.spec_from_file_location("predict_cli", ROOT / "predict.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    # as when run as a script: Hydra then finds conf/ next to predict.py (not as a Python package)
    monkeypatch.setattr(cli.main.__wrapped__, "__module__", "__main__")
    _, ckpt = models["demo3d"]
    src = _nifti(tmp_path / "cli.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cli_seg.nii.gz").write_bytes(b"precious")
    for args, message in [
        ([f"ckpt={ckpt}", f"input={src}", f"output={tmp_path / 'out'}", "coverage=0.9"], "cli_seg.nii.gz"),
        ([f"input={src}", f"output={tmp_path / 'out'}", "coverage=0.9"], "missing ckpt="),
        ([f"ckpt={tmp_path / 'x.ckpt'}", f"input={src}", "output=o", "threshold=0.1"], "checkpoint not found"),
    ]:
        GlobalHydra.instance().clear()
        monkeypatch.setattr(sys, "argv", ["predict.py", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "out" / "cli_seg.nii.gz").read_bytes() == b"precious"
    GlobalHydra.instance().clear()


def test_paper_crop_models_are_refused_up_front(tmp_path):
    """paper_crop crops to the ground-truth box: impossible on unlabelled images, said before any work."""
    cfg = _cfg(tmp_path, "mmwhs", f"dataset.root={tmp_path}", "dataset.patch_size=[16,16,16]", "dataset.paper_crop=true")
    ckpt = _save(_module(cfg), tmp_path / "crop.ckpt", SYNTH_CURVE)
    with pytest.raises(PredictError, match="paper_crop=true"):
        predict_files(ckpt, _nifti(tmp_path / "a.nii.gz"), tmp_path / "out", coverage=0.9)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- a tall 2-D nnU-Net dataset
def test_png_width_and_height_stay_apart_from_plan_to_export(tmp_path):
    """Images 13 or 17 wide and 29 high: the sides round to different patch sides (16 and 32), so a
    transposition anywhere (fingerprint, loading, inversion, export) changes a shape or the content."""
    from layoutfiles import make_nnunet_2d
    from monai.transforms import SpatialPad

    root = make_nnunet_2d(tmp_path / "Dataset004_Tall", size=(13, 29), n_test=1)
    cfg = _cfg(tmp_path, "nnunet", f"dataset.root={root}", "dataset.num_workers=0", "dataset.cache=false")
    dm = build_datamodule(cfg.dataset)
    assert dm.patch_size == (16, 32)  # MONAI's (width, height) layout
    assert list(cfg.model.inferer.roi_size) == [16, 32]

    # loading: the label's pixel (row y, column x) is voxel (x, y); evaluation does not pad to the patch
    dm.setup()
    case = next(c for s in dm.splits.values() for c in s if c["case_id"] == "img_000")
    out = dm.eval_transforms()(dict(case))
    label = np.asarray(Image.open(case["label"]))
    assert label.shape == (29, 13)
    np.testing.assert_array_equal(out["label"][0].numpy(), label.T)

    # prediction: in memory by hand (z-score, pad, segment, crop) against the written files
    module = _module(cfg).eval()
    ckpt = _save(module, tmp_path / "tall.ckpt", SYNTH_CURVE)
    src = root / "imagesTs" / "img_005_0000.png"  # 17 wide
    arr = np.asarray(Image.open(src), dtype=np.float64)
    assert arr.shape == (29, 17)
    (rec,) = predict_files(ckpt, src, tmp_path / "out", threshold=0.5)
    seg = np.asarray(Image.open(rec["outputs"]["seg"]))
    u = np.load(rec["outputs"]["uncertainty_npy"])
    assert seg.shape == u.shape == (29, 17) and rec["shape"] == [29, 17]
    assert Image.open(rec["outputs"]["refer"]).size == (17, 29)
    x = torch.from_numpy(((arr - arr.mean()) / arr.std()).T.astype(np.float32))[None]  # (1, W, H)
    padded = SpatialPad((16, 32))(x)
    u_mem, pred_mem, _ = module.segment(padded[None])
    y0 = (32 - 29) // 2  # 17 >= 16: no pad across
    u_mem, pred_mem = u_mem[0, :, y0:y0 + 29].numpy(), pred_mem[0, :, y0:y0 + 29].numpy()
    np.testing.assert_allclose(u, u_mem.T, atol=1e-5)
    np.testing.assert_array_equal(seg, pred_mem.T)
    assert u.std() > 1e-4  # the uncertainty varies over the image, so a flipped or shifted map would differ


# ------------------------------------------------------------------- viewable label PNGs and overlays
def test_label_png_keeps_class_values_and_shows_colours(tmp_path):
    labels = np.random.default_rng(0).integers(0, 8, (9, 13)).astype(np.uint8)
    save_label_png(tmp_path / "seg.png", labels)
    with Image.open(tmp_path / "seg.png") as im:
        assert im.mode == "P" and im.size == (13, 9)
        assert np.array_equal(np.asarray(im), labels)  # the round trip keeps the label values
        rgb = np.asarray(im.convert("RGB"))
    for c in range(8):
        assert (rgb[labels == c] == class_colour(c)).all()
    assert len({class_colour(c) for c in range(11)}) == 11  # background and 10 classes all distinct


def test_overlay_tints_classes_and_hatches_referred_pixels():
    image = np.full((8, 8), 100, np.uint8)
    labels = np.zeros((8, 8), np.uint8)
    labels[:4] = 2
    refer = np.zeros((8, 8), bool)
    refer[6:, 6:] = True
    out = overlay_rgb(image, labels, refer)
    assert out.shape == (8, 8, 3)
    assert (out[0, 0] != out[5, 0]).any()  # class 2 tinted, background grey
    assert (out[6:, 6:] == 255).any() and (out[:4, :4] != 255).all()


# ------------------------------------------------------------------- ckpt=<run folder>
def _run_folder(root: Path, best=("best-005.ckpt",), tested: str | None = None) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    for name in (*best, "last.ckpt"):
        (root / "checkpoints" / name).write_bytes(b"x")
    if tested is not None:
        (root / "summary.json").write_text(json.dumps({"checkpoint": tested}))
    return root


def test_resolve_checkpoint_takes_a_run_folder(tmp_path):
    f = tmp_path / "model.ckpt"
    f.write_bytes(b"x")
    assert resolve_checkpoint(f) == f  # a file is itself
    run = _run_folder(tmp_path / "a")
    assert resolve_checkpoint(run) == run / "checkpoints" / "best-005.ckpt"
    # the checkpoint the run tested wins, also when the folder was moved since (the summary's path is stale)
    run = _run_folder(tmp_path / "b", best=("best-003.ckpt", "best-007.ckpt"), tested="/gone/checkpoints/best-003.ckpt")
    assert resolve_checkpoint(run) == run / "checkpoints" / "best-003.ckpt"
    # a copy of a run folder resolves to its own file, not to the original its summary still names
    original = _run_folder(tmp_path / "orig", best=("best-004.ckpt",))
    copy = _run_folder(tmp_path / "copy", best=("best-004.ckpt",), tested=str(original / "checkpoints" / "best-004.ckpt"))
    assert resolve_checkpoint(copy) == copy / "checkpoints" / "best-004.ckpt"
    with pytest.raises(PredictError, match="2 checkpoints/best-.*best-003.ckpt, best-007.ckpt"):
        resolve_checkpoint(_run_folder(tmp_path / "c", best=("best-003.ckpt", "best-007.ckpt")))
    with pytest.raises(PredictError, match="no selected checkpoint.*last.ckpt"):
        resolve_checkpoint(_run_folder(tmp_path / "d", best=()))


def test_predict_and_calibrate_take_the_run_folder(demo2d_ckpt, tmp_path):
    from uaseg.inference.files import find_best_checkpoint

    _, ckpt = demo2d_ckpt
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    best = run / "checkpoints" / "best-002.ckpt"
    best.write_bytes(Path(ckpt).read_bytes())
    (rec,) = predict_files(run, _png(tmp_path / "tile.png"), tmp_path / "out", coverage=0.9)
    assert rec["checkpoint"] == str(best.resolve())
    assert find_best_checkpoint(run) == best
