"""Every script under ``scripts/`` runs end to end at tiny sizes, so none can rot unnoticed (the
benchmark script once crashed on every run after ``SelectiveResult`` stopped being a dict).

``SMOKE`` holds one tiny command per script; a script without an entry fails
:func:`test_every_script_has_a_smoke_run`. Each run is a subprocess, as a user starts it; the outputs
are checked only for the lines that show the script did its work (benchmarks print no asserted times).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datafiles import make_glas

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _env(tmp_path: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)  # `python` and `uaseg` of this environment, for the shell script
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "WANDB_MODE": "offline",
            "WANDB_SILENT": "true", "MPLBACKEND": "Agg", "UASEG_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _risk_arrays(folder: Path) -> Path:
    """Two run folders of saved test arrays (``eval.save_arrays=true`` layout), 12 small cases each."""
    rng = np.random.default_rng(0)
    for run in ("run_a", "run_b"):
        pred_dir = folder / run / "predictions"
        pred_dir.mkdir(parents=True)
        for i in range(12):
            y = rng.integers(0, 2, (12, 12))
            wrong = rng.random(y.shape) < 0.1
            p = np.where(wrong, 1 - y, y)
            u = (rng.random(y.shape) * 0.5 + 0.4 * wrong).astype(np.float32)
            np.savez(pred_dir / f"case{i}.npz", uncertainty=u, prediction=p.astype(np.uint8), label=y.astype(np.uint8))
    return folder


def _report_runs(folder: Path) -> Path:
    """Two run folders (λ = 0 and 2) with real summaries written by the selective evaluation."""
    from uaseg.selective import SelectiveAccumulator, write_outputs

    rng = np.random.default_rng(1)
    for num, lam in enumerate((0, 2)):
        acc = SelectiveAccumulator(num_classes=2, coverages=(0.9,), bootstrap=20)
        for i in range(4):
            y = rng.integers(0, 2, (16, 16))
            p = np.where(rng.random(y.shape) < 0.1, 1 - y, y)
            acc.add_case(rng.random(y.shape).astype(np.float32), p, y, case_id=f"c{i}")
        run = folder / f"{num}_loss.lambda={lam}"
        write_outputs(acc.compute(), run, identity={"dataset": "demo2d", "lambda": lam, "fold": 0, "seed": 42})
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(f"- loss.lambda={lam}\n")
    return folder


def _paired_runs(folder: Path, dice_loss: float = 0.0) -> Path:
    """A study of arms ``base`` and ``half`` (AURC halved in every run, Dice lower by ``dice_loss``
    points), 3 seeds x 2 folds, as summary.json files alone."""
    rng = np.random.default_rng(2)
    for seed in (1, 2, 3):
        for fold in (0, 1):
            aurc, dice = float(rng.uniform(1, 8)), float(rng.uniform(0.5, 0.6))
            for arm, a, d in (("base", aurc, dice), ("half", aurc / 2, dice - dice_loss / 100)):
                run = folder / "demo3d_mri" / arm / f"{seed}{fold}_job"
                run.mkdir(parents=True)
                (run / "summary.json").write_text(json.dumps({
                    "seed": seed, "fold": fold, "dice_full": {"mean": d},
                    "scores": {"max_softmax": {"aurc_dice": a}, "margin": {"aurc_dice": 0.9 * a}}}))
    return folder


TINY_TRAIN = ["dataset.num_cases=10", "dataset.image_size=48", "dataset.patch_size=[32,32]", "model=unet_small",
              "dataset.batch_size=2", "dataset.samples_per_image=1", "trainer.max_epochs=1",
              "trainer.limit_train_batches=2", "eval.bootstrap=20", "eval.figures=false", "trainer.accelerator=cpu"]

#: script -> (function of tmp_path giving the argument list, text the output must contain)
SMOKE = {
    "bench_selective.py": (lambda t: ["--sizes", "2e3", "--cases", "2", "--naive-points", "5"], "AURC% exact / quant"),
    "bench_loss.py": (lambda t: ["--batch", "1", "--size", "16", "--repeats", "1", "--error-rate", "0.5"], "ranking term computed over all"),
    "bench_resample.py": (lambda t: ["--shape", "24", "24", "6", "--repeats", "1"], "MONAI Spacingd "),
    "bench_train.py": (lambda t: ["--size", "16", "--steps", "1", "--warmup", "1", "--rounds", "1", "--prewarm", "0",
                                  "--model", "unet_small", "--cache-dir", str(t / "cache"),
                                  "--override", "dataset.num_cases=10", "--override", "dataset.image_size=32"],
                       "ratio to bare"),
    "bench_train_losses.py": (lambda t: ["--size", "16", "--steps", "1", "--warmup", "1", "--head-repeats", "1",
                                         "--model", "unet_small", "--cache-dir", str(t / "cache"),
                                         "--override", "dataset.num_cases=10", "--override", "dataset.image_size=32"],
                              "loss multiclass median_step "),
    "check_dataset.py": (lambda t: ["--dataset", "glas", "--root", str(make_glas(t / "glas", small=None))],
                         "OK: no problems found"),
    "check_risk_control.py": (lambda t: [str(_risk_arrays(t / "arrays")), "--splits", "20", "--alpha", "0.1"],
                              "## run_a: 12 cases"),
    "paired_study.py": (lambda t: [str(_paired_runs(t / "study")), "--scores", "max_softmax,margin"],
                        "| half | 6 |"),
    "report.py": (lambda t: [str(_report_runs(t / "multirun")), "--no-figures"], "Report: "),
    "one_pass_study.sh": (lambda t: ["demo2d", str(t / "study"), *TINY_TRAIN], "Report: "),
    "multiclass_study.sh": (lambda t: [str(t / "mc"), "dataset.num_cases=10", "dataset.image_size=32",
                                       "dataset.patch_size=[16,16,16]", "trainer.max_epochs=1",
                                       "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                                       "eval.bootstrap=20", "eval.figures=false", "trainer.accelerator=cpu"], "Report: "),
}


def test_every_script_has_a_smoke_run():
    scripts = sorted(p.name for p in SCRIPTS.iterdir() if p.suffix in (".py", ".sh"))
    assert sorted(SMOKE) == scripts, "give every script under scripts/ a tiny run in SMOKE"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SMOKE if not n.endswith(".sh")])
def test_script_runs_at_tiny_size(name, tmp_path):
    args, expected = SMOKE[name]
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args(tmp_path)], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert expected in out, out[-4000:]


@pytest.mark.slow
def test_one_pass_study_runs_at_tiny_size(tmp_path):
    """The study script with one arm and two seeds of a 2-step training: multirun, ensemble, report."""
    args, expected = SMOKE["one_pass_study.sh"]
    env = {**_env(tmp_path), "ARMS": "base", "SEEDS": "1,2"}
    proc = subprocess.run(["bash", str(SCRIPTS / "one_pass_study.sh"), *args(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert expected in out and (tmp_path / "study" / "report.md").is_file(), out[-4000:]
    assert (tmp_path / "study" / "base" / ".done").is_file()
    ensembles = list((tmp_path / "study" / "base" / "ensembles").glob("*/summary.json"))
    assert len(ensembles) == 2 and json.loads(ensembles[0].read_text())["method"] == "ensemble"


@pytest.mark.slow
def test_multiclass_study_runs_at_tiny_size(tmp_path):
    """The multi-class study with two arms of one seed on demo3d, then the report with learning curves."""
    args, expected = SMOKE["multiclass_study.sh"]
    env = {**_env(tmp_path), "DATASETS": "demo3d", "ARMS": "base steer_balance", "SEEDS": "1", "JOBS": "1"}
    proc = subprocess.run(["bash", str(SCRIPTS / "multiclass_study.sh"), *args(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    study = tmp_path / "mc"
    assert expected in out and (study / "report.md").is_file(), out[-4000:]
    assert {p.parent.name for p in study.glob("demo3d/*/.done")} == {"base", "steer_balance"}
    config = next((study / "demo3d" / "steer_balance").glob("*/.hydra/config.yaml")).read_text()
    assert "steer: true" in config and "balance: true\n" in config and "early_stopping" in config
    # RETEST: each run's best checkpoint tested again on fresh cases, then the paired table
    proc = subprocess.run(["bash", str(SCRIPTS / "multiclass_study.sh"), *args(tmp_path)], cwd=ROOT,
                          env={**env, "RETEST": "3", "RETEST_CASES": "12"}, capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "| steer_balance | 1 |" in out, out[-4000:]
    retested = tmp_path / "mc_retest3" / "demo3d" / "steer_balance" / "s1f0"
    summary = json.loads((retested / "summary.json").read_text())
    config = (retested / ".hydra" / "config.yaml").read_text()
    assert "data_seed: 3" in config and "num_cases: 12" in config and "train: false" in config
    assert summary["seed"] == 1 and summary["fold"] == 0 and summary["steer"] is True
    # a checkpoint name read from a run's summary.json is data: one Hydra would resolve is refused
    run = next((study / "demo3d" / "base").glob("*/summary.json")).parent
    stored = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**stored, "checkpoint": "${oc.env:HOME}.ckpt"}))
    (run / "checkpoints" / "${oc.env:HOME}.ckpt").write_bytes(b"")
    proc = subprocess.run(["bash", str(SCRIPTS / "multiclass_study.sh"), *args(tmp_path)], cwd=ROOT,
                          env={**env, "RETEST": "3", "RETEST_CASES": "12"}, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 1 and "is not retested" in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]


def _paired(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / "paired_study.py"), *args], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=1800)


@pytest.mark.parametrize("dice_loss,meets", [(0.0, "yes"), (2.0, "no")])
def test_paired_study_pairs_runs_by_seed_and_fold(tmp_path, dice_loss, meets):
    """AURC halved in each of 6 runs: -50 % in the mean and paired, 6/6 better, exact one-sided Wilcoxon
    p = 1/64; the target is met only while Dice stays within 1 point."""
    proc = _paired(tmp_path, str(_paired_runs(tmp_path / "study", dice_loss)), "--scores", "max_softmax,margin")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| half |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4:10] == ["-50.0 %", "-50.0 ± 0.0 %", "6/6", f"{1 / 64:.3f}", f"{0 - dice_loss:+.1f} ± 0.0", meets]
    # the baseline's margin score (0.9 x its max softmax AURC in every run) against its max softmax
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| margin |"))
    assert [c.strip() for c in row.strip("|").split("|")][2:] == ["-10.0 %", "-10.0 ± 0.0 %", "6/6", f"{1 / 64:.3f}"]


def test_paired_study_refuses_a_run_twice(tmp_path):
    study = _paired_runs(tmp_path / "a")
    again = tmp_path / "b" / "half" / "x"
    again.mkdir(parents=True)
    (again / "summary.json").write_text((study / "demo3d_mri" / "half" / "10_job" / "summary.json").read_text())
    proc = _paired(tmp_path, str(study), str(tmp_path / "b"))
    assert proc.returncode == 1 and "seed 1 fold 0 of arm half twice" in proc.stderr, proc.stderr
