"""Your own data end to end: each layout trains 2 steps, tests, names its classes in summary.json,
exports on the original grid; predict.py works from the checkpoint alone (the dataset folder moved
away) on an ``imagesTs/`` case; ``uaseg report`` works on a multirun over such a dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from layoutfiles import make_aniso_ct, make_decathlon, make_nnunet_2d, make_nnunet_3d, make_zero_background_mr
from PIL import Image

from uaseg.errors import PredictError
from uaseg.inference import load_model, predict_files
from uaseg.train import build_datamodule, train

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = {
    "nnunet-3d-ct": ("nnunet", lambda p: make_nnunet_3d(p / "Dataset001_CT"), ["liver", "tumour"]),
    "nnunet-3d-two-channels": ("nnunet", lambda p: make_nnunet_3d(p / "Dataset002_Two", channels=("T1", "T2")),
                               ["liver", "tumour"]),
    "nnunet-3d-sparse-shifted": ("nnunet", lambda p: make_nnunet_3d(p / "Dataset007_Sparse", sparse=True), ["liver", "tumour"]),
    "nnunet-2d-png": ("nnunet", lambda p: make_nnunet_2d(p / "Dataset003_Png"), ["gland", "lumen"]),
    "nnunet-2d-rgb": ("nnunet", lambda p: make_nnunet_2d(p / "Dataset004_Rgb", channels="rgb"), ["gland", "lumen"]),
    "nnunet-2d-ignore": ("nnunet", lambda p: make_nnunet_2d(p / "Dataset005_Sparse", ignore=True), ["gland", "lumen"]),
    # nnU-Net's planning: separate-z resampling (anisotropic CT), non-zero crop and masked z-score (MR)
    "nnunet-3d-anisotropic-ct": ("nnunet", lambda p: make_aniso_ct(p / "Dataset010_Aniso"), ["organ", "lesion"]),
    "nnunet-3d-zero-background-mr": ("nnunet", lambda p: make_zero_background_mr(p / "Dataset011_Brain"),
                                     ["tumour", "core"]),
    "decathlon-4d": ("decathlon", lambda p: make_decathlon(p / "Task01_BrainTumour"), ["edema", "enhancing tumour"]),
}


def _grid(path: Path) -> tuple:
    if path.suffix == ".png":
        with Image.open(path) as im:
            return im.size
    img = nib.load(path)
    return img.shape[:3], np.round(img.affine, 5).tolist()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_test_and_predict_from_the_checkpoint_alone(tmp_path, make_cfg, layout):
    dataset, make, classes = LAYOUTS[layout]
    root = make(tmp_path)
    figures = layout in ("nnunet-2d-png", "nnunet-2d-ignore")  # the same code for every dataset: drawn twice, for time
    # with an ignore label, a second one-pass score also stores its validation curve on annotated voxels only
    scores = ["eval.scores=[max_softmax,margin]"] if layout == "nnunet-2d-ignore" else []
    cfg = make_cfg(dataset, f"dataset.root={root}", "dataset.num_workers=0", "eval.export=true", f"eval.figures={figures}",
                   *scores)
    train(cfg)
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["class_names"] == classes  # from dataset.json
    assert all(len(p["class_dice"]) == len(classes) for c in summary["cases"] for p in c["at_coverage"].values())
    assert (run / "curves.csv").exists() and (run / "metrics.json").exists() and (run / "figures").exists() == figures
    for case in summary["cases"]:  # exported on the case's own file grid
        seg = next((run / "predictions").glob(f"{case['case_id']}_seg.*"))
        source = next((root / "imagesTr").glob(f"{case['case_id']}*"))
        assert _grid(seg) == _grid(source)

    # prediction from the checkpoint alone: dataset.root (and its fingerprint.json) are gone
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    trained_plan = build_datamodule(cfg.dataset).plan
    patch = trained_plan["patch_size"]
    if layout == "nnunet-3d-sparse-shifted":  # test cases' annotated voxels on the evaluated (resampled) grid
        dm = build_datamodule(cfg.dataset)
        dm.setup()
        annotated_3d = {c["case_id"]: int((dm.eval_transforms()(dict(c))["label"] != 3).sum()) for c in dm.splits["test"]}
    if layout == "nnunet-2d-ignore":  # risk control and temperature calibrate on annotated voxels only
        from uaseg.stages.temperature import fit_temperature_on_validation
        from uaseg.stages.validation import validation_stats

        dm, module = build_datamodule(cfg.dataset), load_model(ckpt).module
        stats = validation_stats(module, dm)
        assert stats and all(s.n < np.prod(patch) for s in stats)
        annotated = 0
        for s in stats:
            with Image.open(root / "labelsTr" / f"{s.case_id}.png") as im:
                lab = np.asarray(im)
            assert s.n == lab.size - int((lab == 3).sum())  # the case's own annotated pixels: no padding counted
            annotated += s.n
        assert fit_temperature_on_validation(module, dm, max_voxels=10**6)[1] == annotated
    moved = root.rename(tmp_path / "moved")
    assert load_model(ckpt).datamodule.plan == trained_plan
    (rec,) = predict_files(ckpt, moved / "imagesTs", tmp_path / "pred", coverage=0.9)
    source = Path(rec["input"])
    name = source.name.split(".")[0].removesuffix("_0000")
    assert rec["outputs"]["seg"].endswith(f"{name}_seg{'.png' if source.suffix == '.png' else '.nii.gz'}")
    for key in ("seg", "uncertainty", "refer"):
        assert _grid(Path(rec["outputs"][key])) == _grid(source)
    if layout == "nnunet-3d-sparse-shifted":  # ignore label on a resampled grid; case 1's label off its origin
        assert np.asarray(nib.load(rec["outputs"]["seg"]).dataobj).max() < 3
        assert {c["case_id"]: c["n_voxels"] for c in summary["cases"]} == annotated_3d
    if layout == "nnunet-2d-rgb":  # one RGB file is the case's three channels
        assert "channel_files" not in rec and source.name == "img_005_0000.png"
    if layout == "nnunet-2d-ignore":  # unannotated voxels were left out of every test number
        for case in summary["cases"]:
            with Image.open(moved / "labelsTr" / f"{case['case_id']}.png") as im:
                lab = np.asarray(im)
            assert case["n_voxels"] == lab.size - int((lab == 3).sum()) < lab.size  # no padding counted either
        from uaseg.models.module import VAL_CURVES_KEY

        assert "margin" in torch.load(ckpt, map_location="cpu", weights_only=True)[VAL_CURVES_KEY]
        with Image.open(rec["outputs"]["seg"]) as im:  # the network has no output for "ignore"
            assert np.asarray(im).max() < 3 and sorted(rec["voxel_counts"]) == ["background", "gland", "lumen"]
    if layout == "nnunet-3d-two-channels":  # a case's channels are its files beside each other
        assert [Path(f).name for f in rec["channel_files"]] == ["case_005_0000.nii.gz", "case_005_0001.nii.gz"]
        lone = tmp_path / "lone"
        lone.mkdir()
        (lone / "case_005_0000.nii.gz").write_bytes((moved / "imagesTs" / "case_005_0000.nii.gz").read_bytes())
        with pytest.raises(PredictError, match=r"case case_005: channel 1 \(T2\) file .*case_005_0001.nii.gz is missing"):
            predict_files(ckpt, lone, tmp_path / "pred2", coverage=0.9)


@pytest.mark.slow
def test_multirun_over_an_nnunet_dataset_and_its_report(tmp_path):
    root = make_nnunet_2d(tmp_path / "Dataset003_Png", n_test=0)
    sweep = tmp_path / "multirun"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "dataset=nnunet", f"dataset.root={root}", "loss.lambda=0,2",
           "model=unet_small", "dataset.batch_size=2", "dataset.samples_per_image=1", "dataset.num_workers=0",
           "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
           "trainer.accelerator=cpu", "eval.bootstrap=20", "eval.figures=false", "callbacks.progress_bar=null",
           f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2
    for s in summaries:
        summary = json.loads(s.read_text())
        assert summary["dataset"] == "nnunet" and summary["class_names"] == ["gland", "lumen"]
        log = "".join(f.read_text() for f in s.parent.glob("*.log"))
        assert "dataset fingerprint" in log  # each job logs its plan
    from uaseg.cli import main as cli

    assert cli(["report", str(sweep), "--no-figures"]) == 0
    report = (sweep / "report.md").read_text()
    assert "nnunet" in report and "λ" in report
