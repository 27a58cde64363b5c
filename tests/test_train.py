"""End-to-end: train + test through the real configs, in-process and as `python train.py`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from uaseg.errors import RunFolderError
from uaseg.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dataset", ["demo2d", "demo3d"])
def test_fast_dev_run(make_cfg, dataset):
    cfg = make_cfg(dataset, "trainer.fast_dev_run=true", "eval.figures=false")
    metrics = train(cfg)
    assert "test/aurc_dice" in metrics
    assert (Path(cfg.paths.output_dir) / "summary.json").exists()


@pytest.mark.parametrize("dataset", ["demo2d", "demo3d"])
@pytest.mark.parametrize("sampling", ["exact", "subsample"])
def test_two_steps_with_the_ranking_term(make_cfg, dataset, sampling):
    cfg = make_cfg(dataset, "loss.lambda=2", f"loss.sampling={sampling}", "loss.n_wrong=50", "loss.n_correct=100",
                   "eval.figures=false")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lambda"] == 2 and summary["sampling"] == sampling
    log = (out / "csv" / "metrics.csv").read_text().splitlines()[0]
    for column in ("train/seg", "train/rank", "train/n_wrong", "train/n_correct"):
        assert column in log


def test_a_run_folder_is_never_reused(make_cfg):
    cfg = make_cfg("demo2d", "trainer.fast_dev_run=true", "eval.figures=false")
    train(cfg)
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(cfg)


@pytest.mark.slow
def test_train_py_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable, "train.py", f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path}/cache",
        "dataset.num_cases=10", "dataset.image_size=48", "dataset.patch_size=[32,32]", "model=unet_small",
        "dataset.batch_size=2", "dataset.samples_per_image=1", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "loss.lambda=2", "seed=1", "callbacks.progress_bar=null",
        "trainer.log_every_n_steps=1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("summary.json", "curves.csv", ".hydra/config.yaml", "checkpoints/last.ckpt", "csv/metrics.csv",
                 "figures/risk_coverage.png", "figures/dice_coverage.png", "figures/learning_curves.png"):
        assert (run / name).exists(), name
    assert "train/grad_ratio" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]  # on by default
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["dice_full"]["mean"] <= 1.0
    for key in ("dataset", "fold", "seed", "lambda", "margin", "sampling", "aurc_dice", "aurc", "eaurc", "augrc",
                "dice_full", "at_coverage", "case_level", "cases"):
        assert key in summary, key
    assert set(summary["at_coverage"]) == {"0.95", "0.90", "0.80", "0.70"}
    for row in summary["at_coverage"].values():
        assert set(row) >= {"achieved_coverage", "threshold", "dice_mean", "dice_std", "dice_p5"}
    case = summary["cases"][0]
    assert {"case_id", "at_coverage"} <= set(case) and {"coverage", "dice", "class_dice"} <= set(case["at_coverage"]["0.90"])
    assert "AURC" in proc.stdout
    out = proc.stdout + proc.stderr
    # every Lightning line once (Hydra's handler only), not also through Lightning's own handler
    assert out.count("`Trainer.fit` stopped") == 1 and out.count("GPU available") == 1, out[-3000:]
    # piped output, no bar: one progress line per epoch, Dice and AURC in percent
    assert re.search(r"epoch 1/1 done in [\d.]+ s, step 2: train/loss [\d.]+, val/dice [\d.]+ %, val/aurc_dice [\d.]+ %", out), out[-3000:]
    # no Lightning metric table with Dice as a fraction next to AURC in %; a closing block instead
    assert "test/dice " not in out and "DataLoader 0" not in out
    assert f"Run folder: {run}" in out and f"predict.py ckpt={run}" in out
    dice = f"{100 * summary['dice_full']['mean']:.2f} %"
    assert f"Dice {dice}: mean test-case Dice" in out and f"AURC {summary['aurc_dice']:.3f} %" in out

    # the checkpoint alone rebuilds the model (no config, no backbone passed), with safe loading
    from uaseg.models import SelectiveSegModule

    best = next((run / "checkpoints").glob("best-*.ckpt"))
    module = SelectiveSegModule.load_from_checkpoint(best, weights_only=True, map_location="cpu")
    u, pred, _ = module.segment(torch.rand(1, 3, 48, 48))
    assert u.shape == pred.shape == (1, 48, 48) and float(u.min()) >= 0
    assert module.loss.lambda_ == 2


def test_same_seed_same_numbers(make_cfg, tmp_path):
    from omegaconf import open_dict

    results = []
    for name in ("a", "b"):
        cfg = make_cfg("demo2d", "seed=7", "eval.figures=false", "loss.sampling=subsample", "loss.n_wrong=20",
                       "loss.n_correct=50")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
        train(cfg)
        results.append(json.loads((tmp_path / name / "summary.json").read_text())["aurc_dice"])
    assert results[0] == results[1]


def test_epoch_log_is_on_without_a_terminal_bar():
    from types import SimpleNamespace

    from uaseg.callbacks import EpochLog

    # under pytest stdout is captured, i.e. not a terminal: the per-epoch line is on even with a bar
    assert EpochLog()._active(SimpleNamespace(progress_bar_callback=object()))
    assert EpochLog()._active(SimpleNamespace(progress_bar_callback=None))
