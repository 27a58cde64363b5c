"""dataset=mmwhs over tiny files in the released format (NIfTI, 0.44x0.44x0.625 mm, label values 205..850)."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from datafiles import (
    MMWHS_VALUES,
    SHAPE,
    SPACING,
    affine_for,
    make_mmwhs,
    mmwhs_label,
    save_nifti,
)
from hydra.utils import instantiate
from omegaconf import OmegaConf

from uaseg.data import checks as checks_mod
from uaseg.data.checks import DatasetError
from uaseg.data.monai_datasets import NamedErrorsDataset
from uaseg.data.formats.filebased import FileSegDataModule
from uaseg.data.datasets.mmwhs import MMWHSDataModule

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset" / "mmwhs.yaml"
PATCH = (16, 16, 16)


@pytest.fixture
def root(tmp_path) -> Path:
    return make_mmwhs(tmp_path / "MM-WHS")


def dm_for(root: Path, **kw) -> MMWHSDataModule:
    args = dict(root=str(root), patch_size=PATCH, batch_size=2, num_workers=0, samples_per_image=2)
    args.update(kw)
    return MMWHSDataModule(**args)


def label_of(cid: str, root: Path) -> Path:
    return next((root / "ct_train").glob(f"ct_train_{cid}_label.nii*"))


def image_of(cid: str, root: Path) -> Path:
    return next((root / "ct_train").glob(f"ct_train_{cid}_image.nii*"))


# --------------------------------------------------------------------------------- batches
def test_batches_through_the_dataloaders(root):
    dm = dm_for(root)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 3, "val": 1, "test": 2}
    b = next(iter(dm.train_dataloader()))
    assert {"image", "label", "case_id", "group"} <= set(b)
    assert b["image"].shape == (2, 1, *PATCH) and b["image"].dtype == torch.float32  # batch_size patches
    assert b["label"].shape == (2, 1, *PATCH) and b["label"].dtype == torch.int64
    assert set(b["label"].unique().tolist()) <= set(range(8))
    assert -0.5 <= float(b["image"].min()) and float(b["image"].max()) <= 1.5  # [0, 1] + intensity augmentation
    assert b["group"] == ["ct"] * 2 and all(c in {"1001", "1002", "1003", "1004", "1005", "1010"} for c in b["case_id"])
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        for b in loader:
            assert b["image"].shape[0] == 1 and b["image"].shape[1] == 1
            # the whole volume at its own size: no padded voxel is evaluated
            assert b["label"].shape[2:] == b["image"].shape[2:]
            assert set(b["label"].unique().tolist()) <= set(range(8))
            assert 0.0 <= float(b["image"].min()) and float(b["image"].max()) <= 1.0  # HU window -> [0, 1]
            assert hasattr(b["image"], "affine")  # MetaTensor kept for export / inversion
    assert dm.num_classes == 8 and dm.class_names[2] == "LA" and dm.sw_overlap == 0.5


def test_case_ids_are_the_numbers_found_and_nii_accepted(root):
    dm = dm_for(root)
    dm.setup()
    ids = sorted(c["case_id"] for s in dm.splits.values() for c in s)
    assert ids == ["1001", "1002", "1003", "1004", "1005", "1010"]
    assert any(c["image"].endswith(".nii") for s in dm.splits.values() for c in s)


def test_label_421_is_LA_and_warned_once_per_file(root, caplog):
    # native spacing: no resampling, so the stray 421 voxels are still at [1:3]^3 (RAS, no flip)
    dm = dm_for(root, spacing=SPACING, cache=False)
    case = {"case_id": "1002", "group": "ct", "image": str(image_of("1002", root)), "label": str(label_of("1002", root))}
    tf = dm.eval_transforms()
    with caplog.at_level(logging.WARNING):
        out = tf(dict(case))
        tf(dict(case))
    assert int(out["label"][0, 1, 1, 1]) == 3  # LA
    assert set(out["label"].unique().tolist()) == set(range(8))
    warned = [r for r in caplog.records if "421" in r.getMessage() and "1002" in r.getMessage()]
    assert len(warned) == 1


def test_all_released_values_map_in_class_order(root):
    dm = dm_for(root, spacing=SPACING, cache=False)
    case = {"case_id": "1001", "group": "ct", "image": str(image_of("1001", root)), "label": str(label_of("1001", root))}
    out = dm.eval_transforms()(case)["label"][0]
    raw = np.asarray(nib.load(label_of("1001", root)).dataobj)
    for k, v in enumerate(MMWHS_VALUES, start=1):
        assert int((raw == v).sum()) == int((out == k).sum()), (k, v)


# --------------------------------------------------------------------------------- splits
def test_splits_persisted_reused_disjoint(root):
    dm = dm_for(root, seed=1)
    dm.setup()
    path = root / "splits_final.json"
    assert path.exists()
    folds = json.loads(path.read_text())
    tests = [set(f["test"]) for f in folds]
    assert len(folds) == 5 and set().union(*tests) == {"1001", "1002", "1003", "1004", "1005", "1010"}
    assert sum(len(t) for t in tests) == 6  # disjoint
    # a second datamodule, even with another seed, reads the same file
    dm2 = dm_for(root, seed=99)
    dm2.setup()
    assert [c["case_id"] for c in dm2.splits["test"]] == [c["case_id"] for c in dm.splits["test"]]
    for k in range(5):
        d = dm_for(root, fold=k)
        d.setup()
        s = {n: {c["case_id"] for c in v} for n, v in d.splits.items()}
        assert s["test"] == set(folds[k]["test"])
        assert not (s["val"] & s["test"]) and not (s["train"] & s["test"]) and not (s["train"] & s["val"])


def test_read_only_root_puts_splits_in_cache_dir(root, tmp_path, monkeypatch):
    monkeypatch.setattr(FileSegDataModule, "_root_writable", lambda self: False)
    dm = dm_for(root, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert (tmp_path / "cache" / "splits_final.json").exists()
    assert not (root / "splits_final.json").exists()


# --------------------------------------------------------------------------------- errors
def test_missing_root_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as e:
        dm_for(tmp_path / "nope").setup()
    assert "ct_train_1001_image.nii.gz" in str(e.value)  # shows the expected layout
    (tmp_path / "empty" / "ct_train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no ct_train") as e:
        dm_for(tmp_path / "empty").setup()
    assert "expected layout" in str(e.value)


def test_image_without_label(root):
    label_of("1005", root).unlink()
    with pytest.raises(DatasetError, match="ct_train_1005_image.nii.gz: image without its label"):
        dm_for(root).setup()


def test_duplicate_nii_and_niigz(root):
    img = image_of("1001", root)
    (root / "ct_train" / "ct_train_1001_image.nii").write_bytes(gzip.decompress(img.read_bytes()))
    with pytest.raises(DatasetError, match="1001"):
        dm_for(root).setup()


def test_unexpected_label_value_names_the_file(root):
    lab = mmwhs_label(seed=3, extra_value=999)
    save_nifti(lab, affine_for(), label_of("1005", root))
    dm = dm_for(root, cache=False)
    dm.setup()
    cases = [c for s in dm.splits.values() for c in s if c["case_id"] == "1005"]
    with pytest.raises(DatasetError) as e:
        NamedErrorsDataset(cases, dm.eval_transforms())[0]
    assert "ct_train_1005_label.nii.gz" in str(e.value) and "999" in str(e.value)


def test_unexpected_value_raised_from_the_loader(root):
    save_nifti(mmwhs_label(extra_value=7), affine_for(), label_of("1001", root))
    save_nifti(mmwhs_label(extra_value=7), affine_for(), label_of("1002", root))  # in a split either way
    dm = dm_for(root)
    with pytest.raises(DatasetError, match=r"ct_train_100[12]_label.nii.gz: unexpected label values \[7\]"):
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            for _ in loader:
                pass


def test_mismatched_shape_names_both_files(root):
    save_nifti(mmwhs_label(shape=(40, 40, 30)), affine_for(), label_of("1003", root))
    with pytest.raises(DatasetError) as e:
        dm_for(root).setup()
    msg = str(e.value)
    assert "ct_train_1003_image.nii.gz" in msg and "ct_train_1003_label.nii.gz" in msg and "shape" in msg
    # with the header check off, the transform still refuses (naming both)
    dm = dm_for(root, check_files=False, cache=False)
    with pytest.raises(DatasetError) as e:
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            for _ in loader:
                pass
    assert "ct_train_1003_image.nii.gz" in str(e.value) and "ct_train_1003_label.nii.gz" in str(e.value)


def test_mismatched_affine_names_both_files(root):
    lab = np.asarray(nib.load(label_of("1001", root)).dataobj)
    save_nifti(lab, affine_for(spacing=(0.5, 0.5, 0.625)), label_of("1001", root))
    with pytest.raises(DatasetError, match="different affines") as e:
        dm_for(root).setup()
    assert "ct_train_1001_image.nii.gz" in str(e.value) and "ct_train_1001_label.nii.gz" in str(e.value)


def test_corrupt_file_names_it(root):
    image_of("1004", root).write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(DatasetError, match="ct_train_1004_image.nii"):
        dm_for(root).setup()


def test_truncated_file_names_it_at_load(root):
    p = image_of("1001", root)
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # valid header, half the voxels
    dm = dm_for(root, cache=False)
    dm.setup()  # header check passes
    with pytest.raises(DatasetError, match="ct_train_1001_image.nii.gz"):
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            for _ in loader:
                pass


# --------------------------------------------------------------------------------- geometry
def test_small_volumes_are_padded_for_training_only(root):
    dm = dm_for(root, patch_size=(24, 24, 24), spacing=2.0, cache=False)  # 40*0.44/2 ~ 9 voxels
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape[2:] == (24, 24, 24)
    for b in dm.test_dataloader():  # evaluated at their own size: a padded voxel would count as covered
        assert all(s < 24 for s in b["image"].shape[2:]) and b["label"].shape == b["image"].shape


def test_reoriented_to_ras(root):
    dm = dm_for(root, spacing=SPACING, cache=False)
    case = {"case_id": "1003", "group": "ct", "image": str(image_of("1003", root)), "label": str(label_of("1003", root))}
    out = dm.eval_transforms()(case)
    aff = np.asarray(out["image"].affine)
    assert np.all(np.diag(aff)[:3] > 0)
    raw = np.asarray(nib.load(label_of("1003", root)).dataobj)
    # flipped along x in the file; RAS output must undo the flip (pad may shift, so compare a structure)
    mapped = np.zeros_like(raw)
    for k, v in enumerate(MMWHS_VALUES, start=1):
        mapped[raw == v] = k
    np.testing.assert_array_equal(out["label"][0].numpy()[: SHAPE[0], : SHAPE[1], : SHAPE[2]], mapped[::-1])


@pytest.mark.parametrize("cid", ["1003", "1001"])
def test_inversion_returns_to_the_original_grid(root, cid):
    dm = dm_for(root)  # 1.5 mm resampling + padding (+ flip for 1003)
    case = {"case_id": cid, "group": "ct", "image": str(image_of(cid, root)), "label": str(label_of(cid, root))}
    from monai.data import DataLoader, Dataset

    batch = next(iter(DataLoader(Dataset([case], dm.eval_transforms()), batch_size=1)))
    assert batch["image"].shape[2:] != SHAPE
    inv = dm.invert_to_original({"label": batch["label"].float()}, batch, nearest=["label"])[0]["label"]
    ref = nib.load(label_of(cid, root))
    assert tuple(inv.shape) == (1, *SHAPE)
    np.testing.assert_allclose(np.asarray(inv.affine), ref.affine, atol=1e-4)
    # at native spacing the round trip is exact
    dm = dm_for(root, spacing=SPACING)
    batch = next(iter(DataLoader(Dataset([case], dm.eval_transforms()), batch_size=1)))
    inv = dm.invert_to_original({"label": batch["label"].float()}, batch, nearest=["label"])[0]["label"]
    raw = np.asarray(ref.dataobj)
    mapped = np.zeros_like(raw)
    for k, v in enumerate(MMWHS_VALUES, start=1):
        mapped[raw == v] = k
    np.testing.assert_array_equal(inv[0].numpy().round().astype(int), mapped)


def test_paper_crop_gives_patch_sized_volumes(root):
    dm = dm_for(root, paper_crop=True, patch_size=(20, 20, 20), cache=False)
    for b in dm.test_dataloader():
        assert tuple(b["image"].shape) == (1, 1, 20, 20, 20)
        assert set(b["label"].unique().tolist()) <= set(range(8)) and b["label"].max() > 0
    inv = dm.invert_to_original({"label": b["label"].float()}, b, nearest=["label"])[0]["label"]
    assert tuple(inv.shape) == (1, *SHAPE)


# --------------------------------------------------------------------------------- cache
def _run_all(dm):
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for _ in loader:
            pass


def test_cache_reused_and_invalidated(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    dm = dm_for(root, cache_dir=str(cache))
    _run_all(dm)
    folder = dm.cache_root()
    assert folder.parent == cache and len(list((folder / "eval").glob("*.pt"))) == 3
    assert len(list((folder / "train").glob("*.pt"))) == 3
    assert json.loads((folder / "preprocessing.json").read_text())["spacing"] == [1.5, 1.5, 1.5]

    calls = []
    orig = checks_mod.LoadImageNamedd.__call__
    monkeypatch.setattr(checks_mod.LoadImageNamedd, "__call__", lambda self, d: calls.append(1) or orig(self, d))
    _run_all(dm_for(root, cache_dir=str(cache)))
    assert calls == []  # everything came from the cache

    dm3 = dm_for(root, cache_dir=str(cache), spacing=2.0)  # preprocessing change -> new folder
    assert dm3.cache_root() != folder
    _run_all(dm3)
    assert len(calls) == 6

    calls.clear()
    p = image_of("1001", root)  # a file changed on disk -> its cache entry is not used
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    _run_all(dm_for(root, cache_dir=str(cache)))
    assert len(calls) == 1


def test_default_cache_location_is_under_root(root):
    dm = dm_for(root)
    assert dm.cache_root().parent == root / ".uaseg_cache"


# --------------------------------------------------------------------------------- config
def test_yaml_instantiates_and_meta_matches(root):
    cfg = OmegaConf.load(CONF)
    with pytest.raises(Exception, match="root"):
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    cfg.root = str(root)
    wrapper = OmegaConf.create({"seed": 3, "dataset": cfg})
    d = OmegaConf.to_container(wrapper.dataset, resolve=True)
    meta = d.pop("meta")
    dm = instantiate(d, _convert_="all")
    assert isinstance(dm, MMWHSDataModule)
    assert meta["num_classes"] == dm.num_classes and tuple(meta["class_names"]) == dm.class_names
    assert meta["spatial_dims"] == dm.spatial_dims and meta["in_channels"] == dm.in_channels
    # the split has its own seed: the training seed (3 here) must not change the cases of a fold
    assert dm.sw_overlap == 0.5 and dm.patch_size == (64, 64, 64) and dm.seed == 42 and not dm.paper_crop
    with pytest.raises(TypeError, match="augment"):
        dm_for(root, augment={"flip_probability": 0.1})


def test_check_dataset_script(root, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_dataset", Path(__file__).resolve().parents[2] / "scripts" / "check_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--dataset", "mmwhs", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1010" in out and "0.44" in out and "421" in out
    save_nifti(mmwhs_label(extra_value=3), affine_for(), label_of("1005", root))
    assert mod.main(["--dataset", "mmwhs", "--root", str(root)]) != 0
    assert "ct_train_1005_label.nii.gz" in capsys.readouterr().out


@pytest.mark.slow
def test_train_py_end_to_end(root, tmp_path):
    from datafiles import run_train

    proc = run_train("mmwhs", root, tmp_path, "[16,16,16]", "eval.export=true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "mmwhs" and summary["n_cases"] == 2
    # test predictions exported on each case's original grid (the cache does not break inversion)
    for case in summary["cases"]:
        ref = nib.load(image_of(case["case_id"], root))
        for kind in ("seg", "uncertainty"):
            out = nib.load(tmp_path / "run" / "predictions" / f"{case['case_id']}_{kind}.nii.gz")
            assert out.shape == ref.shape
            np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
    assert {c["case_id"] for c in summary["cases"]} <= {"1001", "1002", "1003", "1004", "1005", "1010"}
