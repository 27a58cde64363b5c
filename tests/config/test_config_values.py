"""Config values are checked where they enter, by one table (uaseg.config.check): a bad value is one
line naming the key, the value and what is allowed, before any work -- for train.py and predict.py."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from uaseg.config.check import DOMAINS, check_config
from uaseg.errors import ConfigError, PredictError
from uaseg.train import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("override,message", [
    ("loss.lambda=-1", "loss.lambda=-1: expected a number >= 0"),
    ("loss.margin=-0.1", "loss.margin=-0.1: expected a number in [0, 1]"),
    ("loss.lambda=nan", "loss.lambda=nan: expected a number >= 0"),
    ("loss.sampling=bogus", "loss.sampling='bogus': expected one of exact, subsample"),
    ("dataset.batch_size=0", "dataset.batch_size=0: expected an integer >= 1"),
    ("dataset.batch_size=3", "dataset.batch_size=3: expected a multiple of dataset.samples_per_image=2"),
    ("dataset.patch_size=[0,0]", "dataset.patch_size=[0,0]: expected a list, each entry an integer >= 1"),
    ("dataset.patch_size=[32,32,32]", "dataset.patch_size=[32,32,32]: expected 2 entries"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: expected an integer >= 1"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0: expected null (all batches), an integer >= 1"),
    ("dataset.fold=5", "dataset.fold=5: expected an integer in 0..4 (dataset.num_folds=5)"),
    ("dataset.val_fraction=1", "dataset.val_fraction=1: expected a number in (0, 1)"),
    ("eval.coverages=[0.9,1.2]", "eval.coverages=[0.9,1.2]: expected a list, each entry a number in (0, 1]"),
    ("eval.figures=flase", "eval.figures='flase': expected true or false"),
    ("model.optimizer.lr=0", "model.optimizer.lr=0: expected a number > 0"),
    ("seed=-3", "seed=-3: expected null or an integer in [0, 4294967295]"),
])
def test_bad_values_are_refused_before_any_work(make_cfg, override, message):
    cfg = make_cfg("demo2d", "dataset.samples_per_image=2", "dataset.batch_size=2", override)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    out = Path(cfg.paths.output_dir)
    assert not out.exists()  # refused before any work: no run folder (nothing trained, no data read)


@pytest.mark.parametrize("override,message", [
    ("trainer.accelerator=nope", "trainer: You selected an invalid accelerator name: `accelerator='nope'`."),
    ("trainer.precision=bogus", "trainer: Precision 'bogus' is invalid."),
])
def test_a_trainer_argument_lightning_refuses_is_one_config_line(make_cfg, override, message):
    """Values Lightning itself checks reach the user as one ConfigError line, not Hydra's
    InstantiationException traceback."""
    with pytest.raises(ConfigError) as err:
        train(make_cfg("demo2d", override))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_value_computed_from_a_bad_one_names_the_bad_one(make_cfg):
    """loss=one_pass warms up over trainer.max_epochs / 3: with max_epochs=-1 (issue 27) the line names
    max_epochs, not the -0.33 epochs of warm-up it makes."""
    with pytest.raises(ConfigError) as err:
        train(make_cfg("demo2d", "loss=one_pass", "trainer.max_epochs=-1"))
    assert str(err.value).startswith("trainer.max_epochs=-1: expected an integer >= 1") and "\n" not in str(err.value)


def test_more_folds_than_cases_names_the_key(make_cfg):
    with pytest.raises(ConfigError, match=r"dataset.num_folds=12: expected at most 10, the number of cases"):
        train(make_cfg("demo2d", "dataset.num_folds=12"))


def test_every_numeric_key_of_every_config_has_a_domain():
    """The class, not the examples: a numeric value anywhere in the composed configs is either in
    DOMAINS or listed here as not a user setting (architecture shapes, metadata)."""
    exempt = ("dataset.meta.*", "model.net.*", "trainer.devices", "trainer.num_nodes", "loss.seg_loss.ignore_index")
    patterns = list(DOMAINS) + list(exempt)
    unchecked = set()
    for dataset in ("demo2d", "demo3d", "demo3d_abdomen", "demo3d_mri", "mmwhs", "glas"):
        for extra in ([], ["loss/seg_loss=dice_ce", "trainer=ddp"]):
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose("train", overrides=[f"dataset={dataset}", f"dataset.root={CONF}", "paths.output_dir=/o",
                                                  "paths.cache_dir=/c", *extra])
            flat = _leaves(OmegaConf.to_container(cfg, resolve=True))
            for key, value in flat.items():
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                if numeric and not any(_match(key, p) for p in patterns):
                    unchecked.add(key)
            check_config(cfg)  # the defaults pass
    assert not unchecked, f"numeric config keys without a domain in uaseg.config.check.DOMAINS: {sorted(unchecked)}"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        check_config(compose("predict", overrides=["ckpt=a", "input=b", "output=c"]))


def _leaves(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
            out[f"{prefix}{k}"] = float(v[0])
        else:
            out[f"{prefix}{k}"] = v
    return out


def _match(key: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(key, pattern)


def test_predict_numeric_options(tmp_path):
    from uaseg.predict import main as predict_main

    base = {"ckpt": str(tmp_path / "x.ckpt"), "input": str(tmp_path), "output": str(tmp_path / "out"),
            "coverage": None, "threshold": None, "overwrite": False, "device": "cpu", "trust_checkpoint": False}
    for options, message in [({"coverage": 0}, "coverage=0: expected null or a number in (0, 1]"),
                             ({"coverage": 1.5}, "coverage=1.5: expected null or a number in (0, 1]"),
                             ({"threshold": math.nan}, "threshold=nan: expected null or a number"),
                             ({"threshold": "abc"}, "threshold='abc': expected null or a number"),
                             ({"coverage": 0.9, "overwrite": "flase"}, "overwrite='flase': expected true or false"),
                             ({"coverage": 0.9, "device": "gpu"}, "device=gpu: expected cpu, cuda, cuda:N or auto")]:
        with pytest.raises(PredictError) as err:
            predict_main(OmegaConf.create({**base, **options}))
        assert str(err.value).startswith(message), err.value
    assert not (tmp_path / "out").exists()


def test_command_lines_exit_1_and_2_with_one_line(tmp_path):
    """The real entry points: a bad value (train.py, exit 1) and an unquoted non-ASCII path (train.py
    exit 1, predict.py exit 2) are one line without a traceback."""
    def run(script, *args):
        proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=1800)
        text = proc.stdout + proc.stderr
        assert "Traceback" not in text and "LexerNoViableAltException" not in text, text[-2000:]
        return proc.returncode, [ln for ln in text.splitlines() if "rror" in ln]

    code, lines = run("train.py", f"hydra.run.dir={tmp_path}/a", "loss.lambda=-1")
    assert code == 1 and len(lines) == 1 and "ConfigError: loss.lambda=-1: expected a number >= 0" in lines[0]
    folder = tmp_path / "Données"
    code, lines = run("train.py", "dataset=glas", f"dataset.root={folder}")
    assert code == 1 and lines == [f"ConfigError: dataset.root={folder}: the value has non-ASCII characters, which "
                                   f"Hydra reads only inside quotes; write it as 'dataset.root=\"{folder}\"'"]
    code, lines = run("predict.py", "ckpt=a.ckpt", f"input={folder}", "output=o", "coverage=0.9")
    assert code == 2 and len(lines) == 1 and f"'input=\"{folder}\"'" in lines[0]
