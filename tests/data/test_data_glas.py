"""dataset=glas over tiny files in the released format (24-bit BMP, 8-bit instance annotations, CR-only Grade.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import GRADE_HEADER, glas_pair, make_glas
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from uaseg.data.checks import DatasetError
from uaseg.data.datasets.glas import GlaSDataModule, find_glas_cases, read_grade_csv

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset" / "glas.yaml"
PATCH = (32, 32)


@pytest.fixture
def root(tmp_path) -> Path:
    return make_glas(tmp_path / "Warwick_QU_Dataset")


def dm_for(root: Path, **kw) -> GlaSDataModule:
    args = dict(root=str(root), patch_size=PATCH, batch_size=2, num_workers=0, samples_per_image=2)
    args.update(kw)
    return GlaSDataModule(**args)


def _run_all(dm):
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for _ in loader:
            pass


def test_batches_through_the_dataloaders(root):
    dm = dm_for(root)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert {"image", "label", "case_id", "group", "instances"} <= set(b)
    assert b["image"].shape == (2, 3, *PATCH) and b["image"].dtype == torch.float32  # batch_size patches
    assert b["label"].shape == (2, 1, *PATCH) and b["label"].dtype == torch.int64
    assert set(b["label"].unique().tolist()) <= {0, 1}
    assert 0.0 <= float(b["image"].min()) and float(b["image"].max()) <= 1.0
    groups = []
    for b in dm.test_dataloader():
        assert b["image"].shape[:2] == (1, 3) and b["label"].shape[2:] == b["image"].shape[2:]
        assert set(b["label"].unique().tolist()) <= {0, 1}
        # instance ids kept, binary label == instances > 0
        assert torch.equal(b["label"], (b["instances"] > 0).long()) and b["instances"].max() >= 2
        groups += b["group"]
    assert groups == ["testA"] * 3 + ["testB"] * 2
    for b in dm.val_dataloader():
        assert b["group"] == ["train"]
    assert dm.num_classes == 2 and dm.in_channels == 3 and dm.spatial_dims == 2 and dm.sw_overlap == 0.5


def test_whole_test_image_matches_the_files(root):
    dm = dm_for(root, patch_size=(8, 8))  # smaller than every image: no padding
    b = next(iter(dm.test_dataloader()))
    assert b["case_id"] == ["testA_1"]
    img = np.asarray(Image.open(root / "testA_1.bmp"))
    inst = np.asarray(Image.open(root / "testA_1_anno.bmp"))
    # MONAI's PIL reader gives (C, width, height)
    np.testing.assert_allclose(b["image"][0].numpy(), img.transpose(2, 1, 0) / 255.0, atol=1e-6)
    np.testing.assert_array_equal(b["instances"][0, 0].numpy(), inst.T)


def test_natural_sort_and_grade_metadata(root):
    cases = find_glas_cases(root)
    train = [c["case_id"] for c in cases if c["group"] == "train"]
    assert train == ["train_1", "train_2", "train_3", "train_5", "train_10"]
    by = {c["case_id"]: c for c in cases}
    assert by["testA_1"]["grade"] == "benign" and by["testA_2"]["grade"] == "malignant"
    assert by["train_10"]["patient"] == "5"


def test_grade_csv_parsing_cr_and_spaces(tmp_path):
    p = tmp_path / "Grade.csv"
    p.write_bytes(f"{GRADE_HEADER}\r testA_1, 1, malignant, adenomatous\r train_10,  7 , benign, healthy\r\r".encode())
    g = read_grade_csv(p)
    assert g == {
        "testA_1": {"patient": "1", "grade": "malignant", "grade_sirinukunwattana": "adenomatous"},
        "train_10": {"patient": "7", "grade": "benign", "grade_sirinukunwattana": "healthy"},
    }
    p.write_bytes(f"{GRADE_HEADER}\r\n testA_1, 1, malignant, adenomatous\r\n".encode())  # CRLF too
    assert read_grade_csv(p)["testA_1"]["grade"] == "malignant"


def test_listed_image_missing_is_an_error(root):
    (root / "testB_2.bmp").unlink()
    (root / "testB_2_anno.bmp").unlink()
    with pytest.raises(DatasetError, match="testB_2.bmp"):
        dm_for(root).setup()


def test_without_grade_csv_still_loads(tmp_path):
    root = make_glas(tmp_path / "g", grade_csv=False)
    dm = dm_for(root)
    dm.setup()
    assert all(c["grade"] == "" for s in dm.splits.values() for c in s)


def test_validation_by_patient_and_test_is_parts_a_b(root):
    dm = dm_for(root)
    dm.setup()
    s = {k: [c["case_id"] for c in v] for k, v in dm.splits.items()}
    assert sorted(s["test"]) == ["testA_1", "testA_2", "testA_3", "testB_1", "testB_2"]
    assert set(s["train"]) | set(s["val"]) == {"train_1", "train_2", "train_3", "train_5", "train_10"}
    pt = {c["patient"] for c in dm.splits["train"]}
    pv = {c["patient"] for c in dm.splits["val"]}
    assert s["val"] and not (pt & pv)
    assert not (root / "splits_final.json").exists()  # nothing to persist without cv_on_train


def test_cv_on_train_folds_persisted(root):
    dm = dm_for(root, cv_on_train=True, num_folds=5, fold=2)
    dm.setup()
    folds = json.loads((root / "splits_final.json").read_text())
    assert dm.splits["test"] and [c["case_id"] for c in dm.splits["test"]] == folds[2]["test"]
    assert all(c["group"] == "train" for c in dm.splits["test"])
    seen = {c["case_id"] for s in dm.splits.values() for c in s}
    assert seen == {"train_1", "train_2", "train_3", "train_5", "train_10"}
    dm2 = dm_for(root, cv_on_train=True, num_folds=5, fold=2, seed=123)
    dm2.setup()
    assert [c["case_id"] for c in dm2.splits["test"]] == folds[2]["test"]


def test_small_image_padded_for_training_only(root):
    dm = dm_for(root, patch_size=(48, 48))  # train_3 is 20x14, others ~60x44
    dm.setup()
    small = [c for s in ("train", "val") for c in dm.splits[s] if c["case_id"] == "train_3"]
    out = dm.eval_transforms()(dict(small[0]))  # evaluated at its own size: padding would count as covered
    assert tuple(out["image"].shape) == (3, 20, 14) and tuple(out["label"].shape) == (1, 20, 14)
    tr = dm.train_transforms()(dict(small[0]))
    assert all(tuple(p["image"].shape) == (3, 48, 48) for p in tr)
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape[2:] == (48, 48)
    from monai.data import list_data_collate

    batch = list_data_collate([out])
    inv = dm.invert_to_original({"label": batch["label"].float()}, batch, nearest=["label"])[0]["label"]
    assert tuple(inv.shape) == (1, 20, 14)


# --------------------------------------------------------------------------------- errors
def test_missing_root_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as e:
        dm_for(tmp_path / "nope").setup()
    assert "train_1_anno.bmp" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no train_N") as e:
        dm_for(tmp_path / "empty").setup()
    assert "expected layout" in str(e.value)


def test_parent_folder_with_one_dataset_subfolder(root):
    dm = dm_for(root.parent)
    dm.setup()
    assert len(dm.splits["test"]) == 5


def test_missing_annotation_names_the_image(root):
    (root / "train_5_anno.bmp").unlink()
    with pytest.raises(DatasetError, match=r"train_5.bmp: image without its annotation"):
        dm_for(root).setup()
    (root / "train_5.bmp").unlink()
    (root / "testA_1.bmp").unlink()
    with pytest.raises(DatasetError, match=r"testA_1_anno.bmp: annotation without its image"):
        dm_for(root).setup()


def test_mismatched_size_names_both(root):
    _, inst = glas_pair((30, 30))
    Image.fromarray(inst, "L").save(root / "testA_2_anno.bmp")
    with pytest.raises(DatasetError) as e:
        dm_for(root).setup()
    assert "testA_2.bmp" in str(e.value) and "testA_2_anno.bmp" in str(e.value)
    dm = dm_for(root, check_files=False, cache=False)
    with pytest.raises(DatasetError) as e:
        _run_all(dm)
    assert "testA_2.bmp" in str(e.value) and "testA_2_anno.bmp" in str(e.value)


def test_corrupt_image_names_it(root):
    (root / "train_2.bmp").write_bytes(b"BM" + b"\x00" * 40)
    with pytest.raises(DatasetError, match="train_2.bmp"):
        dm_for(root).setup()
    dm = dm_for(root, check_files=False, cache=False)
    with pytest.raises(DatasetError, match="train_2.bmp"):
        _run_all(dm)


def test_rgb_annotation_is_refused(root):
    img, _ = glas_pair((60, 44))
    Image.fromarray(img, "RGB").save(root / "testB_1_anno.bmp")
    with pytest.raises(DatasetError, match="testB_1_anno.bmp"):
        dm_for(root).setup()


# --------------------------------------------------------------------------------- cache/config
def test_cache_reused_and_invalidated(root, tmp_path, monkeypatch):
    from uaseg.data import checks as checks_mod

    dm = dm_for(root, cache_dir=str(tmp_path / "c"))
    _run_all(dm)
    assert len(list((dm.cache_root() / "eval").glob("*.pt"))) == 6  # 1 val + 5 test
    calls = []
    orig = checks_mod.LoadImageNamedd.__call__
    monkeypatch.setattr(checks_mod.LoadImageNamedd, "__call__", lambda self, d: calls.append(1) or orig(self, d))
    _run_all(dm_for(root, cache_dir=str(tmp_path / "c")))
    assert calls == []
    dm3 = dm_for(root, cache_dir=str(tmp_path / "c"), patch_size=(40, 40))
    assert dm3.cache_root() != dm.cache_root()
    _run_all(dm3)
    assert calls


def test_yaml_instantiates_and_meta_matches(root):
    cfg = OmegaConf.load(CONF)
    cfg.root = str(root)
    d = OmegaConf.to_container(OmegaConf.create({"seed": 0, "dataset": cfg}).dataset, resolve=True)
    meta = d.pop("meta")
    dm = instantiate(d, _convert_="all")
    assert isinstance(dm, GlaSDataModule) and dm.patch_size == (192, 192) and not dm.cv_on_train
    assert meta == {"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "class_names": ["gland"]}
    dm.setup()  # images smaller than 192 are evaluated at their own size (the sliding window pads inside)
    b = next(iter(dm.test_dataloader()))
    assert b["image"].shape[2:] == b["label"].shape[2:] and max(b["image"].shape[2:]) < 192


def test_check_dataset_script(root, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_dataset", Path(__file__).resolve().parents[2] / "scripts" / "check_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--dataset", "glas", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train_10" in out and "testB" in out and "malignant" in out
    assert mod.main(["--dataset", "glas", "--root", str(root / "missing")]) == 2


@pytest.mark.slow
def test_train_py_end_to_end(root, tmp_path):
    from datafiles import run_train

    proc = run_train("glas", root, tmp_path, "[32,32]", "eval.export=true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "glas" and summary["n_cases"] == 3
    from PIL import Image

    for case in summary["cases"]:  # exported in each image's own pixel layout
        with Image.open(root / f"{case['case_id']}.bmp") as im:
            size = im.size
        with Image.open(tmp_path / "run" / "predictions" / f"{case['case_id']}_seg.png") as seg:
            assert seg.size == size
    assert {c["group"] for c in summary["cases"]} == {"testA"}  # first 3 test images (limit_test_batches=3)
