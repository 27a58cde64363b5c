"""Checkpoints and run folders made before the regroup (#31) name modules by their old paths; they
still load, and the names they may use are only those that moved (uaseg.config.moved)."""

from __future__ import annotations

import pytest

from uaseg.config.moved import MOVED, current_target, current_targets
from uaseg.config.resolvers import dataset_plan
from uaseg.errors import ConfigError
from uaseg.runs.trust import check_targets, is_allowed

OLD_DATASETS = ["uaseg.data.demo2d.Demo2DDataModule", "uaseg.data.demo3d.Demo3DDataModule",
                "uaseg.data.demo3d_abdomen.Demo3DAbdomenDataModule", "uaseg.data.glas.GlaSDataModule",
                "uaseg.data.mmwhs.MMWHSDataModule", "uaseg.data.nnunet.NnUNetDataModule",
                "uaseg.data.decathlon.DecathlonDataModule"]
OLD_RUN_CLASSES = ["uaseg.hydra_callbacks.RunFolderGuard", "uaseg.checkpoint_io.AtomicCheckpointIO",
                   "uaseg.loggers.CSVLogger"]


@pytest.mark.parametrize("old", OLD_DATASETS + OLD_RUN_CLASSES)
def test_an_old_name_maps_to_the_class_it_named(old):
    from hydra.utils import get_class

    new = current_target(old)
    assert new != old and new.rsplit(".", 1)[-1] == old.rsplit(".", 1)[-1]
    assert get_class(new).__name__ == old.rsplit(".", 1)[-1]
    assert is_allowed(old)


def test_only_moved_modules_are_renamed():
    assert current_target("uaseg.losses.uncertainty_aware_loss") == "uaseg.losses.uncertainty_aware_loss"
    assert current_target("uaseg.data.demo2dx.Demo2DDataModule") == "uaseg.data.demo2dx.Demo2DDataModule"
    assert current_target(3) == 3
    assert set(MOVED) >= {o.rsplit(".", 1)[0] for o in OLD_DATASETS + OLD_RUN_CLASSES}


def test_a_stored_tree_gets_every_target_renamed_and_nothing_else():
    tree = {"dataset": {"_target_": OLD_DATASETS[0], "root": "uaseg.data.demo2d.Demo2DDataModule"},
            "callbacks": [{"_target_": OLD_RUN_CLASSES[0]}]}
    new = current_targets(tree)
    assert new["dataset"]["_target_"] == current_target(OLD_DATASETS[0])
    assert new["dataset"]["root"] == tree["dataset"]["root"]  # only _target_ values
    assert new["callbacks"][0]["_target_"] == current_target(OLD_RUN_CLASSES[0])
    check_targets(tree, "old/.hydra/config.yaml")  # a run folder made before the move passes the trust check


def test_a_checkpoint_dataset_config_with_an_old_name_builds(tmp_path):
    from uaseg.data import build_datamodule

    dm = build_datamodule({"_target_": "uaseg.data.demo2d.Demo2DDataModule", "meta": {}, "num_cases": 6,
                           "image_size": 32, "patch_size": [16, 16], "cache_dir": str(tmp_path), "num_folds": 3})
    assert type(dm).__module__ == "uaseg.data.datasets.demo2d"


@pytest.mark.parametrize("target", ["this.Zen", "shutil.copyfile", "uaseg.train.Path", "uaseg.data.no_such.Thing"])
def test_the_plan_resolver_imports_only_uaseg_datamodules(target):
    import sys

    assert "this" not in sys.modules  # importing it prints the Zen of Python: a visible side effect
    with pytest.raises(ConfigError, match="uaseg.dataset_plan"):
        dataset_plan(target, "/nonexistent", None, None, "RAS", None, None)
    assert "this" not in sys.modules, "the resolver imported a module the stored config named"
