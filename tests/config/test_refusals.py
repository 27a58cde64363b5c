"""Inputs that used to end in a traceback or a silently wrong result: each is now one clear line
before any work (config values, NIfTI headers, a multirun's jobs), or the right result (SIGTERM's
record and resume command, the attempt of each metrics.csv row)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from uaseg.errors import ConfigError, DatasetError, TerminatedError
from uaseg.train import train

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize("overrides,message", [
    (["dataset.patch_size=[33,37]"],
     "dataset.patch_size=[33,37]: each entry must be a multiple of [8,8], the network's total stride "
     "(3 downsamplings, model.net.strides=[1,2,2,2]); e.g. dataset.patch_size=[32,32]"),
    (["loss.start_epoch=1"],  # FAST trains one epoch, epoch 0
     "loss.start_epoch=1: the ranking term (loss.lambda=2.0) would never run, as trainer.max_epochs=1 trains "
     "epochs 0..0"),
    (["eval.scores=[max_softmax,mc_entropy]"],
     "eval.scores=['max_softmax','mc_entropy']: mc_entropy sample(s) dropout, but model.dropout=0"),
    (["eval.tta_flips=[[0],[2]]"], "eval.tta_flips=[[0], [2]]: axes must lie in 0..1"),
    (["eval.tta_flips=3"], "eval.tta_flips must be 'all' or a list of axis lists"),
    (["eval.tta_flips=[[0,x]]"], "eval.tta_flips=[[0,'x']]: expected 'all' or a list of axis lists"),
])
def test_values_that_failed_late_are_refused_before_any_work(make_cfg, overrides, message):
    cfg = make_cfg("demo2d", *overrides)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
    assert not Path(cfg.paths.output_dir).exists()  # refused before any work: no run folder left behind


def test_the_rules_let_good_values_through(make_cfg):
    from uaseg.config.check import check_config

    for extra in (["dataset.patch_size=[40,48]"], ["loss.start_epoch=1", "loss.lambda=0"],
                  ["loss.start_epoch=1", "trainer.max_epochs=2"],
                  ["model.dropout=0.2", "eval.scores=[max_softmax,mc_dropout]"], ["eval.tta_flips=[[],[0,1]]"]):
        check_config(make_cfg("demo2d", *extra))


def test_debug_fast_on_a_file_dataset_says_it_is_for_the_demo_data(make_cfg, tmp_path):
    """``debug=fast`` shrinks the built-in data (dataset.num_cases, image_size), options an nnU-Net
    folder does not have: one line before any work instead of the datamodule's TypeError."""
    from layoutfiles import make_nnunet_2d

    root = make_nnunet_2d(tmp_path / "Dataset003_Png")
    cfg = make_cfg("nnunet", "debug=fast", f"dataset.root={root}")
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == (
        "dataset.num_cases: an option of the built-in demo data (dataset=demo2d|demo3d|demo3d_abdomen), not of "
        "NnUNetDataModule; debug=fast sets it and is for the demo data only: for a quick run of your own data use "
        "trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=2 trainer.limit_test_batches=2")
    assert not Path(cfg.paths.output_dir).exists()
    from uaseg.config.check import check_config

    check_config(make_cfg("demo3d", "debug=fast"))  # the demo data takes them


def test_a_folder_that_existed_keeps_its_record(make_cfg):
    """Only a folder the refused run created is removed; one that was there before gets failed.json."""
    cfg = make_cfg("demo2d", "dataset.patch_size=[33,37]")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        train(cfg)
    assert (out / "notes.txt").read_text() == "mine" and (out / "failed.json").exists()


def test_a_value_refused_in_the_set_up_leaves_no_folder_and_the_retry_runs(make_cfg):
    """Too few validation cases for alpha=0.1 is found only once the data is there, inside the set-up:
    still before any work, so no folder (failed.json, lock) is left to refuse the corrected retry."""
    cfg = make_cfg("demo2d", "eval.risk_control.alpha=[0.1]", "eval.figures=false")
    out = Path(cfg.paths.output_dir)
    with pytest.raises(ConfigError, match=r"eval.risk_control: 2 validation cases are too few \(crc alpha=0.1 needs >= 9\)"):
        train(cfg)
    assert not out.exists()
    cfg.eval.risk_control.alpha = [0.5]
    train(cfg)
    assert (out / "summary.json").exists() and not (out / ".uaseg.lock").exists()


@pytest.mark.slow
def test_train_py_leaves_no_folder_for_a_value_refused_in_the_set_up(tmp_path):
    """Under Hydra, which writes .hydra/ and train.log before the task runs: too few calibration
    cases and a missing ckpt_path leave no folder, and a retry into it runs; a run that fails after
    the set-up keeps its failed.json but not the lock file."""
    run = tmp_path / "run"
    for value, message in (("eval.risk_control.alpha=[0.1]", "ConfigError: eval.risk_control: 2 validation cases are too few"),
                           (f"ckpt_path={tmp_path}/none.ckpt", f"ConfigError: ckpt_path={tmp_path}/none.ckpt: file not found")):
        proc = _cli([value, f"hydra.run.dir={run}",], tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert message in proc.stdout + proc.stderr and not run.exists()
    proc = _cli([f"hydra.run.dir={run}", "train=false", "test=false"], tmp_path)  # corrected (the full retry: above)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "metrics.json").exists() and not (run / ".uaseg.lock").exists()
    proc = _cli(["+trainer.max_steps=0", f"hydra.run.dir={tmp_path}/failed"], tmp_path)  # fails after the set-up
    assert proc.returncode == 1 and (tmp_path / "failed" / "failed.json").exists()
    assert not (tmp_path / "failed" / ".uaseg.lock").exists()  # released, though train.py exits before Hydra's end


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    flags = [a for a in args if a.startswith("-")]
    rest = [a for a in args if not a.startswith("-")]
    return subprocess.run([sys.executable, "train.py", *flags, f"paths.cache_dir={tmp_path}/cache", "model=unet_small",
                           "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                           "trainer.limit_test_batches=1", "dataset.num_cases=10", "dataset.image_size=48",
                           "dataset.batch_size=2", "dataset.samples_per_image=1", "callbacks.progress_bar=null",
                           "trainer.accelerator=cpu", *rest],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)


def test_train_py_refuses_a_value_before_hydra_makes_the_run_folder(tmp_path):
    proc = _cli(["dataset.patch_size=[33,37]", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if "Error" in ln]
    assert lines == ["ConfigError: dataset.patch_size=[33,37]: each entry must be a multiple of [8,8], the network's "
                     "total stride (3 downsamplings, model.net.strides=[1,2,2,2]); e.g. dataset.patch_size=[32,32]"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_multirun_with_one_bad_job_starts_none(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _cli(["-m", "dataset.fold=0,9", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert ("ConfigError: multirun job 1 (dataset.fold=9): dataset.fold=9: expected an integer in 0..4 "
            "(dataset.num_folds=5); no job was started") in proc.stderr
    assert "Traceback" not in proc.stderr and not sweep.exists()


# ---------------------------------------------------------------------------------------- NIfTI headers
def _broken_nifti(path: Path, field: str, value) -> Path:
    data = np.zeros((8, 8, 8), np.float32)
    header = nib.Nifti1Image(data, np.eye(4)).header.copy()
    header[field] = value
    header["sform_code"] = 1
    nib.save(nib.Nifti1Image(data, None, header=header), path)
    return path


@pytest.mark.parametrize("field,value,problem", [
    ("srow_y", [0, 0, 0, 0], "gives axis 1 a zero voxel spacing"),
    ("srow_x", [1, 0, 0, np.nan], "holds NaN or infinite values"),
])
def test_a_broken_nifti_header_is_named(tmp_path, field, value, problem):
    from uaseg.data.checks import check_nifti_pair, check_same_geometry
    from uaseg.data.plan.fingerprint import case_geometry

    bad = _broken_nifti(tmp_path / "case_001.nii.gz", field, value)
    good = tmp_path / "label_001.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), good)
    expected = f"{bad}: bad NIfTI header: its affine (voxel-to-world matrix) {problem}"
    for check in (lambda: check_nifti_pair(str(bad), str(good)), lambda: case_geometry(str(bad), 3),
                  lambda: check_same_geometry(str(bad), str(bad), (8, 8, 8), (8, 8, 8),
                                              nib.load(bad).affine, nib.load(bad).affine)):
        with pytest.raises(DatasetError) as err:
            check()
        assert str(err.value).startswith(expected) and "different affines" not in str(err.value)


# ---------------------------------------------------------------------------------------- SIGTERM
def test_sigterm_says_what_happened_and_how_to_resume(make_cfg, monkeypatch):
    """As a scheduler's preemption: Lightning raises its message-less SIGTERMException at the end of
    the epoch in which the signal arrived (here: sent during epoch 1)."""
    from uaseg.models import SelectiveSegModule

    cfg = make_cfg("demo2d", "trainer.max_epochs=3", "eval.figures=false")
    original = SelectiveSegModule.training_step

    def preempted(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 0:
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # Lightning's handler, not death
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SelectiveSegModule, "training_step", preempted)
    out = Path(cfg.paths.output_dir)
    with pytest.raises(TerminatedError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith("terminated by SIGTERM (e.g. a cluster scheduler's preemption or time limit); ")
    assert message.endswith(f"continue with resume={out}") and "\n" not in message
    assert json.loads((out / "failed.json").read_text())["error"] == f"TerminatedError: {message}"


def test_a_multiruns_sigterm_is_left_to_lightning_in_fit_raised_outside_and_ends_the_sweep(tmp_path, capsys):
    """The multirun's SIGTERM handler: inside fit Lightning's handler (which calls it) stops training;
    outside fit it raises Lightning's SIGTERMException itself; when the job ends, the sweep ends with
    the resume command of the stopped job and the next job's command (the end-to-end run is in
    tests/runs/test_runs.py)."""
    from hydra.core.utils import JobReturn, JobStatus
    from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from omegaconf import OmegaConf

    from uaseg.runs.sweep_stop import StopSweepOnSigterm

    stop = StopSweepOnSigterm()
    stop._jobs, stop._pid = [["a=1"], ["a=2"], ["a=3"]], os.getpid()
    job = OmegaConf.create({"hydra": {"job": {"num": 0}, "runtime": {"output_dir": str(tmp_path)}}})
    previous = signal.signal(signal.SIGTERM, stop._handler)
    try:
        stop.on_job_start(job)
        with pytest.raises(SIGTERMException):
            os.kill(os.getpid(), signal.SIGTERM)
        stop._received = False
        seen = []
        signal.signal(signal.SIGTERM, _HandlersCompose([lambda *a: seen.append(1), stop._handler]))  # as in fit
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [1] and stop._received
    finally:
        signal.signal(signal.SIGTERM, previous)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    done = JobReturn(status=JobStatus.FAILED, _return_value=TerminatedError("terminated by SIGTERM"))
    with pytest.raises(SystemExit) as exit_:
        stop.on_job_end(job, done)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        f"TerminatedError: the multirun was stopped by SIGTERM in job 0 ({tmp_path}); continue it with: python train.py "
        f"resume={tmp_path}; the 2 later job(s) of 3 were not started: run each with python train.py <its overrides>, "
        "the next one: python train.py a=2\n")

    between = StopSweepOnSigterm()  # job 0 ended without a signal (the sweep goes on), then SIGTERM arrives
    between._jobs, between._pid = stop._jobs, os.getpid()
    between.on_job_end(job, JobReturn(status=JobStatus.COMPLETED, _return_value=0.5))
    previous = signal.signal(signal.SIGTERM, between._handler)
    try:
        with pytest.raises(SystemExit):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == (
        "TerminatedError: the multirun was stopped by SIGTERM between jobs; the 2 later job(s) of 3 were not started: "
        "run each with python train.py <its overrides>, the next one: python train.py a=2\n")


# ---------------------------------------------------------------------------------------- metrics.csv
def test_metrics_csv_rows_say_which_attempt_logged_them(tmp_path):
    from uaseg.runs.loggers import CSVLogger

    def attempt(metrics: list[dict]) -> None:
        logger = CSVLogger(str(tmp_path), name="csv", version="")
        for step, m in enumerate(metrics):
            logger.log_metrics(m, step=step)
        logger.save()

    def rows() -> list[dict]:
        with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))

    attempt([{"epoch": 0, "train/loss": 1.0}, {"epoch": 1, "train/loss": 0.9}])  # killed during epoch 1
    attempt([{"epoch": 1, "train/loss": 0.8}, {"epoch": 2, "train/loss": 0.7, "val/dice": 0.5}])  # resumed
    got = [(r["attempt"], r["epoch"], r["train/loss"]) for r in rows()]
    assert got == [("1", "0", "1.0"), ("1", "1", "0.9"), ("2", "1", "0.8"), ("2", "2", "0.7")]

    # a file written before the column existed: its rows are the first attempt's
    path = tmp_path / "csv" / "metrics.csv"
    path.write_text("epoch,step,train/loss\n0,0,1.0\n")
    attempt([{"epoch": 0, "train/loss": 0.95}])
    assert [(r["attempt"], r["train/loss"]) for r in rows()] == [("1", "1.0"), ("2", "0.95")]
