"""The built-in datasets: deterministic, correctly labelled, split by case, patch-padded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uaseg.data.datasets.demo2d import Demo2DDataModule
from uaseg.data.datasets.demo3d import Demo3DDataModule
from uaseg.data.datasets.synth import gland_image, heart_volume


def test_gland_generator_is_deterministic_and_binary():
    a_img, a_lab = gland_image(3, 7, 64)
    b_img, b_lab = gland_image(3, 7, 64)
    c_img, _ = gland_image(3, 8, 64)
    assert a_img.shape == (3, 64, 64) and a_img.dtype == np.float32
    assert a_lab.shape == (64, 64)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert set(np.unique(a_lab)) <= {0, 1} and 0 < a_lab.mean() < 1
    assert 0 <= a_img.min() and a_img.max() <= 1


def test_heart_generator_has_all_structures_in_mmwhs_order():
    img, lab = heart_volume(0, 0, 48)
    assert img.dtype == np.int16 and img.shape == lab.shape == (48, 48, 48)
    assert set(np.unique(lab)) == set(range(8))
    # cavities are bright (contrast CT), myocardium darker, lungs air-like
    assert img[lab == 1].mean() > img[lab == 5].mean() + 100
    assert img.min() < -500
    np.testing.assert_array_equal(lab, heart_volume(0, 0, 48)[1])


@pytest.mark.parametrize("cls,size,patch", [(Demo2DDataModule, 48, (32, 32)), (Demo3DDataModule, 24, (16, 16, 16))])
def test_splits_are_disjoint_and_persisted(tmp_path, cls, size, patch):
    dm = cls(num_cases=10, image_size=size, patch_size=patch, cache_dir=tmp_path, batch_size=2)
    dm.setup()
    ids = {k: {c["case_id"] for c in v} for k, v in dm.splits.items()}
    assert ids["train"] and ids["val"] and ids["test"]
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert len(ids["train"] | ids["val"] | ids["test"]) == 10
    assert (dm.case_dir / "splits_final.json").exists()
    other = cls(num_cases=10, image_size=size, patch_size=patch, cache_dir=tmp_path, fold=1)
    other.setup()
    test1 = {c["case_id"] for c in other.splits["test"]}
    assert not (test1 & ids["test"])  # folds partition the cases


def test_batches_have_the_documented_format(tmp_path):
    dm = Demo2DDataModule(num_cases=10, image_size=48, patch_size=(32, 32), cache_dir=tmp_path, batch_size=2,
                          samples_per_image=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32  # 2 patches a step
    assert batch["label"].shape == (2, 1, 32, 32) and batch["label"].dtype == torch.long
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, 48, 48)
    assert isinstance(val["case_id"][0], str) and val["group"] == ["test"]


def test_patch_larger_than_image_is_padded(tmp_path):
    dm = Demo3DDataModule(num_cases=10, image_size=16, patch_size=(24, 24, 24), cache_dir=tmp_path, batch_size=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (1, 1, 24, 24, 24)
    assert torch.isfinite(batch["image"]).all()


def test_bad_options_are_reported(tmp_path):
    with pytest.raises(ValueError, match="patch_size"):
        Demo2DDataModule(patch_size=(32, 32, 32), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="fold"):
        Demo2DDataModule(fold=5, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="unknown dataset options"):
        Demo2DDataModule(cache_dir=tmp_path, bogus=1)


# ------------------------------------------------------------------ uaseg export-demo
def test_export_demo_writes_the_test_split_as_files_predict_reads(tmp_path):
    """The exported PNGs hold the test tiles as MONAI reads them back (PIL layout is transposed) and
    the labels survive as palette PNGs; demo3d volumes as NIfTI in HU."""
    import nibabel as nib
    from PIL import Image

    from uaseg.cli import main
    from uaseg.data.datasets.export_demo import demo_datamodule
    from uaseg.errors import ConfigError
    from uaseg.inference.files import list_inputs

    cache = tmp_path / "cache"
    assert main(["export-demo", str(tmp_path / "d2"), "num_cases=10", "dataset.image_size=32",
                 "--cache-dir", str(cache)]) == 0
    dm = demo_datamodule("demo2d", ["num_cases=10", "image_size=32"], cache)
    dm.setup()
    test = dm.splits["test"]
    files, kind = list_inputs(tmp_path / "d2")  # labels/ is not taken as input
    assert kind == "image" and [f.stem for f in files] == [c["case_id"] for c in test]
    for case, f in zip(test, files):
        png = np.asarray(Image.open(f))  # (height, width, 3) = the array (3, x, y) transposed
        assert png.dtype == np.uint8
        assert np.abs(png.transpose(2, 1, 0) / 255.0 - np.asarray(case["image"])).max() <= 0.5 / 255 + 1e-6
        with Image.open(tmp_path / "d2" / "labels" / f.name) as lab:
            assert lab.mode == "P" and np.array_equal(np.asarray(lab).T, np.asarray(case["label"])[0])

    assert main(["export-demo", str(tmp_path / "d3"), "num_cases=10", "image_size=32", "--dataset", "demo3d",
                 "--split", "val", "--cache-dir", str(cache)]) == 0
    vols = sorted((tmp_path / "d3").glob("*.nii.gz"))
    assert vols and nib.load(vols[0]).get_data_dtype() == np.int16
    with pytest.raises(ConfigError, match="unknown dataset key"):
        demo_datamodule("demo2d", ["num_casez=3"], cache)
    assert main(["export-demo", str(tmp_path / "x"), "--dataset", "glas"]) == 2


def test_export_demo_refuses_a_folder_of_other_files_and_one_it_cannot_write(tmp_path, capsys):
    """The same export again is fine; other cases (another num_cases) or other files in the folder are
    refused before anything is written, unless --force; a file in the way is one line, not a traceback."""
    from uaseg.cli import main

    def export(folder, *extra):
        code = main(["export-demo", str(folder), "num_cases=10", "image_size=32", *extra, "--cache-dir", str(tmp_path / "c")])
        return code, capsys.readouterr().err

    out = tmp_path / "d2"
    assert export(out) == (0, "")
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert export(out) == (0, "")  # the quick start run twice
    code, err = export(out, "data_seed=1")
    assert code == 2 and err == (f"uaseg export-demo: error: export-demo: {out} is not empty ({len(files) - 1} files, e.g. "
                                 f"{sorted(p.relative_to(out).as_posix() for p in files)[0]}): it holds an export of demo2d "
                                 "test image_size=32 num_cases=10; choose an empty folder, or pass --force to write these "
                                 "cases into it as well\n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    (out / "mine.txt").write_text("mine")
    code, err = export(out)
    assert code == 2 and "it holds an export of demo2d test image_size=32 num_cases=10 and other files" in err
    assert export(out, "data_seed=1", "--force")[0] == 0 and (out / "mine.txt").read_text() == "mine"

    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    for target, reason in ((blocker, "File exists"), (blocker / "sub", "Not a directory")):
        code, err = export(target)
        assert code == 2 and err == (f"uaseg export-demo: error: export-demo: cannot write the cases into {target} "
                                     f"({reason}); give a folder\n")
    (tmp_path / "d3").mkdir()
    (tmp_path / "d3" / "labels").write_text("in the way")  # labels/ cannot be made: the write error is one line
    code, err = export(tmp_path / "d3", "--force")
    assert code == 2 and err.startswith("uaseg export-demo: error: ") and "labels" in err and err.count("\n") == 1
    assert blocker.read_text() == "mine"
