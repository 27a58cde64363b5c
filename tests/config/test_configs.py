"""Every config group option composes and instantiates; bad overrides give Hydra's message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from uaseg.train import build_datamodule, build_module

ROOT = Path(__file__).resolve().parents[2]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("dataset", ["demo2d", "demo3d"])
@pytest.mark.parametrize("model", _options("model"))
def test_models_adapt_to_the_dataset(make_cfg, dataset, model):
    if model == "unet2d_ronneberger" and dataset == "demo3d":
        pytest.skip("a 2D-only architecture")
    cfg = make_cfg(dataset, f"model={model}")
    module = build_module(cfg)
    assert module.net.spatial_dims == cfg.dataset.meta.spatial_dims
    assert module.num_classes == cfg.dataset.meta.num_classes


@pytest.mark.parametrize("loss", _options("loss"))
@pytest.mark.parametrize("seg_loss", _options("loss/seg_loss"))
def test_loss_options_instantiate(make_cfg, loss, seg_loss):
    dataset = "demo3d" if seg_loss == "ce_mmwhs" else "demo2d"  # 8 MM-WHS class weights
    cfg = make_cfg(dataset, f"loss={loss}", f"loss/seg_loss={seg_loss}")
    module = build_module(cfg)
    assert module.loss.lambda_ == cfg.loss["lambda"]


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks"])
def test_runtime_groups_instantiate(make_cfg, group):
    for option in _options(group):
        if option == "gpu":
            continue  # needs a GPU to instantiate
        cfg = make_cfg("demo2d", f"{group}={option}")
        if group == "trainer":
            kwargs = {"accelerator": "cpu"} if option != "ddp" else {"accelerator": "cpu", "devices": 2}
            instantiate(cfg.trainer, **kwargs, logger=False, enable_progress_bar=False)
        else:
            objs = [instantiate(c) for c in (cfg[group] or {}).values() if c is not None]
            assert all(o is not None for o in objs)


def test_datamodules_build_from_config(make_cfg):
    for dataset in ("demo2d", "demo3d"):
        dm = build_datamodule(make_cfg(dataset).dataset)
        assert dm.num_classes == make_cfg(dataset).dataset.meta.num_classes


def test_unknown_key_gives_hydras_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "loss.lamda=2", f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode != 0
    assert "Could not override 'loss.lamda'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_append_override_reaches_the_trainer(make_cfg):
    cfg = make_cfg("demo2d", "+trainer.gradient_clip_val=1.0")
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer.gradient_clip_val == 1.0


@pytest.mark.parametrize("overrides,message,folder", [
    (["dataset=mmwhs"], "dataset.root=...", False),  # refused with the config values: no run folder
    (["dataset=glas", "dataset.root=/does/not/exist"], "dataset.root=/does/not/exist: no such folder", False),
    (["dataset=decathlon", "dataset.root=/does/not/exist"], "the expected layout", False),  # raised in a resolver
])
def test_user_errors_are_one_clear_line(tmp_path, overrides, message, folder):
    proc = subprocess.run(
        [sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 1
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (tmp_path / "run" / "failed.json").exists() == folder and (tmp_path / "run").exists() == folder
