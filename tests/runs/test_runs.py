"""How users run experiments: multiruns that survive a failed job, resume after SIGKILL, a NaN
stop, W&B offline, DDP on CPU, the joblib launcher, and the paper/sweep presets."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from uaseg.errors import NonFiniteLossError, RunFolderError
from uaseg.train import train

ROOT = Path(__file__).resolve().parents[2]

TINY_CLI = [
    "dataset.num_cases=10", "dataset.image_size=48", "dataset.patch_size=[32,32]", "model=unet_small",
    "dataset.batch_size=2", "dataset.samples_per_image=1", "trainer.max_epochs=1",
    "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1", "eval.bootstrap=20",
    "callbacks.progress_bar=null", "eval.figures=false", "trainer.accelerator=cpu",
]


def run_cli(args: list[str], tmp_path: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    flags = [a for a in args if a.startswith("-")]  # `-m` must precede the overrides
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "train.py", *flags, f"paths.cache_dir={tmp_path}/cache", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_multirun_goes_on_after_a_failed_job(tmp_path):
    sweep = tmp_path / "sweep"
    # an accelerator Lightning refuses fails those jobs when they build their trainer (config values
    # are checked for every job before the first starts), the others still run
    tiny = [a for a in TINY_CLI if not a.startswith("trainer.accelerator=")]
    proc = run_cli(["-m", f"hydra.sweep.dir={sweep}", "trainer.accelerator=cpu,nope", "loss.lambda=0,2", *tiny],
                   tmp_path)
    assert proc.returncode != 0, proc.stderr[-3000:]  # Hydra reports the failure at the end
    assert sweep.exists(), proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 4
    done = [j for j in jobs if (j / "summary.json").exists()]
    failed = [j for j in jobs if (j / "failed.json").exists()]
    assert len(done) == 2 and len(failed) == 2, proc.stderr[-2000:]
    assert "accelerator" in json.loads((failed[0] / "failed.json").read_text())["error"]


PREEMPTED_TRAIN_PY = """
import os, runpy, signal, sys
from uaseg.models import SelectiveSegModule

original = SelectiveSegModule.training_step

def preempted(self, batch, batch_idx):  # SIGTERM to this process in epoch 1, once: a scheduler's preemption
    if self.current_epoch == 1 and not os.environ.get("SIGTERM_SENT"):
        os.environ["SIGTERM_SENT"] = "1"
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, batch, batch_idx)

SelectiveSegModule.training_step = preempted
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_sigterm_stops_a_multirun_and_says_how_to_resume(tmp_path):
    """SIGTERM during the first of three jobs: that job stops with its checkpoint, no later job
    starts, and one line names the resume command of the stopped job and the jobs not started."""
    script = tmp_path / "preempted_train.py"
    script.write_text(PREEMPTED_TRAIN_PY)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    args = [a for a in TINY_CLI if not a.startswith("trainer.max_epochs")]
    proc = subprocess.run([sys.executable, str(script), "-m", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path}/cache",
                           "loss.lambda=0,1,2", "trainer.max_epochs=2", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 1, proc.stderr[-3000:]
    jobs = [p for p in sweep.iterdir() if p.is_dir()]
    assert len(jobs) == 1 and (jobs[0] / "checkpoints" / "last.ckpt").is_file(), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (sweep / ".uaseg.lock").exists()
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("TerminatedError: ")]
    assert f"stopped by SIGTERM in job 0 ({jobs[0]}); continue it with: python train.py " in line
    assert shlex.join(["python", "train.py", f"resume={jobs[0]}"]) in line
    assert "the 2 later job(s) of 3 were not started" in line and "loss.lambda=1" in line
    assert "TerminatedError: terminated by SIGTERM" in (jobs[0] / "failed.json").read_text()


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    args = [a for a in TINY_CLI if not a.startswith("trainer.max_epochs")]
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path}/cache",
           "trainer.max_epochs=200", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (run / "summary.json").exists()
    killed_epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]

    resumed = run_cli([f"resume={run}", f"trainer.max_epochs={killed_epoch + 2}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / "summary.json").exists()
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] > killed_epoch
    # the original Hydra record is kept; the resumed one sits beside it
    assert "trainer.max_epochs=200" in (run / ".hydra" / "overrides.yaml").read_text()
    assert list((run / ".hydra").glob("resume-*/overrides.yaml"))


def test_fresh_run_refuses_a_used_folder_and_resume_needs_a_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg("demo2d", "trainer.fast_dev_run=true", "eval.figures=false")
    (Path(cfg.paths.output_dir) / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunFolderError, match="already holds a run .*no checkpoint to resume"):
        train(cfg)
    cfg.resume = cfg.paths.output_dir
    with pytest.raises(RunFolderError, match="config.yaml not found"):
        train(cfg)
    cfg.resume = cfg.paths.output_dir = str(tmp_path / "nowhere")
    with pytest.raises(RunFolderError, match="no such folder"):
        train(cfg)
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "run" / "failed.json").exists()


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(make_cfg, monkeypatch):
    from uaseg.losses import UncertaintyAwareLoss

    cfg = make_cfg("demo2d", "trainer.max_epochs=3", "eval.figures=false")
    calls = {"n": 0}
    original = UncertaintyAwareLoss.forward

    def poisoned(self, logits, target, epoch=None, **kw):
        total, logs = original(self, logits, target, epoch, **kw)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] > 2 else total), logs  # epoch 0 is clean

    monkeypatch.setattr(UncertaintyAwareLoss, "forward", poisoned)
    out = Path(cfg.paths.output_dir)
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    message = str(err.value)  # where, on which cases, and what to go back to -- in one line
    assert "global step 2" in message and re.search(r"batch of cases case_\d{3}, case_\d{3};", message)
    assert message.endswith(f"last good checkpoint: {out}/checkpoints/last.ckpt (epoch 0); continue with resume={out}")
    assert "\n" not in message and json.loads((out / "failed.json").read_text())["error"].endswith(message)
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())

    calls["n"] = 10  # poisoned from the first step: there is nothing to go back to
    cfg.paths.output_dir = str(out.parent / "run2")
    with pytest.raises(NonFiniteLossError, match="global step 0 .*; no checkpoint was saved before this step"):
        train(cfg)


@pytest.mark.slow
def test_wandb_offline_run(tmp_path):
    run = tmp_path / "run"
    proc = run_cli([f"hydra.run.dir={run}", "logger=wandb", *TINY_CLI, "eval.figures=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))  # `wandb sync <that folder>` uploads it
    media = runs[0] / "files" / "media"
    assert list(media.rglob("*.png")), "figures were not logged"
    assert list(media.rglob("*.table.json")), "the risk-coverage table was not logged"


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(tmp_path):
    run = tmp_path / "run"
    proc = run_cli([f"hydra.run.dir={run}", "trainer=ddp", *TINY_CLI, "trainer.devices=2", "dataset.num_cases=15"], tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_cases"] == 3  # 3 test cases on 2 processes: the padded repeat is counted once


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}",
                    "loss.lambda=0,2", *TINY_CLI], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.glob("*/summary.json"))) == 2


@pytest.mark.parametrize("preset", ["experiment=paper_mmwhs", "experiment=paper_glas", "sweep=lambda", "sweep=margin",
                                    "sweep=sample_size", "sweep=folds", "sweep=optuna", "sample_size=100x2200"])
def test_presets_compose(tmp_path, preset):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[preset, "dataset.root=/data"], return_hydra_config=True)
    if preset.startswith("experiment=paper"):
        assert cfg.loss["lambda"] == 2.0 and cfg.loss.n_wrong == 300 and cfg.loss.n_correct == 6600
        assert cfg.loss.sampling == "subsample" and cfg.dataset.batch_size == 8
        assert cfg.model.optimizer.lr == pytest.approx(2e-4)
    if preset == "experiment=paper_mmwhs":
        assert list(cfg.loss.seg_loss.weight) == [1, 1, 1, 1, 1, 2, 1, 1]
        assert cfg.model.net.spatial_dims == 3 and list(cfg.model.net.filters)[0] == 32
    if preset.startswith("sweep="):
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params
    if preset == "sample_size=100x2200":
        assert (cfg.loss.n_wrong, cfg.loss.n_correct, cfg.loss.sampling) == (100, 2200, "subsample")


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm_gpu"], return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node == 1
    assert "submitit" in cfg.hydra.launcher._target_
