"""The four ways past the ``_target_`` allowlist (issue 32), each through every entry point that reads
the artefact: an OmegaConf interpolation stored as a string in a checkpoint or ``dataset.json``, one
in a resumed run's ``.hydra/config.yaml``, an allowed class with a path argument out of the run
folder, and ``uaseg calibrate`` following ``summary.json`` out of the folder it was given; plus the
stored curves, temperatures and heads that must be sound (:mod:`uaseg.config.interpolation`,
:mod:`uaseg.runs.stored_records`, :mod:`uaseg.runs.resume`).

A planted interpolation writes a marker file when resolved and instantiated: it must never appear."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from test_untrusted import _png, _run_folder, _save, base  # noqa: F401  (base: the module-scoped checkpoint)

from uaseg.errors import CheckpointError, ConfigError, DatasetError, PredictError, RunFolderError
from uaseg.config.interpolation import PLAN, check_resolvers
from uaseg.train import train
from uaseg.runs.trust import check_checkpoint, check_targets, read_checkpoint


def _evil(marker: Path) -> str:
    """A stored string that, resolved and instantiated, copies this file to ``marker``."""
    return f'${{oc.create:{{_target_: shutil.copyfile, src: "{__file__}", dst: "{marker}"}}}}'


def _planted(base, path: Path, keys: tuple, value, entry: str = "hyper_parameters") -> Path:
    """``base``'s checkpoint with ``checkpoint[entry][keys...]`` set to ``value``, saved at ``path``."""
    ckpt = torch.load(_save(base[0], path), map_location="cpu", weights_only=True)
    parent = ckpt.setdefault(entry, {})
    for k in keys[:-1]:
        parent = parent[k] if isinstance(k, int) else parent.setdefault(k, {})
    parent[keys[-1]] = value
    return _save(ckpt, path)


def _leaves(tree, keys=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, (*keys, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _leaves(v, (*keys, i))
    else:
        yield keys


def _dotted(keys: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")


# ---------------------------------------------------------------------------------- 1. checkpoints
def test_every_leaf_of_the_hyper_parameters_is_checked(base, tmp_path):
    """The sweep: the interpolation in each leaf in turn, through prediction's loader, calibrate and
    the module's loader (temperature, confidence head, validation curves of train.py)."""
    from uaseg.selective.risk_settings import RiskControlSettings
    from uaseg.stages.risk_calibration import calibrate_checkpoint
    from uaseg.inference.model import load_model
    from uaseg.models import SelectiveSegModule

    light = {k: v for k, v in base[0].items() if k != "state_dict"}  # the weights are not what is checked
    leaves = list(_leaves(light["hyper_parameters"]))
    assert len(leaves) > 100
    marker = tmp_path / "marker"
    settings = RiskControlSettings.from_config({"alpha": [0.3]})
    loaders = [lambda p: load_model(p), lambda p: calibrate_checkpoint(p, settings),
               lambda p: SelectiveSegModule.load_from_checkpoint(str(p), map_location="cpu", weights_only=True)]
    for keys in leaves:
        path = _planted((light,), tmp_path / "evil.ckpt", keys, _evil(marker))
        for i, load in enumerate(loaders):
            with pytest.raises((CheckpointError, PredictError)) as e:
                load(path)
            assert not marker.exists(), (keys, i)
            assert f"evil.ckpt: hyper_parameters.{_dotted(keys)}=" in str(e.value), (keys, i, str(e.value))


def test_every_uaseg_entry_is_checked_too(base, tmp_path):
    marker = tmp_path / "marker"
    for entry, keys in [("uaseg_confidence_head", ("layer",)), ("uaseg_risk_control", ("score",)),
                        ("uaseg_val_curves", ("margin",)), ("callbacks", ("ModelCheckpoint", "dirpath"))]:
        path = _planted(base, tmp_path / "evil.ckpt", keys, _evil(marker), entry)
        with pytest.raises(CheckpointError, match=rf"evil\.ckpt: {entry}\.{'.'.join(keys)}='\$\{{oc\.create:.*"
                                                  r"is an OmegaConf interpolation.*trust_checkpoint=true"):
            read_checkpoint(path)
    assert not marker.exists()


def test_predict_py_and_ensemble_refuse_an_interpolation(base, tmp_path):
    import uaseg.predict
    from uaseg.inference.ensemble import write_ensemble

    marker = tmp_path / "marker"
    ckpt = _planted(base, tmp_path / "evil.ckpt", ("net", "dropout"), _evil(marker))
    cfg = OmegaConf.create({"ckpt": str(ckpt), "input": str(_png(tmp_path / "x.png")), "output": str(tmp_path / "o"),
                            "threshold": 0.5, "coverage": None, "trust_checkpoint": False})
    with pytest.raises(PredictError) as e:
        uaseg.predict.main(cfg)
    assert not marker.exists()
    assert "evil.ckpt: hyper_parameters.net.dropout='${oc.create:" in str(e.value) and "\n" not in str(e.value)
    members = []
    for i in range(2):
        run = tmp_path / f"{i}_seed={i}"
        (run / "checkpoints").mkdir(parents=True)
        best = run / "checkpoints" / "best-x.ckpt"
        _planted(base, best, ("dataset", "cache_dir"), _evil(marker)) if i else _save(base[0], best)
        members.append((run, {"checkpoint": str(best)}))
    with pytest.raises(PredictError, match=r"1_seed=1/checkpoints/best-x\.ckpt: hyper_parameters\.dataset\.cache_dir="):
        write_ensemble(tmp_path / "ens", members, [])
    assert not marker.exists() and not (tmp_path / "o").exists() and not (tmp_path / "ens").exists()


def test_uaseg_calibrate_refuses_an_interpolation(base, tmp_path, capsys):
    from uaseg.cli import main as cli

    marker = tmp_path / "marker"
    ckpt = _planted(base, tmp_path / "evil.ckpt", ("loss", "seg_loss", "weight"), _evil(marker))
    before = ckpt.read_bytes()
    assert cli(["calibrate", str(ckpt), "alpha=0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "hyper_parameters.loss.seg_loss.weight='${oc.create:" in err and len(err.splitlines()) == 1
    assert not marker.exists() and ckpt.read_bytes() == before


@pytest.mark.parametrize("how", ["fine_tune", "temperature_fit", "resume"])
def test_training_refuses_an_interpolation_in_the_checkpoint_it_starts_from(base, make_cfg, tmp_path, how):
    marker = tmp_path / "marker"
    if how == "resume":
        out = _run_folder(base, tmp_path / "run", None, None)
        _planted(base, out / "checkpoints" / "last.ckpt", ("inferer", "overlap"), _evil(marker))
        cfg = make_cfg("demo2d", f"resume={out}", "eval.scores=[max_softmax,temperature]")
    else:
        ckpt = _planted(base, tmp_path / "evil.ckpt", ("inferer", "overlap"), _evil(marker))
        extra = ["train=false", "eval.scores=[max_softmax,temperature]"] if how == "temperature_fit" else []
        cfg = make_cfg("demo2d", f"ckpt_path={ckpt}", *extra)
    with pytest.raises(CheckpointError, match=r"\.ckpt: hyper_parameters\.inferer\.overlap='\$\{oc\.create:"):
        train(cfg)
    assert not marker.exists()


def test_trust_checkpoint_turns_the_refusal_into_a_warning(base, caplog):
    ckpt = {**base[0], "hyper_parameters": {**base[0]["hyper_parameters"], "run_identity": {"tag": "${oc.env:HOME}"}}}
    with pytest.raises(CheckpointError, match="run_identity.tag"):
        check_checkpoint(ckpt, "f.ckpt")
    with caplog.at_level(logging.WARNING, logger="uaseg.runs.trust"):
        check_checkpoint(ckpt, "f.ckpt", trust=True)
    assert "resolved anyway because trust_checkpoint=true" in caplog.text


def test_a_dataset_json_name_is_never_resolved(tmp_path):
    """A class name in dataset.json reaches the config through the plan, and instantiate resolves it."""
    from conftest import compose_cfg
    from layoutfiles import make_decathlon

    from uaseg.data import build_datamodule

    marker = tmp_path / "marker"
    root = make_decathlon(tmp_path / "Task01", n_test=0)
    cfg = compose_cfg(["dataset=nnunet", f"dataset.root={root}", "dataset._target_=uaseg.data.formats.decathlon.DecathlonDataModule",
                       "model=unet_small"], tmp_path / "run", tmp_path / "cache")
    build_datamodule(cfg.dataset)  # computes and stores the fingerprint
    (fingerprint,) = root.rglob("*fingerprint*.json")
    fp = json.loads(fingerprint.read_text())
    fp["channels"][1]["name"] = _evil(marker)
    fingerprint.write_text(json.dumps(fp))
    with pytest.raises(DatasetError, match=r"fingerprint.*\.json: channels\[1\]\.name='\$\{oc\.create:.*delete it"):
        build_datamodule(cfg.dataset)
    fingerprint.unlink()
    d = json.loads((root / "dataset.json").read_text())
    d["labels"]["1"] = _evil(marker)
    (root / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(DatasetError, match=r"dataset\.json: labels\.1='\$\{oc\.create:.*a dataset\.json holds plain "
                                           r"values only"):
        build_datamodule(cfg.dataset)
    assert not marker.exists()


# ---------------------------------------------------------------------------------- 2. resumed config
def _resume_folder(base, out: Path, key: str, value) -> Path:
    """A resumable run folder whose ``.hydra/config.yaml`` has ``key`` set to ``value``."""
    import yaml

    _run_folder(base, out, None, None)
    saved = out / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(saved.read_text())  # as text: OmegaConf itself refuses to hold a malformed interpolation
    *heads, last = key.split(".")
    node = cfg
    for h in heads:
        node = node.setdefault(h, {})
    node[last] = value
    saved.write_text(yaml.safe_dump(cfg))
    return out


@pytest.mark.parametrize("value, problem", [
    ("MARKER", "calls the resolver 'oc.create'"),
    ("${oc.decode:'${oc.create:1}'}", "calls the resolver 'oc.decode'"),
    ("${${trainer.accelerator}:1}", "names its resolver by an interpolation"),
    ("${oc.env:HOME}", "reads an environment variable other than PROJECT_ROOT or UASEG_CACHE"),
    ("${uaseg.dataset_plan:uaseg.data.formats.nnunet.NnUNetDataModule,/data,/tmp,null,RAS,1,1}", "calls uaseg.dataset_plan"),
    ("${uaseg.get:${oc.select:x,'${now:%Y}'},${oc.create:{}}}", "calls the resolver 'oc.create'"),
], ids=["oc.create", "oc.decode", "name_interpolation", "oc.env", "dataset_plan", "nested"])
def test_resume_refuses_an_unlisted_resolver_before_resolving(base, make_cfg, tmp_path, value, problem):
    marker = tmp_path / "marker"
    out = _resume_folder(base, tmp_path / "run", "trainer.max_time", _evil(marker) if value == "MARKER" else value)
    with pytest.raises(CheckpointError) as e:
        train(make_cfg("demo2d", f"resume={out}"))
    assert f"run/.hydra/config.yaml: trainer.max_time=" in str(e.value) and problem in str(e.value)
    assert "nothing was resolved" in str(e.value) and not marker.exists()


def test_a_malformed_interpolation_is_refused_unresolved(base, make_cfg, tmp_path):
    out = _resume_folder(base, tmp_path / "run", "trainer.max_time", "00:${oc.create:")
    with pytest.raises(ConfigError, match=r"cannot read .*config\.yaml \(GrammarParseError: .* full_key: trainer\.max_time"):
        train(make_cfg("demo2d", f"resume={out}"))  # OmegaConf's own loader refuses it
    with pytest.raises(CheckpointError, match=r"^c\.yaml: x='00:\$\{oc\.create:' is not a valid interpolation"):
        check_resolvers({"x": "00:${oc.create:"}, "c.yaml")


def test_the_resolvers_of_conf_are_allowed(make_cfg):
    check_resolvers(make_cfg("demo2d", "logger=wandb", "callbacks=early_stop"), "config.yaml")
    nnunet = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "dataset" / "nnunet.yaml")
    assert OmegaConf.to_container(nnunet)["plan"] == PLAN  # the one form uaseg.dataset_plan may take
    check_resolvers({"dataset": nnunet}, "config.yaml")
    with pytest.raises(CheckpointError, match="dataset.meta.in_channels=.*uaseg.dataset_plan"):
        check_resolvers({"dataset": {"meta": {"in_channels": PLAN}}}, "config.yaml")


def test_check_targets_never_resolves(tmp_path):
    """A resolver that would build a target (and leave a marker) must not run in the trust check."""
    marker = tmp_path / "marker"

    def build():
        marker.write_text("resolved")
        return {"_target_": "shutil.copyfile"}

    OmegaConf.register_new_resolver("uaseg_test.build", build, replace=True)
    try:
        check_targets(OmegaConf.create({"net": "${uaseg_test.build:}"}), "f.yaml")
    finally:
        OmegaConf.clear_resolver("uaseg_test.build")
    assert not marker.exists()


@pytest.mark.parametrize("target", ["monai.networks.nets.DynUNett", "uaseg.no_such_module.Net"])
def test_an_unimportable_target_is_one_line_saying_so(target):
    for trust in (False, True):
        with pytest.raises(CheckpointError, match=rf"^f\.yaml: net\._target_='{target}' cannot be imported \(.+\): "
                                                  r"a misspelt name, or a package or version this installation lacks$"):
            check_targets({"net": {"_target_": target}}, "f.yaml", trust=trust)


# ---------------------------------------------------------------------------------- 3. paths out of the folder
@pytest.mark.parametrize("logger", ["MLFlowLogger", "CometLogger", "NeptuneLogger"])
def test_a_logger_that_sends_the_run_elsewhere_is_not_allowed(logger):
    """An allowed package with a hostile argument: a server (and an API key) of the file's choosing."""
    with pytest.raises(CheckpointError, match=rf"logger\.x\._target_='lightning\.pytorch\.loggers\.{logger}' is not a "
                                              "class uaseg configures"):
        check_targets({"logger": {"x": {"_target_": f"lightning.pytorch.loggers.{logger}", "api_key": "k"}}}, "c.yaml")


@pytest.mark.parametrize("key, value, named", [
    ("callbacks.model_checkpoint.dirpath", "OUTSIDE", None),
    ("callbacks.model_checkpoint.filename", "../../outside/best", None),
    ("logger.csv.save_dir", "OUTSIDE", None),
    ("logger.csv.name", "../../outside", None),
    ("trainer.default_root_dir", "OUTSIDE", None),
    ("dataset.cache_dir", "OUTSIDE", None),
    ("callbacks.writer", {"_target_": "uaseg.callbacks.SelectiveReportWriter", "output_dir": "OUTSIDE"},
     "callbacks.writer.output_dir"),  # an allowed uaseg class with a path argument
    ("trainer.default_root_dir", None, "trainer.default_root_dir is not set"),  # Lightning: the working directory
    ("logger.csv.save_dir", None, "logger.csv.save_dir is not set"),
])
def test_resume_refuses_a_folder_out_of_the_run(base, make_cfg, tmp_path, key, value, named):
    outside = str(tmp_path / "outside")
    value = {k: outside if v == "OUTSIDE" else v for k, v in value.items()} if isinstance(value, dict) else value
    out = _resume_folder(base, tmp_path / "run", key, outside if value == "OUTSIDE" else value)
    with pytest.raises(CheckpointError, match=rf"run/\.hydra/config\.yaml: {named or key}(='.*(is outside the run "
                                              r"folder|steps out of)|, so).*a resumed run writes only"):
        train(make_cfg("demo2d", f"resume={out}"))
    assert not Path(outside).exists()


def test_resume_takes_paths_and_trust_from_the_command(base, make_cfg, tmp_path):
    """A stored trust_checkpoint=true does not let a crafted last.ckpt through; stored paths are replaced."""
    marker = tmp_path / "marker"
    from uaseg.runs.resume import resumed_config

    out = _resume_folder(base, tmp_path / "run", "trust_checkpoint", True)
    _planted(base, out / "checkpoints" / "last.ckpt", ("inferer", "overlap"), _evil(marker))
    with pytest.raises(CheckpointError, match=r"last\.ckpt: hyper_parameters\.inferer\.overlap="):
        train(make_cfg("demo2d", f"resume={out}"))
    assert not marker.exists()
    _resume_folder(base, tmp_path / "run2", "paths.cache_dir", str(tmp_path / "outside"))
    cfg = make_cfg("demo2d", f"resume={tmp_path / 'run2'}")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run2")
    assert resumed_config(cfg).paths.cache_dir == cfg.paths.cache_dir


def test_paths_given_on_the_command_line_are_the_users(make_cfg, tmp_path):
    from uaseg.runs.resume import check_write_paths

    cfg = make_cfg("demo2d")
    with open_dict(cfg):
        cfg.callbacks.model_checkpoint.dirpath = str(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="callbacks.model_checkpoint.dirpath"):
        check_write_paths(cfg, tmp_path / "run", Path("c.yaml"))
    check_write_paths(cfg, tmp_path / "run", Path("c.yaml"), {"callbacks.model_checkpoint.dirpath"})


def test_a_best_checkpoint_restored_from_a_checkpoint_stays_in_the_folder(base, tmp_path):
    """Lightning restores ``best_model_path`` from the checkpoint training starts from."""
    from uaseg.runs.resume import own_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    assert own_checkpoint(str(ckpts / "best-1.ckpt"), str(ckpts)) == str(ckpts / "best-1.ckpt")
    with pytest.raises(CheckpointError, match="records its best checkpoint as /elsewhere/best-1.ckpt, outside"):
        own_checkpoint("/elsewhere/best-1.ckpt", str(ckpts))
    _save(base[0], ckpts / "best-1.ckpt")  # a moved run folder: its own file of that name
    assert own_checkpoint("/elsewhere/best-1.ckpt", str(ckpts)) == str(ckpts / "best-1.ckpt")
    state = {"dirpath": str(ckpts), "best_model_path": "", "best_k_models": {f"{ckpts}/../../victim": 0.1}}
    with pytest.raises(CheckpointError, match=r"callbacks\.ModelCheckpoint\.best_k_models: '.*/\.\./\.\./victim' "
                                              "steps out"):
        check_checkpoint({**base[0], "callbacks": {"ModelCheckpoint": state}}, "last.ckpt")


def test_resume_refuses_a_link_out_of_the_run_folder(base, tmp_path):
    from uaseg.runs.folder import claim_run_folder

    out = _run_folder(base, tmp_path / "run", None, None)
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (out / "train.log").symlink_to(victim)  # Hydra would append the run's log to it
    with pytest.raises(RunFolderError, match=r"run/train\.log is a link to .*victim\.txt, outside the run folder"):
        claim_run_folder(out, resume=out)
    assert victim.read_text() == "mine"


# ---------------------------------------------------------------------------------- 4. summary.json
def test_calibrate_never_follows_summary_json_out_of_the_folder(base, tmp_path, capsys):
    from uaseg.cli import main as cli
    from uaseg.inference import resolve_checkpoint

    elsewhere = _save(base[0], tmp_path / "elsewhere.ckpt")
    before = elsewhere.read_bytes()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"checkpoint": str(elsewhere)}))
    assert cli(["calibrate", str(run), "alpha=0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"its summary.json names the checkpoint {elsewhere}, outside this folder" in err
    assert "pass the checkpoint file itself" in err and len(err.splitlines()) == 1
    assert elsewhere.read_bytes() == before
    inside = _save(base[0], run / "tested.ckpt")  # a recorded path inside the folder is followed
    (run / "summary.json").write_text(json.dumps({"checkpoint": str(inside)}))
    assert resolve_checkpoint(run) == inside


# ---------------------------------------------------------------------------------- 5. stored records
def _grid(n: int = 5) -> dict:
    return {"coverage": [1 - i / (n - 1) for i in range(n)], "threshold": [1 - i / (n - 1) for i in range(n)]}


@pytest.mark.parametrize("entry, value, problem", [
    ("uaseg_val_curve", {**_grid(), "threshold": [math.nan] * 5}, "NaN values"),
    ("uaseg_val_curve", {**_grid(), "coverage": [1.0, 0.5, 0.7, 0.2, 0.0]}, "must fall together"),
    ("uaseg_val_curve", {"coverage": [1.0, 1.5], "threshold": [1.0, 0.5]}, r"coverages outside \[0, 1\]"),
    ("uaseg_val_curve", {"coverage": [1.0], "threshold": [1.0, 0.5]}, "malformed"),
    ("uaseg_val_curves", {"margin": {**_grid(), "threshold": [0.9, math.nan, 0.5, 0.2, 0.1]}}, "NaN values"),
    ("uaseg_temperature", -1.0, "not a positive finite number"),
    ("uaseg_temperature", math.inf, "not a positive finite number"),
    ("uaseg_risk_control", {"calibrations": {"crc": {"0.1": {"alpha": 0.1, "threshold": math.nan}}}}, "not NaN"),
], ids=["nan_curve", "rising_curve", "coverage_range", "shapes", "nan_score_curve", "negative_t", "inf_t", "nan_cal"])
def test_unsound_stored_records_are_one_line(base, tmp_path, entry, value, problem):
    from uaseg.inference import predict_files

    ckpt = _save({**base[0], entry: value}, tmp_path / "bad.ckpt")
    with pytest.raises(PredictError, match=rf"bad\.ckpt: {entry}[^:]*: .*{problem}"):
        predict_files(ckpt, _png(tmp_path / "x.png"), tmp_path / "out", coverage=0.9)
    assert not (tmp_path / "out").exists()


def test_a_confidence_head_must_fit_its_sizes(base, tmp_path):
    from uaseg.models import SelectiveSegModule
    from uaseg.uncertainty.confidnet import ConfidenceHead

    record = ConfidenceHead(2, 16, hidden=4).to_record(parameters=1)
    SelectiveSegModule.load_from_checkpoint(str(_save({**base[0], "uaseg_confidence_head": record}, tmp_path / "ok.ckpt")),
                                            map_location="cpu", weights_only=True)
    for bad, problem in [({"hidden": 10 ** 9}, "weights are not those of a head with in_channels=16, hidden=1000000000"),
                         ({"spatial_dims": 4}, "not a 2-D or 3-D head"),
                         ({"state_dict": {**record["state_dict"],
                                          "body.4.bias": torch.tensor([math.nan])}}, "not all finite")]:
        path = _save({**base[0], "uaseg_confidence_head": {**record, **bad}}, tmp_path / "bad.ckpt")
        with pytest.raises(CheckpointError, match=rf"bad\.ckpt: uaseg_confidence_head: .*{problem}"):
            SelectiveSegModule.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------- uaseg report
def test_the_report_reads_run_folders_without_resolving(tmp_path):
    from types import SimpleNamespace

    from uaseg.report.collect import read_overrides
    from uaseg.report.curves import ranking_weight

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- trainer.max_epochs=${uaseg.divide:10,2}\n")
    (tmp_path / ".hydra" / "config.yaml").write_text("loss:\n  lambda: ${uaseg.divide:4,2}\n  scale: 3\n")
    assert read_overrides(tmp_path) == ["trainer.max_epochs=${uaseg.divide:10,2}"]  # as the user typed it
    run = SimpleNamespace(path=tmp_path, identity={"lambda": 1.0, "scale": 3})
    assert ranking_weight(run) == 3.0  # the stored text is no number: the summary's identity instead
