"""Shared fixtures: compose the real configs with Hydra, shrunk to CPU-seconds.

As in lightning-hydra-template, tests compose ``conf/train.yaml`` with ``hydra.initialize`` and
override the run folder, data size and trainer limits instead of keeping separate test configs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# tests/ mirrors uaseg/ (tests/data/, tests/runs/, ...); a test may reuse another folder's helpers by
# module name (``from test_report import make_summary``) however it is run, alone or in the suite
for _folder in sorted(Path(__file__).parent.iterdir()):
    if _folder.is_dir() and not _folder.name.startswith((".", "_")) and str(_folder) not in sys.path:
        sys.path.append(str(_folder))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")

#: overrides that make any dataset tiny and any run a couple of steps
TINY = {
    "demo2d": ["dataset.num_cases=10", "dataset.image_size=48", "dataset.patch_size=[32,32]"],
    "demo3d": ["dataset.num_cases=10", "dataset.image_size=32", "dataset.patch_size=[24,24,24]"],
    "demo3d_abdomen": ["dataset.num_cases=10", "dataset.image_size=32", "dataset.patch_size=[24,24,16]"],
    "demo3d_mri": ["dataset.image_size=32", "dataset.patch_size=[24,24,24]"],
}
FAST = [
    "model=unet_small",
    "dataset.batch_size=2",
    "dataset.samples_per_image=1",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu",
    "eval.bootstrap=20",
    "callbacks.progress_bar=null",
]


def compose_cfg(overrides: list[str], out: Path, cache: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(cache)
    return cfg


def stage_seconds(run: Path, *timed: str) -> dict[str, float]:
    """A run's ``stage_seconds`` (summary.json), checked: exactly the training and the ``timed`` stages
    and parts (``<stage>/<part>``) that ran, each in non-negative wall seconds, the training's above 0."""
    import json

    seconds = json.loads((run / "summary.json").read_text())["stage_seconds"]
    assert set(seconds) == {"train", *timed}, sorted(seconds)
    assert all(isinstance(v, float) and v >= 0 for v in seconds.values()) and seconds["train"] > 0, seconds
    return seconds


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache of generated demo data for the whole session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    def make(dataset: str = "demo2d", *extra: str) -> DictConfig:
        return compose_cfg([f"dataset={dataset}", *TINY.get(dataset, []), *FAST, *extra], tmp_path / "run", cache_dir)

    return make
