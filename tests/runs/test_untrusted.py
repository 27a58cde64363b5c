"""Opening a checkpoint or run folder someone else made runs no code: every ``_target_`` it names is
checked against the classes uaseg configures before anything is instantiated (:mod:`uaseg.runs.trust`).

Each entry point gets a crafted file whose stored config names ``shutil.copyfile`` writing a marker
file: the marker must not appear, and the one-line error names the file, the key and the target."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import FAST, TINY, compose_cfg
from omegaconf import OmegaConf, open_dict
from PIL import Image

from uaseg.errors import CheckpointError, PredictError, UserError
from uaseg.runs.trust import check_targets, is_allowed
from uaseg.train import build_module, train

EVIL = "shutil.copyfile"


def _copy(marker: Path) -> dict:
    """A stored config node that, instantiated, writes ``marker``."""
    return {"_target_": EVIL, "src": __file__, "dst": str(marker)}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A real tiny demo2d checkpoint (untrained weights) as a dict, and the config that made it."""
    tmp = tmp_path_factory.mktemp("base")
    cfg = compose_cfg(["dataset=demo2d", *TINY["demo2d"], *FAST], tmp / "run", tmp / "cache")
    torch.manual_seed(0)
    module = build_module(cfg)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 1}
    module.on_save_checkpoint(ckpt)
    return ckpt, cfg


def _crafted(base, path: Path, key: str, node: dict) -> Path:
    """``base`` with ``hyper_parameters[key...]`` replaced by ``node`` (``key`` may be dotted)."""
    ckpt = torch.load(_save(base[0], path), map_location="cpu", weights_only=True)  # a copy through torch.save
    parent = ckpt["hyper_parameters"]
    *heads, last = key.split(".")
    for h in heads:
        parent = parent[h]
    parent[last] = node
    torch.save(ckpt, path)
    return path


def _save(ckpt: dict, path: Path) -> Path:
    torch.save(ckpt, path)
    return path


def _png(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------- the allowlist
def test_every_target_of_conf_is_allowed_and_others_are_not():
    conf = Path(__file__).resolve().parents[2] / "conf"
    targets = {line.split("_target_:")[1].split("#")[0].strip()
               for f in conf.rglob("*.yaml") for line in f.read_text().splitlines() if "_target_:" in line}
    assert len(targets) > 15 and all(is_allowed(t) for t in targets), [t for t in targets if not is_allowed(t)]
    for bad in (EVIL, "pathlib.Path.touch", "torch.hub.load", "os.system", "builtins.eval",
                "uaseg.train.Path",  # pathlib's Path, reached through a uaseg module
                "uaseg.io.write_json", "monai.networks.nets.torch", "monai.inferers.inferer.SlidingWindowInferer", 3):
        assert not is_allowed(bad), bad


def test_nested_targets_in_lists_and_args_are_found():
    tree = {"net": {"_target_": "torch.nn.Sequential", "_args_": [{"_target_": "torch.nn.Identity"},
                                                                 {"_target_": "builtins.exec", "_partial_": True}]}}
    with pytest.raises(CheckpointError, match=r"^f\.yaml: net\._args_\[1\]\._target_='builtins\.exec' is not a class"):
        check_targets(tree, "f.yaml")
    check_targets(tree, "f.yaml", trust=True)  # a warning, no error


# ---------------------------------------------------------------------------------------- entry points
def test_predict_refuses_a_crafted_inferer(base, tmp_path):
    from uaseg.inference import predict_files

    marker = tmp_path / "marker"
    ckpt = _crafted(base, tmp_path / "evil.ckpt", "inferer", _copy(marker))
    with pytest.raises(PredictError, match=rf"evil\.ckpt: hyper_parameters\.inferer\._target_='{EVIL}' is not a class "
                                           r"uaseg configures.*trust_checkpoint=true"):
        predict_files(ckpt, _png(tmp_path / "x.png"), tmp_path / "out", threshold=0.5)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_predict_py_prints_one_line(base, tmp_path, monkeypatch, capsys):
    import uaseg.predict

    marker = tmp_path / "marker"
    ckpt = _crafted(base, tmp_path / "evil.ckpt", "net.act", _copy(marker))
    cfg = OmegaConf.create({"ckpt": str(ckpt), "input": str(_png(tmp_path / "x.png")), "output": str(tmp_path / "o"),
                            "threshold": 0.5, "coverage": None, "trust_checkpoint": False})
    with pytest.raises(PredictError) as e:
        uaseg.predict.main(cfg)
    assert "hyper_parameters.net.act._target_='shutil.copyfile'" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_trust_checkpoint_lets_an_unlisted_but_legitimate_target_through(base, tmp_path, caplog):
    from uaseg.inference import predict_files

    inferer = dict(base[0]["hyper_parameters"]["inferer"], _target_="monai.inferers.inferer.SlidingWindowInferer")
    ckpt = _crafted(base, tmp_path / "own.ckpt", "inferer", inferer)
    src = _png(tmp_path / "x.png")
    with pytest.raises(PredictError, match="hyper_parameters.inferer._target_='monai.inferers.inferer"):
        predict_files(ckpt, src, tmp_path / "out", threshold=0.5)
    with caplog.at_level(logging.WARNING, logger="uaseg.runs.trust"):
        (rec,) = predict_files(ckpt, src, tmp_path / "out", threshold=0.5, trust_checkpoint=True)
    assert Path(rec["outputs"]["seg"]).is_file()
    assert "instantiated anyway because trust_checkpoint=true" in caplog.text


def test_uaseg_calibrate_refuses_a_crafted_dataset(base, tmp_path, capsys):
    from uaseg.cli import main as cli

    marker = tmp_path / "marker"
    ckpt = _crafted(base, tmp_path / "evil.ckpt", "dataset.augment", _copy(marker))
    before = ckpt.read_bytes()
    assert cli(["calibrate", str(ckpt), "alpha=0.3"]) == 2
    err = capsys.readouterr().err
    assert f"hyper_parameters.dataset.augment._target_='{EVIL}' is not a class uaseg configures" in err
    assert len(err.strip().splitlines()) == 1 and not marker.exists() and ckpt.read_bytes() == before
    assert cli(["calibrate", str(ckpt), "alpha=0.3", "trust_checkpoint=maybe"]) == 2  # not a yes
    assert "trust_checkpoint='maybe': expected true or false" in capsys.readouterr().err and not marker.exists()


def test_uaseg_ensemble_refuses_a_crafted_member(base, tmp_path):
    from uaseg.inference.ensemble import write_ensemble

    marker = tmp_path / "marker"
    members = []
    for i in range(2):
        run = tmp_path / f"{i}_seed={i}"
        (run / "checkpoints").mkdir(parents=True)
        if i == 1:
            _crafted(base, run / "checkpoints" / "best-x.ckpt", "loss.seg_loss", _copy(marker))
        else:
            _save(base[0], run / "checkpoints" / "best-x.ckpt")
        members.append((run, {"checkpoint": str(run / "checkpoints" / "best-x.ckpt")}))
    with pytest.raises(PredictError, match=rf"1_seed=1/checkpoints/best-x\.ckpt: hyper_parameters\.loss\.seg_loss\."
                                           rf"_target_='{EVIL}'"):
        write_ensemble(tmp_path / "ens", members, [])
    assert not marker.exists() and not (tmp_path / "ens").exists()


def test_ensemble_members_use_their_own_folders_checkpoint(base, tmp_path):
    """A copied multirun: summary.json still names the original folder's file, which is ignored."""
    from uaseg.inference.ensemble import member_checkpoint

    (tmp_path / "original").mkdir()
    elsewhere = _save(base[0], tmp_path / "original" / "best-x.ckpt")
    run = tmp_path / "copy" / "0_seed=1"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=r"0_seed=1: checkpoints/best-x\.ckpt not found"):
        member_checkpoint(run, {"checkpoint": str(elsewhere)})
    own = _save(base[0], run / "checkpoints" / "best-x.ckpt")
    assert member_checkpoint(run, {"checkpoint": str(elsewhere)}) == own
    assert member_checkpoint(run, {"checkpoint": "../../../../etc/best-x.ckpt"}) == own  # only the name counts


@pytest.mark.parametrize("extra", [[], ["train=false", "eval.scores=[max_softmax,temperature]"]],
                         ids=["fine_tune", "temperature_fit"])
def test_train_ckpt_path_refuses_a_crafted_checkpoint(base, make_cfg, tmp_path, extra):
    marker = tmp_path / "marker"
    ckpt = _crafted(base, tmp_path / "evil.ckpt", "inferer", _copy(marker))
    cfg = make_cfg("demo2d", f"ckpt_path={ckpt}", *extra)
    with pytest.raises(CheckpointError, match=rf"evil\.ckpt: hyper_parameters\.inferer\._target_='{EVIL}'"):
        train(cfg)
    assert not marker.exists()


def _run_folder(base, out: Path, config_node: dict | None, ckpt_node: dict | None) -> Path:
    """A run folder to resume: ``.hydra/config.yaml`` (``dataset.augment`` = ``config_node``) and
    ``checkpoints/last.ckpt`` (``hyper_parameters.inferer`` = ``ckpt_node``)."""
    cfg = base[1].copy()
    if config_node:
        with open_dict(cfg):
            cfg.dataset.augment = config_node
    (out / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    (out / "checkpoints").mkdir()
    last = out / "checkpoints" / "last.ckpt"
    _crafted(base, last, "inferer", ckpt_node) if ckpt_node else _save(base[0], last)
    return out


def test_resume_refuses_a_crafted_run_config(base, make_cfg, tmp_path):
    marker = tmp_path / "marker"
    out = _run_folder(base, tmp_path / "run", _copy(marker), None)
    with pytest.raises(CheckpointError, match=rf"\.hydra/config\.yaml: dataset\.augment\._target_='{EVIL}'"):
        train(make_cfg("demo2d", f"resume={out}"))
    assert not marker.exists()


def test_resume_refuses_a_crafted_last_checkpoint(base, make_cfg, tmp_path):
    marker = tmp_path / "marker"
    out = _run_folder(base, tmp_path / "run", None, _copy(marker))
    with pytest.raises(CheckpointError, match=rf"last\.ckpt: hyper_parameters\.inferer\._target_='{EVIL}'"):
        train(make_cfg("demo2d", f"resume={out}", "eval.scores=[max_softmax,temperature]"))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- dataset folders
@pytest.mark.parametrize("entry", ["../outside.nii.gz", "ABSOLUTE"])
def test_decathlon_entries_must_stay_in_the_dataset_folder(tmp_path, entry):
    import json

    from layoutfiles import make_decathlon

    from uaseg.data.formats.decathlon import DecathlonDataModule
    from uaseg.errors import DatasetError

    root = make_decathlon(tmp_path / "Task01", n_test=0)
    outside = tmp_path / "outside.nii.gz"  # exists: only the rule refuses it
    outside.write_bytes((root / "labelsTr" / "BRATS_001.nii.gz").read_bytes())
    entry = str(outside) if entry == "ABSOLUTE" else entry
    d = json.loads((root / "dataset.json").read_text())
    d["training"][1]["label"] = entry
    (root / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(DatasetError, match=rf"dataset\.json: training entry 1 label '{entry}' is (an absolute path|a path "
                                           r"out of the dataset folder); entries must be relative paths inside"):
        DecathlonDataModule.discover(root, DecathlonDataModule.read_info(root))


def test_a_symlink_out_of_the_dataset_folder_is_allowed_and_logged_once(tmp_path, caplog):
    from layoutfiles import make_decathlon

    from uaseg.data.formats.decathlon import DecathlonDataModule

    root = make_decathlon(tmp_path / "Task01", n_test=0)
    for name in ("BRATS_001.nii.gz", "BRATS_002.nii.gz"):
        label = root / "labelsTr" / name
        label.rename(tmp_path / name)
        label.symlink_to(tmp_path / name)
    with caplog.at_level(logging.INFO, logger="uaseg.data.formats.dataset_json"):
        cases = DecathlonDataModule.discover(root, DecathlonDataModule.read_info(root))
    assert len(cases) == 5
    assert caplog.text.count("outside the dataset folder") == 1 and "BRATS_001" in caplog.text
