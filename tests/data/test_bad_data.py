"""Bad data is found before training, not after: non-finite voxels, label values that are not exact
code-list integers, a broken file in the test fold, all-background labels -- each one clear error (or
warning) naming the file, from train() and from scripts/check_dataset.py; GlaS training and prediction
accept the same image kinds."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from datafiles import make_glas, make_mmwhs, save_nifti
from PIL import Image

from uaseg.data import build_datamodule
from uaseg.errors import DatasetError, PredictError
from uaseg.train import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def mmwhs(tmp_path) -> Path:
    return make_mmwhs(tmp_path / "MM-WHS", with_test=False)


def mmwhs_cfg(make_cfg, root: Path, *extra: str):
    return make_cfg("mmwhs", f"dataset.root={root}", "dataset.patch_size=[16,16,16]", "dataset.num_workers=0", *extra)


def resave(path: Path, array: np.ndarray) -> Path:
    """``array`` (in its own data type) into ``path``, on the file's grid."""
    return save_nifti(array, nib.load(str(path)).affine, path)


def check_dataset(root: Path, capsys) -> tuple[int, str]:
    spec = importlib.util.spec_from_file_location("check_dataset", ROOT / "scripts" / "check_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    code = mod.main(["--dataset", "mmwhs", "--root", str(root)])
    return code, capsys.readouterr().out


def assert_not_trained(cfg) -> None:
    out = Path(cfg.paths.output_dir)
    assert not (out / "checkpoints").exists() and not (out / "csv" / "metrics.csv").exists()


def test_non_finite_voxels_are_an_error_naming_file_and_count(mmwhs, make_cfg, capsys):
    image = mmwhs / "ct_train" / "ct_train_1005_image.nii.gz"
    arr = np.array(nib.load(str(image)).dataobj).astype(np.float32)
    arr[0, 0, :7] = np.nan
    arr[1, 1, :2] = np.inf
    resave(image, arr)
    message = f"{image}: 9 of {arr.size} voxels are NaN or infinite"
    code, out = check_dataset(mmwhs, capsys)
    assert code == 1 and message in out and "OK" not in out
    cfg = mmwhs_cfg(make_cfg, mmwhs)
    with pytest.raises(DatasetError, match=message):
        train(cfg)
    assert_not_trained(cfg)


def test_label_values_must_be_exact_integers_of_the_code_list(mmwhs, make_cfg, capsys):
    label = mmwhs / "ct_train" / "ct_train_1002_label.nii.gz"
    lab = np.array(nib.load(str(label)).dataobj).astype(np.float64)
    lab[lab == 421] = 421.5  # int(421.5) == 421, but it is no MM-WHS value
    resave(label, lab)
    code, out = check_dataset(mmwhs, capsys)
    assert code == 1 and f"{label}: label values must be integers" in out and "found [421.5]" in out
    cfg = mmwhs_cfg(make_cfg, mmwhs)
    with pytest.raises(DatasetError, match=r"ct_train_1002_label.nii.gz: label values must be integers .*found \[421.5\]"):
        train(cfg)
    assert_not_trained(cfg)


@pytest.mark.parametrize("damage", ["truncated image", "unknown label value"])
def test_a_bad_case_in_the_test_fold_fails_before_training(mmwhs, make_cfg, damage):
    cfg = mmwhs_cfg(make_cfg, mmwhs)
    dm = build_datamodule(cfg.dataset)
    dm.setup()
    case = dm.splits["test"][-1]
    if damage == "truncated image":
        path = Path(case["image"])
        path.write_bytes(path.read_bytes()[:2000])  # the header still reads: only decoding finds it
        message = f"case {case['case_id']}: {path}: cannot read this file"
    else:
        path = Path(case["label"])
        lab = np.array(nib.load(str(path)).dataobj)
        lab[0, 0, 0] = 999
        resave(path, lab)
        message = f"case {case['case_id']}: {path}: unexpected label values \\[999\\]"
    with pytest.raises(DatasetError, match=message) as err:
        train(cfg)
    assert "\n" not in str(err.value)  # nibabel's "... - could the file be damaged?" is on a line of its own
    assert_not_trained(cfg)


def test_background_only_labels_warned_by_name_and_no_foreground_is_an_error(mmwhs, make_cfg, caplog):
    labels = sorted((mmwhs / "ct_train").glob("*_label.nii*"))
    resave(labels[0], np.zeros(nib.load(str(labels[0])).shape, np.int16))
    dm = build_datamodule(mmwhs_cfg(make_cfg, mmwhs).dataset)
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    assert [r.getMessage() for r in caplog.records if "all background" in r.getMessage()] == [
        next(f"case 1001 ({split} split): the label {labels[0]} is all background"
             for split, cases in dm.splits.items() if any(c["case_id"] == "1001" for c in cases))]
    for path in labels:
        resave(path, np.zeros(nib.load(str(path)).shape, np.int16))
    cfg = mmwhs_cfg(make_cfg, mmwhs, "dataset.cache=false")
    with pytest.raises(DatasetError, match=r"none of the \d+ training labels has any foreground"):
        train(cfg)
    assert_not_trained(cfg)


def test_glas_training_and_prediction_accept_the_same_image_modes(tmp_path, make_cfg):
    """Greyscale is refused by both (it is not what the network saw); palette images pass both."""
    import torch
    from conftest import FAST, compose_cfg

    from uaseg.inference import predict_files
    from uaseg.train import build_module

    root = make_glas(tmp_path / "glas")
    rgb = np.asarray(Image.open(root / "train_1.bmp"))
    Image.fromarray(rgb).convert("L").save(root / "train_1.bmp")
    cfg = make_cfg("glas", f"dataset.root={root}", "dataset.patch_size=[32,32]")
    with pytest.raises(DatasetError, match=r"train_1.bmp: unsupported image mode 'L' \(accepted: RGB, RGBA, P\)"):
        train(cfg)

    torch.manual_seed(0)
    module = build_module(compose_cfg(["dataset=glas", f"dataset.root={root}", "dataset.patch_size=[32,32]", *FAST],
                                      tmp_path / "m", tmp_path / "c"))
    ckpt = tmp_path / "glas.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2"}, ckpt)
    with pytest.raises(PredictError, match=r"train_1.bmp: a 2-D grayscale image .* but this model \(GlaSDataModule\)"):
        predict_files(ckpt, root / "train_1.bmp", tmp_path / "out", threshold=0.5)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.bmp")
    (record,) = predict_files(ckpt, tmp_path / "palette.bmp", tmp_path / "out", threshold=0.5)
    assert record["shape"] == list(rgb.shape[:2])
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")  # colour, but not a mode training reads
    with pytest.raises(PredictError, match=r"cmyk.tif: unsupported image mode 'CMYK' .*, as in training"):
        predict_files(ckpt, tmp_path / "cmyk.tif", tmp_path / "out", threshold=0.5)
