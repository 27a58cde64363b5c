"""dataset=nnunet / dataset=decathlon over tiny folders in each layout: discovery, channels, the
fingerprint and plan (checked against numbers computed here by hand), and every bad-folder message."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from layoutfiles import (
    CT_SPACINGS, SWAPPED, affine_for, boxes, make_decathlon, make_nnunet_2d, make_nnunet_3d, save_nifti, write_json,
)

from uaseg.errors import DatasetError
from uaseg.train import build_datamodule, build_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_dataset.py"


def dm_of(make_cfg, dataset: str, root: Path, *extra: str):
    cfg = make_cfg(dataset, f"dataset.root={root}", "dataset.num_workers=0", *extra)
    return build_datamodule(cfg.dataset), cfg


# --------------------------------------------------------------------------------- channels, meta
def test_two_channel_files_stack_in_channel_names_order(tmp_path, make_cfg):
    root = make_nnunet_3d(tmp_path / "Dataset002_Two", channels=("noNorm", "noNorm"))
    dm, cfg = dm_of(make_cfg, "nnunet", root, "dataset.cache=false")
    assert cfg.dataset.meta.in_channels == 2 and list(cfg.dataset.meta.class_names) == ["liver", "tumour"]
    module = build_module(cfg)
    assert module.net.in_channels == 2 and module.num_classes == 3  # the model adapts to dataset.json
    dm.setup()
    case = next(c for s in dm.splits.values() for c in s if c["case_id"] == "case_000")
    assert [Path(f).name for f in case["image"]] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    # case_000 has the median spacing and RAS axes: preprocessing leaves the voxels as in the files
    out = dm.eval_transforms()(dict(case))
    for c in range(2):
        raw = np.asarray(nib.load(case["image"][c]).dataobj, dtype=np.float32)
        np.testing.assert_allclose(out["image"][c].numpy(), raw, atol=1e-3)
    np.testing.assert_array_equal(out["label"][0].numpy(), np.asarray(nib.load(case["label"]).dataobj))
    b = next(iter(dm.train_dataloader()))
    assert tuple(b["image"].shape) == (2, 2, 16, 16, 16) and set(b["label"].unique().tolist()) <= {0, 1, 2}


def test_decathlon_4d_modalities_become_channels(tmp_path, make_cfg):
    root = make_decathlon(tmp_path / "Task01_BrainTumour")
    dm, cfg = dm_of(make_cfg, "decathlon", root)
    assert cfg.dataset.meta.in_channels == 2 and list(cfg.dataset.meta.class_names) == ["edema", "enhancing tumour"]
    dm.setup()
    ids = sorted(c["case_id"] for s in dm.splits.values() for c in s)
    assert ids == [f"BRATS_{i:03d}" for i in range(5)]  # the ._ copy is not a case
    assert dm.plan["normalization"] == [{"channel": "FLAIR", "scheme": "zscore", "use_nonzero_mask": False},
                                        {"channel": "T1w", "scheme": "zscore", "use_nonzero_mask": False}]
    # BRATS_001 has the median spacing (1 x 1 x 1.25): no resampling, so channel c is the z-scored
    # modality c of the 4-D file
    case = next(c for s in dm.splits.values() for c in s if c["case_id"] == "BRATS_001")
    img = dm.eval_transforms()(dict(case))["image"]
    raw = np.asarray(nib.load(case["image"]).dataobj, dtype=np.float64)
    assert img.shape[0] == 2 and raw.shape == (16, 16, 16, 2)
    for c in range(2):
        expected = (raw[..., c] - raw[..., c].mean()) / raw[..., c].std()
        np.testing.assert_allclose(img[c].numpy(), expected, atol=1e-4)


# --------------------------------------------------------------------------------- fingerprint and plan
def _by_hand_ct(root: Path) -> np.ndarray:
    values = []
    for i in range(5):
        img = np.asarray(nib.load(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz").dataobj, dtype=np.float64)
        lab = np.asarray(nib.load(root / "labelsTr" / f"case_{i:03d}.nii.gz").dataobj)
        values.append(img[lab > 0])
    return np.concatenate(values)


def test_fingerprint_matches_numbers_computed_by_hand(tmp_path, make_cfg, caplog):
    root = make_nnunet_3d(tmp_path / "Dataset001_CT")
    with caplog.at_level(logging.INFO, logger="uaseg.data.formats.layouts"):
        dm, cfg = dm_of(make_cfg, "nnunet", root)
        dm.setup()
        dm.setup("test")
    assert sum("dataset fingerprint" in r.getMessage() for r in caplog.records) == 1  # printed once
    fp_file = root / "fingerprint.json"
    fp = json.loads(fp_file.read_text())
    assert fp["cases"][f"case_{SWAPPED:03d}"]["axcodes"] == "ARS"
    assert fp["cases"]["case_000"]["spacing"] == pytest.approx(list(CT_SPACINGS[0]))
    # RAS median spacing: x from (1.2, 1.2, 1.2 [swapped case], 1.0, 0.8), y all 1, z (2, 2.5, 2, 3, 2)
    assert dm.plan["fingerprint"]["median_spacing"] == pytest.approx([1.2, 1.0, 2.0])
    assert dm.plan["target_spacing"] == pytest.approx([1.2, 1.0, 2.0])
    assert dm.patch_size == (16, 16, 16)
    fg = _by_hand_ct(root)
    ch = fp["channels"][0]
    assert ch["n_voxels"] == fg.size
    assert ch["percentile_00_5"] == pytest.approx(np.percentile(fg, 0.5))
    assert ch["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5))
    assert ch["mean"] == pytest.approx(fg.mean()) and ch["std"] == pytest.approx(fg.std())
    norm = dm.plan["normalization"][0]
    assert norm["scheme"] == "ct" and norm["clip"] == pytest.approx([np.percentile(fg, 0.5), np.percentile(fg, 99.5)])
    # the plan travels in the module's dataset config (and so in checkpoints)
    assert build_module(cfg).dataset_cfg["plan"] == dm.plan
    # reused, not rewritten; a spacing override re-plans from the same fingerprint
    stamp = fp_file.stat().st_mtime_ns
    dm2, cfg2 = dm_of(make_cfg, "nnunet", root, "dataset.spacing=[0.5,0.5,1.0]")
    assert fp_file.stat().st_mtime_ns == stamp
    # median shape at 0.5 x 0.5 x 1 (nnU-Net rounds each case's): x 16*1.2/0.5 = 38.4 -> 38 (3 cases),
    # 32, 25.6 -> 26: median 38, up to a multiple of unet_small's total stride 8 -> 40; y 32;
    # z (32, 40, 32, 48, 32) -> 32
    assert dm2.plan["target_spacing"] == [0.5, 0.5, 1.0] and dm2.patch_size == (40, 32, 32)
    assert dm2.plan["network_stride"] == [8, 8, 8] and list(cfg2.model.inferer.roi_size) == [40, 32, 32]
    dm3, cfg3 = dm_of(make_cfg, "nnunet", root, "dataset.patch_size=[32,32,16]")
    assert dm3.patch_size == (32, 32, 16) and list(cfg3.model.inferer.roi_size) == [32, 32, 16]


def test_a_changed_dataset_never_reuses_its_fingerprint(tmp_path, make_cfg):
    root = make_nnunet_3d(tmp_path / "Dataset001_CT")
    dm_of(make_cfg, "nnunet", root)
    before = (root / "fingerprint.json").read_text()
    lab = boxes(seed=7)
    save_nifti(lab, affine_for(CT_SPACINGS[1]), root / "labelsTr" / "case_001.nii.gz")
    with pytest.raises(DatasetError) as e:
        dm_of(make_cfg, "nnunet", root)
    msg = str(e.value)
    assert "fingerprint.json" in msg and "labelsTr/case_001.nii.gz" in msg and "Delete" in msg
    assert (root / "fingerprint.json").read_text() == before  # never overwritten
    (root / "fingerprint.json").unlink()
    dm_of(make_cfg, "nnunet", root)  # recomputed from the new files
    assert json.loads((root / "fingerprint.json").read_text()) != json.loads(before)


def test_read_only_root_keeps_fingerprint_next_to_the_splits(tmp_path, make_cfg, monkeypatch):
    import uaseg.data.formats.layouts as layouts

    root = make_nnunet_3d(tmp_path / "Dataset001_CT")
    monkeypatch.setattr(layouts, "root_writable", lambda root: False)
    monkeypatch.setattr(layouts.StandardLayoutDataModule, "_root_writable", lambda self: False)
    dm, _ = dm_of(make_cfg, "nnunet", root, f"dataset.cache_dir={tmp_path / 'cache'}")
    dm.setup()
    assert (tmp_path / "cache" / "fingerprint.json").exists() and (tmp_path / "cache" / "splits_final.json").exists()
    assert not (root / "fingerprint.json").exists()


# --------------------------------------------------------------------------------- bad folders
def _unlink(p: Path) -> None:
    p.unlink()


def _edit_json(root: Path, **changes) -> None:
    d = json.loads((root / "dataset.json").read_text())
    d.update(changes)
    write_json(root / "dataset.json", d)


NNUNET_BAD = {
    "missing channel file": (lambda r: _unlink(r / "imagesTr" / "case_001_0001.nii.gz"),
                             ["case case_001: channel 1 (T2)", "case_001_0001.nii.gz is missing"]),
    "label value not in labels": (lambda r: save_nifti(boxes(seed=3) * 3, affine_for(CT_SPACINGS[3]),
                                                       r / "labelsTr" / "case_003.nii.gz"),
                                  ["case_003.nii.gz: unexpected label values [3, 6]", "allowed are [0, 1, 2]"]),
    "channel shape mismatch": (lambda r: save_nifti(np.zeros((16, 16, 14), np.float32), affine_for(CT_SPACINGS[0]),
                                                    r / "imagesTr" / "case_000_0001.nii.gz"),
                               ["case_000_0001.nii.gz has shape (16, 16, 14)", "case_000_0000.nii.gz (channel 0"]),
    "label affine mismatch": (lambda r: save_nifti(boxes(seed=4), affine_for((2.0, 2.0, 2.0)),
                                                   r / "labelsTr" / "case_004.nii.gz"),
                              ["case_004_0000.nii.gz and its label", "case_004.nii.gz have different affines"]),
    "numTraining disagrees": (lambda r: _edit_json(r, numTraining=7),
                              ["dataset.json: numTraining is 7 but labelsTr/ holds 5 case(s)"]),
    "region-based labels": (lambda r: _edit_json(r, labels={"background": 0, "whole": [1, 2], "core": 2}),
                            ["dataset.json: label 'whole' is a region", "not supported"]),
    "image without label": (lambda r: _unlink(r / "labelsTr" / "case_002.nii.gz"),
                            ["case_002_0000.nii.gz: image without its label", "labelsTr/case_002.nii.gz"]),
}
DECATHLON_BAD = {
    "modalities disagree": (lambda r: _edit_json(r, modality={"0": "FLAIR", "1": "T1w", "2": "T2w"}),
                            ["BRATS_000.nii.gz: expected a 4-D volume with 3 modalities", "got shape (16, 16, 16, 2)"]),
    "listed file missing": (lambda r: _unlink(r / "labelsTr" / "BRATS_001.nii.gz"),
                            ["training entry 1 names label './labelsTr/BRATS_001.nii.gz'", "does not exist"]),
    "numTraining disagrees": (lambda r: _edit_json(r, numTraining=4),
                              ["dataset.json: numTraining is 4 but its 'training' list has 5 case(s)"]),
}


@pytest.mark.parametrize("dataset,problem", [("nnunet", k) for k in NNUNET_BAD] + [("decathlon", k) for k in DECATHLON_BAD])
def test_bad_folders_name_the_file(tmp_path, make_cfg, dataset, problem):
    if dataset == "nnunet":
        root = make_nnunet_3d(tmp_path / "Dataset002_Two", channels=("T1", "T2"), n_test=0)
        breaks, expected = NNUNET_BAD[problem]
    else:
        root = make_decathlon(tmp_path / "Task01_BrainTumour", n_test=0)
        breaks, expected = DECATHLON_BAD[problem]
    breaks(root)
    with pytest.raises(DatasetError) as e:
        dm_of(make_cfg, dataset, root)
    for text in expected:
        assert text in str(e.value), str(e.value)
    assert not (root / "fingerprint.json").exists()  # nothing is planned from a bad folder


def test_missing_root_is_named_before_any_resolver_runs(make_cfg):
    from uaseg.errors import ConfigError
    from uaseg.train import train

    with pytest.raises(ConfigError, match=r"missing mandatory config values: dataset\.root=\.\.\."):
        train(make_cfg("nnunet"))


def test_missing_folder_shows_the_layout(tmp_path, make_cfg):
    with pytest.raises(DatasetError, match="no dataset.json") as e:
        (tmp_path / "empty").mkdir()
        dm_of(make_cfg, "nnunet", tmp_path / "empty")
    assert "imagesTr/<case>_0000.nii.gz" in str(e.value)


# --------------------------------------------------------------------------------- check_dataset.py
def test_check_dataset_script(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_dataset", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    nn = make_nnunet_3d(tmp_path / "Dataset002_Two", channels=("T1", "T2"), n_test=0)
    dec = make_decathlon(tmp_path / "Task01", n_test=0)
    assert mod.main(["--dataset", "nnunet", "--root", str(nn)]) == 0
    out = capsys.readouterr().out
    assert "case_004" in out and "T1, T2" in out and "liver" in out and "OK" in out
    assert mod.main(["--dataset", "decathlon", "--root", str(dec)]) == 0
    assert "BRATS_003" in capsys.readouterr().out
    save_nifti(boxes(seed=1) * 3, affine_for(CT_SPACINGS[1]), nn / "labelsTr" / "case_001.nii.gz")
    assert mod.main(["--dataset", "nnunet", "--root", str(nn)]) == 1
    assert "case_001.nii.gz: unexpected label values [3, 6]" in capsys.readouterr().out
    os.remove(nn / "imagesTr" / "case_002_0001.nii.gz")
    assert mod.main(["--dataset", "nnunet", "--root", str(nn)]) == 2
    assert "case_002_0001.nii.gz is missing" in capsys.readouterr().out


def test_labels_without_foreground_are_warnings_and_none_with_foreground_an_error(tmp_path, make_cfg, capsys, caplog):
    """A label of only the ignore label is not annotated, not "all background": check_dataset.py and
    training say which; every label without foreground is no longer "OK" but a problem (exit 1)."""
    import importlib.util
    import logging

    from PIL import Image

    spec = importlib.util.spec_from_file_location("check_dataset", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    root = make_nnunet_2d(tmp_path / "Dataset005_Ignore", n_test=0, ignore=True)
    labels = sorted((root / "labelsTr").glob("*.png"))
    shape = {p: np.asarray(Image.open(p)).shape for p in labels}
    Image.fromarray(np.full(shape[labels[0]], 3, np.uint8), "L").save(labels[0])  # not annotated at all
    half = np.zeros(shape[labels[1]], np.uint8)
    half[:6] = 3
    Image.fromarray(half, "L").save(labels[1])  # background and unannotated rows
    assert mod.main(["--dataset", "nnunet", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert ("2 label(s) without foreground (training warns about each):\n"
            "  - img_000: only the ignore label (no voxel is annotated)\n"
            "  - img_001: only background and the ignore label\n") in out
    assert "all background" not in out and out.rstrip().endswith("OK: no problems found (2 warning(s) above)")
    dm, _ = dm_of(make_cfg, "nnunet", root, "dataset.cache=false")
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    warned = sorted(r.getMessage().split(": ", 1)[1] for r in caplog.records if "the label" in r.getMessage())
    assert [w.split(" holds only ")[0] for w in warned] == [f"the label {labels[0]}", f"the label {labels[1]}"]
    assert all(w.endswith("the ignore label (no voxel is annotated)") or w.endswith("background and the ignore label")
               for w in warned)  # the training grid may pad the label with background
    for path in labels:
        Image.fromarray(np.zeros(shape[path], np.uint8), "L").save(path)
    assert mod.main(["--dataset", "nnunet", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "none of the 5 labels has any foreground" in out and "OK" not in out and "img_004: all background" in out


def test_non_finite_voxels_are_an_error_naming_the_channel_file(tmp_path, make_cfg, capsys):
    import importlib.util

    root = make_nnunet_3d(tmp_path / "Dataset002_Two", channels=("T1", "T2"), n_test=0)
    image = root / "imagesTr" / "case_002_0001.nii.gz"
    arr = np.asarray(nib.load(str(image)).dataobj).astype(np.float32)
    arr[0, 0, :3] = np.nan
    save_nifti(arr, nib.load(str(image)).affine, image)
    message = f"{image}: 3 of {arr.size} voxels are NaN or infinite"
    spec = importlib.util.spec_from_file_location("check_dataset", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--dataset", "nnunet", "--root", str(root)]) == 1 and message in capsys.readouterr().out
    dm, _ = dm_of(make_cfg, "nnunet", root, "dataset.cache=false")
    with pytest.raises(DatasetError, match=re.escape(message)):
        dm.prepare_data()


# --------------------------------------------------------------------------------- normalisation applied to voxels
def _ct_by_hand(raw: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """nnU-Net's CT normalisation: clip to the foreground's 0.5 / 99.5 percentiles, then the
    foreground's mean and standard deviation (of the unclipped training foreground)."""
    lo, hi = np.percentile(fg, 0.5), np.percentile(fg, 99.5)
    return (np.clip(raw, lo, hi) - fg.mean()) / fg.std()


def test_ct_normalisation_is_applied_to_the_voxels(tmp_path, make_cfg):
    """case_000 has the median spacing and RAS axes, so the transform's voxels are the file's, clipped
    and z-scored with the training foreground's numbers (the background, -900 HU, is clipped)."""
    root = make_nnunet_3d(tmp_path / "Dataset001_CT")
    dm, _ = dm_of(make_cfg, "nnunet", root, "dataset.cache=false")
    dm.setup()
    case = next(c for s in dm.splits.values() for c in s if c["case_id"] == "case_000")
    out = dm.eval_transforms()(dict(case))["image"][0].numpy()
    raw = np.asarray(nib.load(case["image"][0]).dataobj, dtype=np.float64)
    fg = _by_hand_ct(root)
    want = _ct_by_hand(raw, fg)
    np.testing.assert_allclose(out, want, atol=1e-4)
    assert (raw < np.percentile(fg, 0.5)).mean() > 0.5  # the clip matters: most voxels are below it
    assert not np.allclose(out, (raw - raw.mean()) / raw.std(), atol=1e-2)  # not the case's own z-score


def test_dataset_json_out_of_index_order(tmp_path, make_cfg):
    """channel_names and labels written out of index order: channel i is still file _000i with its own
    normalisation (0: noNorm = raw, 1: CT), and class k is the label named with value k."""
    root = make_nnunet_3d(tmp_path / "Dataset003_Order", channels=("noNorm", "CT"),
                          labels={"tumour": 2, "background": 0, "liver": 1})
    _edit_json(root, channel_names={"1": "CT", "0": "noNorm"})
    assert list(json.loads((root / "dataset.json").read_text())["channel_names"]) == ["1", "0"]
    dm, cfg = dm_of(make_cfg, "nnunet", root, "dataset.cache=false")
    assert dm.channel_names == ("noNorm", "CT") and cfg.dataset.meta.in_channels == 2
    assert list(cfg.dataset.meta.class_names) == ["liver", "tumour"]
    assert [n["scheme"] for n in dm.plan["normalization"]] == ["none", "ct"]
    dm.setup()
    case = next(c for s in dm.splits.values() for c in s if c["case_id"] == "case_000")
    assert [Path(f).name for f in case["image"]] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    out = dm.eval_transforms()(dict(case))
    raw = [np.asarray(nib.load(f).dataobj, dtype=np.float64) for f in case["image"]]
    np.testing.assert_allclose(out["image"][0].numpy(), raw[0], atol=1e-3)
    fg = np.concatenate([
        np.asarray(nib.load(root / "imagesTr" / f"case_{i:03d}_0001.nii.gz").dataobj, dtype=np.float64)[
            np.asarray(nib.load(root / "labelsTr" / f"case_{i:03d}.nii.gz").dataobj) > 0] for i in range(5)])
    np.testing.assert_allclose(out["image"][1].numpy(), _ct_by_hand(raw[1], fg), atol=1e-4)
    # label values pass through unchanged: value 1 (the 6^3 box) is "liver", value 2 (4^3) "tumour"
    lab = out["label"][0].numpy()
    assert int((lab == 1).sum()) == 6 ** 3 and int((lab == 2).sum()) == 4 ** 3


# --------------------------------------------------------------------------------- stored splits
def test_a_stored_split_that_no_longer_matches_the_cases_is_an_error(tmp_path, make_cfg):
    root = make_nnunet_3d(tmp_path / "Dataset001_CT", n_test=0)
    dm, _ = dm_of(make_cfg, "nnunet", root, "dataset.cache=false")
    dm.setup()
    path = root / "splits_final.json"
    folds = json.loads(path.read_text())
    renamed = [{k: ["case_999" if c == "case_004" else c for c in v] for k, v in f.items()} for f in folds]
    write_json(path, renamed)  # as many cases, one of them not in the dataset
    with pytest.raises(DatasetError) as e:
        dm_of(make_cfg, "nnunet", root, "dataset.cache=false")[0].setup()
    msg = str(e.value)
    assert str(path) in msg and "case_999" in msg and "case_004" in msg and "delete" in msg
    write_json(path, [{k: [c for c in v if c != "case_004"] for k, v in f.items()} for f in folds])  # one case fewer
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        dm_of(make_cfg, "nnunet", root, "dataset.cache=false")[0].setup()
