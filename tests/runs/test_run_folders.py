"""Run folders never lose or mix data: refused runs leave a folder byte-for-byte as it was, one run
at a time per folder, resume keeps the logs, checkpoints are written atomically with the usual
permissions, and an unreadable checkpoint is one line naming the file."""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from uaseg.errors import CheckpointError, RunFolderError
from uaseg.io import WriteError
from uaseg.train import train

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=1800)


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if "Error:" in ln]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_readme_resume_continues_a_crashed_run_and_refusals_change_nothing(make_cfg, monkeypatch, tmp_path):
    """The README's `python train.py resume=<run folder>`, as written, after a crash in epoch 1; then
    the README's old `hydra.run.dir=<run> ckpt_path=...` and a plain re-run into the folder are refused
    and leave every file as it was; a truncated last.ckpt makes resume one line naming the file."""
    from uaseg.losses import UncertaintyAwareLoss

    cfg = make_cfg("demo2d", "trainer.max_epochs=2", "eval.figures=false")
    run = Path(cfg.paths.output_dir)
    original = UncertaintyAwareLoss.forward

    def crash_in_epoch_1(self, logits, target, epoch=None, **kw):
        if epoch == 1:
            raise RuntimeError("simulated crash")
        return original(self, logits, target, epoch, **kw)

    monkeypatch.setattr(UncertaintyAwareLoss, "forward", crash_in_epoch_1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    monkeypatch.undo()
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # what Hydra records of the run
    before = rows(run / "csv" / "metrics.csv")
    assert before and (run / "checkpoints" / "last.ckpt").exists() and not (run / "summary.json").exists()
    config_hash = hashes(run)[".hydra/config.yaml"]

    readme = (ROOT / "README.md").read_text().splitlines()
    (example,) = [ln.split("#")[0].split() for ln in readme if ln.startswith("python train.py resume=")]
    assert example[:2] == ["python", "train.py"]
    old_umask = os.umask(0o022)
    try:  # the README's command as written, with this run's folder for outputs/train/runs/<date_time>
        resumed = cli(*[a.replace("outputs/train/runs/<date_time>", str(run)) for a in example[2:]])
    finally:
        os.umask(old_umask)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / "summary.json").exists() and not (run / "failed.json").exists()
    assert list(run.glob("failed-*.json"))  # the crash's record, kept under another name
    after = rows(run / "csv" / "metrics.csv")
    old_columns = [{k: r[k] for k in before[0]} for r in after[: len(before)]]  # the test/ columns are new
    assert old_columns == before and len(after) > len(before)  # every earlier row kept, new ones appended
    assert {r["epoch"] for r in after[len(before):]} >= {"1"}
    assert hashes(run)[".hydra/config.yaml"] == config_hash and list((run / ".hydra").glob("resume-*/config.yaml"))
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in run.rglob("*") if p.is_file()}
    assert set(modes.values()) == {"0o644"}, modes  # checkpoints included (Lightning's move gave 0600)

    finished = hashes(run)
    for args in ([f"hydra.run.dir={run}", f"ckpt_path={run}/checkpoints/last.ckpt"],  # the old README example
                 [f"hydra.run.dir={run}", "ckpt_path=last"], [f"hydra.run.dir={run}"]):
        proc = cli(*args)
        assert proc.returncode == 1
        line = one_error_line(proc)
        assert f"{run} already holds a run" in line and f"python train.py resume={run}" in line
        assert hashes(run) == finished

    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a copy cut off by a full disk
    cut = hashes(run)
    proc = cli(f"resume={run}")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert f"{last}" in line and "truncated or corrupted" in line and "PytorchStreamReader" not in line
    assert hashes(run) == cut  # refused before Hydra's resume record or log


@pytest.mark.slow
def test_two_runs_into_one_folder_one_proceeds_and_a_killed_run_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    args = [f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path}/cache", "dataset.num_cases=10", "dataset.image_size=48",
            "dataset.patch_size=[32,32]", "model=unet_small", "train=false", "test=false"]
    procs = [subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=1800), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], results
    loser = next(err for rc, _, err in results if rc == 1)
    assert "RunFolderError" in loser and ("is in use by another run" in loser or "already holds a run" in loser), loser
    assert (run / ".hydra" / "config.yaml").exists() and (run / "metrics.json").exists()

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from uaseg.runs.folder import claim_run_folder; "
                               "claim_run_folder(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(tmp_path / "r2")],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    proc = cli(f"hydra.run.dir={tmp_path / 'r2'}")
    assert proc.returncode == 1 and f"in use by another run (process {holder.pid})" in one_error_line(proc)
    assert sorted(p.name for p in (tmp_path / "r2").iterdir()) == [".uaseg.lock"]  # nothing else was written
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    from uaseg.runs.folder import claim_run_folder, release_run_folder

    assert claim_run_folder(tmp_path / "r2")  # the kernel dropped the killed holder's lock
    release_run_folder(tmp_path / "r2")


def test_checkpoint_and_summary_writes_are_atomic_and_name_the_file(tmp_path, monkeypatch):
    """A write the kernel refuses (here: a file-size limit, as a full disk would) leaves the previous
    file intact and no temporary behind, and the error names the file and the reason."""
    import resource

    from uaseg.runs.checkpoint_io import AtomicCheckpointIO
    from uaseg.io import write_json

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    good = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(WriteError, match=f"cannot write {path}: File too large"):
            io.save_checkpoint({"state_dict": {"w": torch.zeros(1 << 20)}}, path)  # 4 MB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert path.read_bytes() == good and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(path)["state_dict"]["w"].sum() == 3

    summary = tmp_path / "summary.json"
    write_json(summary, {"aurc": 1.0})
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(WriteError, match="summary.json: No space left on device"):
        write_json(summary, {"aurc": 2.0})
    assert summary.read_text() == '{\n "aurc": 1.0\n}' and len(list(tmp_path.iterdir())) == 2


def test_unreadable_ckpt_path_is_one_clear_error_before_any_work(make_cfg, tmp_path):
    bad = tmp_path / "copy.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:-200])  # cut off
    cfg = make_cfg("demo2d", f"ckpt_path={bad}")
    with pytest.raises(CheckpointError, match=f"ckpt_path: {bad}: not a readable checkpoint: the file is truncated"):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists()  # refused before any work: no folder to block the retry
    cfg.ckpt_path, cfg.train, cfg.test = None, False, False
    train(cfg)  # the retry into the same folder, with the value corrected
    out = Path(cfg.paths.output_dir)
    assert (out / "metrics.json").exists() and not (out / ".uaseg.lock").exists()  # accepted; the lock is removed


def test_a_folder_holding_only_hydra_is_a_run(make_cfg, tmp_path):
    """A job killed right after Hydra wrote ``.hydra/`` leaves nothing else: a new run there is refused
    (nothing written, not even the lock), resume finds no checkpoint, Hydra's own record of a multirun
    job is not mistaken for an earlier run, and the report lists the folder as an unfinished job."""
    from uaseg.report import collect
    from uaseg.runs.folder import claim_run_folder, release_run_folder

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    before = hashes(run)
    with pytest.raises(RunFolderError, match=r"already holds a run \(\.hydra\); nothing was written.*delete the folder"):
        train(make_cfg("demo2d"))
    assert hashes(run) == before and sorted(p.name for p in run.iterdir()) == [".hydra"]
    with pytest.raises(RunFolderError, match="no .*last.ckpt to resume from"):
        claim_run_folder(run, resume=run)
    assert claim_run_folder(run, hydra_files=True)  # a multirun job: Hydra wrote .hydra/ for this very job
    release_run_folder(run)
    runs, problems = collect(tmp_path)
    assert runs == [] and [(p.path, p.status) for p in problems] == [(run, "incomplete")]
    # a folder without .hydra/ (nor any other run marker) is free
    (tmp_path / "free").mkdir()
    (tmp_path / "free" / "notes.txt").write_text("mine")
    assert claim_run_folder(tmp_path / "free")
    release_run_folder(tmp_path / "free")


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    """``hydra.run.dir`` under a regular file (root can write anywhere else): one line, nothing made."""
    from uaseg.runs.folder import claim_run_folder, claim_sweep_folder

    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    for claim in (claim_run_folder, claim_sweep_folder):
        with pytest.raises(RunFolderError, match=f"{blocker}/run: cannot use this folder for a run .*Not a directory"):
            claim(blocker / "run")
    proc = cli(f"hydra.run.dir={blocker}/run")
    assert proc.returncode == 1 and one_error_line(proc).startswith(f"RunFolderError: {blocker}/run: cannot use")
    assert blocker.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_released_lock_file_is_removed_and_a_claimant_of_the_old_file_locks_the_new_one(tmp_path, monkeypatch):
    """The run that ends removes its lock file while holding it. A claimant that opened the old file
    just before (its flock then succeeds on a file no path names) locks the path's new file instead."""
    import fcntl

    from uaseg.runs import folder as runfolder

    run = tmp_path / "run"
    assert runfolder.claim_run_folder(run)
    runfolder.release_run_folder(run)
    assert sorted(p.name for p in run.iterdir()) == []  # a finished run keeps no lock file

    assert runfolder.claim_run_folder(run)
    other = runfolder._held.pop(runfolder._key(run))  # the first holder, as if another process
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):  # the first holder releases between the claimant's open and its flock
        if not calls:
            (run / runfolder.LOCK_NAME).unlink()
            os.close(other)
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    runfolder._lock(run)
    held = runfolder._held[runfolder._key(run)]
    assert len(calls) == 2 and os.path.samestat(os.fstat(held), os.stat(run / runfolder.LOCK_NAME))
    runfolder.release_run_folder(run)


def test_a_checkpoint_of_another_network_is_one_line_before_any_work(make_cfg, tmp_path):
    """``ckpt_path=`` of a wider network, or ``resume=<run> model.net.filters=[...]`` (here: the run's
    config asks for another width than its last.ckpt holds): one line naming the first parameter that
    does not fit, instead of Lightning's line per parameter; a new folder is not kept, a resumed one
    is left as it was."""
    import lightning as L

    from uaseg.train import build_module

    wide = build_module(make_cfg("demo2d"))
    ckpt = tmp_path / "wide.ckpt"
    torch.save({"state_dict": wide.state_dict(), "hyper_parameters": dict(wide.hparams), "epoch": 0, "global_step": 1,
                "pytorch-lightning_version": L.__version__}, ckpt)
    narrow = make_cfg("demo2d", "model.net.filters=[8,16,32,64]", f"ckpt_path={ckpt}")
    first = next(iter(wide.state_dict()))
    fits = (rf"{ckpt}: the checkpoint's weights do not fit the network the config builds \({re.escape(first)}: shape "
            rf"\[16, 3, 3, 3\] in the checkpoint, shape \[8, 3, 3, 3\] in the network, and \d+ more parameter\(s\)\); ")
    with pytest.raises(CheckpointError, match=f"^ckpt_path: {fits}set the model.. values of the run that wrote it$"):
        train(narrow)
    assert not Path(narrow.paths.output_dir).exists()

    run = tmp_path / "run2"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
    narrow.ckpt_path = None
    OmegaConf.save(narrow, run / ".hydra" / "config.yaml")
    before = hashes(run)
    resumed = make_cfg("demo2d", f"resume={run}")
    resumed.paths.output_dir = str(run)
    with pytest.raises(CheckpointError, match=f"^resume: {run}/checkpoints/last.ckpt: the checkpoint's weights do not "
                                              "fit the network .*; resume continues the run's own network"):
        train(resumed)
    assert hashes(run) == before and not (run / ".uaseg.lock").exists()
