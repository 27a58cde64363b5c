"""uaseg report: synthetic run folders (hand-written summary.json / curves.csv / .hydra), no training.

Every expected number is recomputed here from the summaries we wrote, not through the report code.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from uaseg.cli import main as cli_main
from uaseg.report import build_report, collect, compare
from uaseg.report.figures import quadrants

ROOT = Path(__file__).resolve().parents[2]
COVS = ("0.95", "0.90", "0.80", "0.70")


def make_summary(rng, *, fold, lam, dataset="demo2d", model="unet", seed=42, margin=0.1,
                 sampling="exact", n_wrong=300, n_correct=6600, tag=None, n_cases=6,
                 groups=None, shift=0.0):
    """A summary.json with random but plausible numbers; ``groups`` = list of group names."""
    def part(base):
        return {"aurc_dice": float(20 + rng.normal() - 5 * shift), "aurc": float(rng.random()),
                "eaurc": float(rng.random()), "augrc": float(rng.random()),
                "dice_full": {"mean": base, "std": 0.05, "p5": base - 0.1},
                "at_coverage": {c: {"target": float(c), "achieved_coverage": float(c),
                                    "threshold": 0.5, "dice_mean": base + 0.02 * i + shift,
                                    "dice_std": float(0.04 + 0.01 * rng.random()),
                                    "dice_p5": base - 0.1 + 0.02 * i + rng.normal() * 0.01}
                                for i, c in enumerate(COVS, 1)}}

    s = {"dataset": dataset, "model": model, "fold": fold, "seed": seed, "lambda": lam,
         "margin": margin, "scale": 1000.0, "sampling": sampling, "n_wrong": n_wrong,
         "n_correct": n_correct, "start_epoch": 0, "tag": tag, "n_cases": n_cases,
         **part(float(0.7 + 0.05 * rng.random())),
         "case_level": {"aurc": 30.0, "ci95": [25.0, 35.0], "aggregation": "mean"}}
    names = groups or ["test"]
    s["cases"] = [{"case_id": f"f{fold}_case{i}", "group": names[i % len(names)], "n_voxels": 100,
                   "at_coverage": {c: {"coverage": (float(c) + rng.normal() * 0.01),
                                       "dice": float(0.6 + 0.3 * rng.random() + shift)}
                                   for c in ("1.00",) + COVS}}
                  for i in range(n_cases)]
    if groups:
        s["groups"] = {g: part(float(0.6 + 0.1 * rng.random())) for g in groups}
    return s


def write_run(folder: Path, summary: dict, overrides=(), curve=True) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "config.yaml").write_text("seed: 42\n")
    (folder / "summary.json").write_text(json.dumps(summary))
    if curve:
        cov = np.linspace(1, 0.5, 51)
        risk = 1 - (summary["dice_full"]["mean"] + 0.3 * (1 - cov))
        (folder / "curves.csv").write_text("coverage,risk,threshold\n" + "".join(
            f"{c},{r},0.5\n" for c, r in zip(cov, risk)))
    return folder


def sweep(root: Path, folds, lambdas, seed=0, **kw) -> dict:
    """One run per (fold, λ) in Hydra's ``<num>_<overrides>`` layout; returns the summaries."""
    rng = np.random.default_rng(seed)
    out, num = {}, 0
    for f in folds:
        for lam in lambdas:
            s = make_summary(rng, fold=f, lam=lam, shift=0.02 if lam else 0.0, **kw)
            ov = [f"dataset.fold={f}", f"loss.lambda={lam:g}"]
            write_run(root / f"{num}_{','.join(ov)}", s, ov)
            out[(f, lam)] = s
            num += 1
    return out


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def row(rows, metric, coverage="", part="all", comparison="1"):
    hits = [r for r in rows if r["metric"] == metric and r["coverage"] == coverage
            and r["part"] == part and r["comparison"] == comparison]
    assert len(hits) == 1, (metric, coverage, part, comparison, len(hits))
    return hits[0]


# ------------------------------------------------------------------ table values and tests
def test_table_values_are_fold_means_with_relative_change_and_wilcoxon(tmp_path):
    runs = sweep(tmp_path, range(5), (0.0, 2.0))
    rep = build_report(tmp_path, make_figures=False)
    rows = read_csv(rep.csv_path)
    base = [runs[(f, 0.0)] for f in range(5)]
    ours = [runs[(f, 2.0)] for f in range(5)]

    r = row(rows, "aurc_dice")
    b, o = [s["aurc_dice"] for s in base], [s["aurc_dice"] for s in ours]
    assert float(r["base_mean"]) == pytest.approx(np.mean(b))
    assert float(r["base_std"]) == pytest.approx(np.std(b, ddof=1))
    assert float(r["ours_mean"]) == pytest.approx(np.mean(o))
    assert int(r["base_n"]) == int(r["ours_n"]) == 5
    assert float(r["rel_change_pct"]) == pytest.approx(100 * (np.mean(o) - np.mean(b)) / np.mean(b))
    assert r["test"] == "wilcoxon"
    assert float(r["p_value"]) == pytest.approx(sps.wilcoxon(o, b).pvalue)

    for cov in COVS:
        r = row(rows, "dice_mean", cov)
        expect = 100 * np.mean([s["at_coverage"][cov]["dice_mean"] for s in ours])
        assert float(r["ours_mean"]) == pytest.approx(expect)
        r5 = row(rows, "dice_p5", cov)
        expect5 = 100 * np.mean([s["at_coverage"][cov]["dice_p5"] for s in base])
        assert float(r5["base_mean"]) == pytest.approx(expect5)
        # case level: pairs (fold, case_id), Wilcoxon on per-case Dice
        cb = [c["at_coverage"][cov]["dice"] for s in base for c in s["cases"]]
        co = [c["at_coverage"][cov]["dice"] for s in ours for c in s["cases"]]
        assert int(r["n_case_pairs"]) == 30
        assert float(r["p_value_cases"]) == pytest.approx(sps.wilcoxon(co, cb).pvalue)
    full = row(rows, "dice_mean", "1.00")
    assert float(full["base_mean"]) == pytest.approx(100 * np.mean([s["dice_full"]["mean"] for s in base]))

    md = rep.md_path.read_text()
    assert "mean over folds of the per-fold metric" in md
    assert f"{np.mean(b):.3f}" in md and f"{np.mean(o):.3f}" in md


def test_paired_t_test_below_five_folds(tmp_path):
    runs = sweep(tmp_path, range(3), (0.0, 2.0))
    r = row(read_csv(build_report(tmp_path, make_figures=False).csv_path), "aurc_dice")
    b = [runs[(f, 0.0)]["aurc_dice"] for f in range(3)]
    o = [runs[(f, 2.0)]["aurc_dice"] for f in range(3)]
    assert r["test"] == "paired t" and r["n_pairs"] == "3"
    assert float(r["p_value"]) == pytest.approx(sps.ttest_rel(o, b).pvalue)


def test_pairs_only_folds_present_in_both_arms(tmp_path):
    runs = sweep(tmp_path / "a", range(4), (0.0,))
    runs.update(sweep(tmp_path / "b", (1, 2, 3, 4), (2.0,), seed=1))
    r = row(read_csv(build_report(tmp_path, make_figures=False).csv_path), "aurc_dice")
    assert r["base_n"] == "4" and r["ours_n"] == "4" and r["n_pairs"] == "3"
    b = [runs[(f, 0.0)]["aurc_dice"] for f in (1, 2, 3)]
    o = [runs[(f, 2.0)]["aurc_dice"] for f in (1, 2, 3)]
    assert float(r["p_value"]) == pytest.approx(sps.ttest_rel(o, b).pvalue)


# ------------------------------------------------------------------ grouping rule
def test_baseline_matched_to_every_ours_arm_of_its_dataset_and_model(tmp_path):
    rng = np.random.default_rng(3)
    bases = {}
    for f in range(2):
        # a baseline swept over margin/sampling: loss keys are irrelevant, the fold is averaged
        for k, (m, samp) in enumerate(((0.1, "exact"), (0.3, "subsample"))):
            s = make_summary(rng, fold=f, lam=0.0, margin=m, sampling=samp)
            write_run(tmp_path / f"base_{f}_{k}", s)
            bases.setdefault(f, []).append(s["aurc_dice"])
        write_run(tmp_path / f"ours1_{f}", make_summary(rng, fold=f, lam=1.0, margin=0.3))
        write_run(tmp_path / f"ours2_{f}", make_summary(rng, fold=f, lam=2.0, margin=0.1))
        # another dataset: its own baseline only; another model: ours only
        write_run(tmp_path / f"glas_base_{f}", make_summary(rng, fold=f, lam=0.0, dataset="glas"))
        write_run(tmp_path / f"other_{f}", make_summary(rng, fold=f, lam=2.0, model="unet_small"))
    runs, _ = collect(tmp_path)
    comps = compare(runs)
    got = {(dict(c.context)["dataset"], dict(c.context)["model"],
            dict(c.loss).get("lambda")): c for c in comps}
    assert set(got) == {("demo2d", "unet", 1.0), ("demo2d", "unet", 2.0), ("glas", "unet", None),
                        ("demo2d", "unet_small", 2.0)}
    assert got[("demo2d", "unet", 1.0)].base is got[("demo2d", "unet", 2.0)].base
    assert len(got[("demo2d", "unet", 1.0)].base.runs) == 4
    assert got[("demo2d", "unet_small", 2.0)].base is None
    assert got[("glas", "unet", None)].ours is None

    rep = build_report(tmp_path, make_figures=False)
    rows = read_csv(rep.csv_path)
    i = str(comps.index(got[("demo2d", "unet", 2.0)]) + 1)
    r = row(rows, "aurc_dice", comparison=i)
    per_fold = [np.mean(bases[f]) for f in range(2)]  # duplicates of a fold averaged first
    assert float(r["base_mean"]) == pytest.approx(np.mean(per_fold))
    assert r["base_n"] == "2"
    assert "**none found**" in rep.md_path.read_text()


def test_result_changing_overrides_split_contexts(tmp_path):
    rng = np.random.default_rng(4)
    write_run(tmp_path / "b10", make_summary(rng, fold=0, lam=0.0), ["trainer.max_epochs=10"])
    write_run(tmp_path / "o10", make_summary(rng, fold=0, lam=2.0),
              ["trainer.max_epochs=10", "loss.lambda=2", "trainer.devices=2"])
    write_run(tmp_path / "o1", make_summary(rng, fold=0, lam=2.0), ["trainer.max_epochs=1"])
    comps = compare(collect(tmp_path)[0])
    matched = [c for c in comps if c.base and c.ours]
    assert len(comps) == 2 and len(matched) == 1
    assert [r.path.name for r in matched[0].ours.runs] == ["o10"]


def test_sampling_exact_ignores_sample_size(tmp_path):
    rng = np.random.default_rng(5)
    write_run(tmp_path / "a", make_summary(rng, fold=0, lam=2.0, n_wrong=100))
    write_run(tmp_path / "b", make_summary(rng, fold=1, lam=2.0, n_wrong=300))
    write_run(tmp_path / "c", make_summary(rng, fold=0, lam=2.0, sampling="subsample", n_wrong=100))
    assert sorted(len(c.ours.runs) for c in compare(collect(tmp_path)[0])) == [1, 2]


# ------------------------------------------------------------------ per-group tables
def test_per_group_parts_and_their_average(tmp_path):
    runs = sweep(tmp_path, range(2), (0.0, 2.0), groups=["testA", "testB"])
    rep = build_report(tmp_path, make_figures=False)
    rows = read_csv(rep.csv_path)
    assert {r["part"] for r in rows} == {"all", "testA", "testB", "average"}
    for g in ("testA", "testB"):
        r = row(rows, "aurc_dice", part=g)
        assert float(r["ours_mean"]) == pytest.approx(
            np.mean([runs[(f, 2.0)]["groups"][g]["aurc_dice"] for f in range(2)]))
        rc = row(rows, "dice_mean", "0.90", part=g)
        assert rc["n_case_pairs"] == "6"  # 3 of the 6 cases per fold are in each part
    avg = row(rows, "dice_mean", "0.80", part="average")
    expect = np.mean([100 * np.mean([runs[(f, 0.0)]["groups"][g]["at_coverage"]["0.80"]["dice_mean"]
                                     for g in ("testA", "testB")]) for f in range(2)])
    assert float(avg["base_mean"]) == pytest.approx(expect)
    md = rep.md_path.read_text()
    assert "· testA" in md and "· testB" in md and "average of parts" in md


# ------------------------------------------------------------------ missing / failed jobs
MULTIRUN_YAML = """\
hydra:
  run:
    dir: outputs/${{task_name}}/runs/x
  sweeper:
    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper
    max_batch_size: null
    params: {params}
  overrides:
    hydra:
    - hydra.mode=MULTIRUN
    task:
{task}
task_name: train
"""


def write_multirun_yaml(root: Path, task, params="null"):
    (root / "multirun.yaml").write_text(MULTIRUN_YAML.format(
        params=params, task="".join(f"    - {t}\n" for t in task)))


def test_missing_failed_incomplete_jobs_and_grid(tmp_path):
    rng = np.random.default_rng(6)
    write_multirun_yaml(tmp_path, ["dataset.fold=0,1,2", "loss.lambda=0,2", "eval.figures=false"])
    jobs = [(f, lam) for f in range(3) for lam in (0, 2)]
    for num, (f, lam) in enumerate(jobs):
        ov = [f"dataset.fold={f}", f"loss.lambda={lam}", "eval.figures=False"]
        d = tmp_path / f"{num}_dataset.fold={f},loss.lambda={lam}"
        if num < 3:
            write_run(d, make_summary(rng, fold=f, lam=float(lam)), ov)
        elif num == 3:  # failed, with the integrator's failed.json
            write_run(d, {}, ov, curve=False)
            (d / "summary.json").unlink()
            (d / "failed.json").write_text(json.dumps({"error": "RuntimeError: CUDA out of memory",
                                                       "traceback": "..."}))
        elif num == 4:  # killed: .hydra only
            write_run(d, {}, ov, curve=False)
            (d / "summary.json").unlink()
        # num == 5 never started
    rep = build_report(tmp_path, make_figures=False)
    md = rep.md_path.read_text()
    assert "6 jobs, 3 with a summary, 3 without" in md
    assert "`dataset.fold=1 loss.lambda=2` | failed" in md and "CUDA out of memory" in md
    assert "`dataset.fold=2 loss.lambda=0` | incomplete" in md
    assert "`dataset.fold=2 loss.lambda=2` | not started" in md
    assert "| `3_dataset.fold=1,loss.lambda=2` | failed | RuntimeError: CUDA out of memory |" in md


def test_error_in_log_counts_as_failed(tmp_path):
    d = tmp_path / "0_x"
    (d / ".hydra").mkdir(parents=True)
    (d / "train.log").write_text("[2026][uaseg][INFO] - start\n[2026][uaseg][ERROR] - boom\n")
    runs, problems = collect(tmp_path)
    assert not runs and problems[0].status == "failed" and "boom" in problems[0].error


def test_grid_includes_sweeper_params(tmp_path):
    from uaseg.report.sweep import expand

    write_multirun_yaml(tmp_path, ["dataset.fold=0,1"], params="{loss.margin: '0.1,0.2'}")
    grid = expand(tmp_path / "multirun.yaml", [])
    assert sorted(g.label() for g in grid) == [
        "loss.margin=0.1 dataset.fold=0", "loss.margin=0.1 dataset.fold=1",
        "loss.margin=0.2 dataset.fold=0", "loss.margin=0.2 dataset.fold=1"]
    assert {g.status for g in grid} == {"not started"}


# ------------------------------------------------------------------ figures
def test_figures_written_including_sweeps(tmp_path):
    rng = np.random.default_rng(7)
    for f in range(2):
        write_run(tmp_path / f"b{f}", make_summary(rng, fold=f, lam=0.0))
        for lam in (1.0, 2.0):
            write_run(tmp_path / f"l{lam}_{f}", make_summary(rng, fold=f, lam=lam))
        for nw, nc in ((100, 2200), (300, 6600)):
            write_run(tmp_path / f"s{nw}_{f}", make_summary(
                rng, fold=f, lam=2.0, sampling="subsample", n_wrong=nw, n_correct=nc))
    rep = build_report(tmp_path)
    names = sorted(p.name for p in rep.figures)
    assert "fig2_01.png" in names and "fig3_01.png" in names
    assert any(n.endswith("_lambda.png") for n in names)
    assert any(n.endswith("_sample_size.png") for n in names)
    for p in rep.figures:
        assert p.parent == tmp_path / "figures" and p.stat().st_size > 1000
        assert f"({p.relative_to(tmp_path)})" in rep.md_path.read_text()


def test_quadrant_percentages():
    q = quadrants([1, -1, -1, 1, 0, 2], [1, 1, -1, -1, 1, 3])
    assert q == pytest.approx({"I": 200 / 6, "II": 100 / 6, "III": 100 / 6, "IV": 100 / 6})


# ------------------------------------------------------------------ outputs and CLI
def test_never_overwrites_unless_forced(tmp_path):
    sweep(tmp_path, range(2), (0.0, 2.0))
    first = build_report(tmp_path, make_figures=False)
    (tmp_path / "report.md").write_text("hand edits")
    second = build_report(tmp_path)
    assert second.md_path.name == "report-2.md" and second.csv_path.name == "report-2.csv"
    assert all(p.parent.name == "figures-2" for p in second.figures)
    assert (tmp_path / "report.md").read_text() == "hand edits"
    assert build_report(tmp_path, make_figures=False).md_path.name == "report-3.md"
    forced = build_report(tmp_path, force=True, make_figures=False)
    assert forced.md_path == first.md_path and forced.md_path.read_text() != "hand edits"


def test_out_dir(tmp_path):
    sweep(tmp_path / "runs", range(2), (0.0, 2.0))
    assert cli_main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"),
                     "--no-figures"]) == 0
    assert (tmp_path / "rep" / "report.md").exists() and not (tmp_path / "runs" / "report.md").exists()


def test_cli_exit_codes(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 1          # nothing found: non-zero
    assert not (tmp_path / "report.md").exists()
    assert cli_main(["report", str(tmp_path / "absent")]) == 1
    d = tmp_path / "only_failed" / "0_x"
    (d / ".hydra").mkdir(parents=True)
    assert cli_main(["report", str(tmp_path / "only_failed")]) == 1
    sweep(tmp_path / "ok", range(2), (0.0, 2.0))
    capsys.readouterr()
    assert cli_main(["report", str(tmp_path / "ok"), "--no-figures"]) == 0  # partial is fine
    assert "Table 1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli_main([])
    assert e.value.code == 2


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "uaseg.cli", "report"],
                                 [sys.executable, str(ROOT / "scripts" / "report.py")]])
def test_entry_points_subprocess(tmp_path, cmd):
    sweep(tmp_path, range(2), (0.0, 2.0))
    env = {**os.environ, "MPLBACKEND": "Agg"}
    p = subprocess.run(cmd + [str(tmp_path), "--no-figures"], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "Report: " in p.stdout and "report.md" in p.stdout  # a short summary, the table is in report.md
    p = subprocess.run(cmd + [str(tmp_path / "empty")], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "no summary.json" in p.stderr


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_end_to_end_tiny_multirun(tmp_path):
    """2 folds × λ ∈ {0, 2} through train.py -m, then the report (about 60 s on 2 CPU cores)."""
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "dataset.fold=0,1", "loss.lambda=0,2",
           f"hydra.sweep.dir={sweep_dir}", f"paths.cache_dir={tmp_path}/cache",
           # job folders by number only: <num>_<all overrides> can pass the 255-byte name limit;
           # the report matches jobs by .hydra/overrides.yaml, never by folder name
           "hydra.sweep.subdir=${hydra.job.num}",
           "dataset.num_cases=10", "dataset.image_size=48", "dataset.patch_size=[32,32]",
           "model=unet_small", "dataset.batch_size=2", "dataset.samples_per_image=1",
           "trainer.max_epochs=1", "trainer.limit_train_batches=2", "eval.bootstrap=20",
           "callbacks.progress_bar=null", "eval.figures=false"]
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "offline"}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    assert cli_main(["report", str(sweep_dir)]) == 0
    rows = read_csv(sweep_dir / "report.csv")
    r = row(rows, "aurc_dice")
    assert r["base_n"] == "2" and r["ours_n"] == "2" and r["test"] == "paired t"
    assert not math.isnan(float(r["rel_change_pct"]))
    md = (sweep_dir / "report.md").read_text()
    assert "4 jobs, 4 with a summary, 0 without" in md
    assert (sweep_dir / "figures" / "fig2_01.png").exists()
    assert (sweep_dir / "figures" / "fig3_01.png").exists()


def test_multiline_error_of_a_failed_job_stays_in_one_table_row(tmp_path, capsys):
    """`uaseg report` on a multirun whose failed job's error spans several lines (and holds a '|')."""
    rng = np.random.default_rng(0)
    write_run(tmp_path / "0_lambda=0", make_summary(rng, fold=0, lam=0.0))
    write_run(tmp_path / "1_lambda=2", make_summary(rng, fold=0, lam=2.0))
    failed = tmp_path / "2_lambda=4"
    (failed / ".hydra").mkdir(parents=True)
    error = "DatasetError: image a.nii and its label b.nii have different affines:\n[[1 0]\n [0 1]]\nvs\n[[2 0] | x"
    (failed / "failed.json").write_text(json.dumps({"error": error, "traceback": "Traceback ...\n  line\n"}))
    assert cli_main(["report", str(tmp_path), "--no-figures"]) == 0
    md = (tmp_path / "report.md").read_text().splitlines()
    rows = [ln for ln in md if "2_lambda=4" in ln]
    assert rows == ["| `2_lambda=4` | failed | DatasetError: image a.nii and its label b.nii have different affines: ⏎ "
                    "[[1 0] ⏎ [0 1]] ⏎ vs ⏎ [[2 0] \\| x |"]
    table = md[md.index("## Jobs without a summary") + 2:]
    assert all(len(re.findall(r"(?<!\\)\|", ln)) == 4 for ln in table[:table.index("")])  # 3 columns each


def test_fig3_title_names_the_dataset_and_setting(tmp_path, monkeypatch):
    """A figure read on its own says what it shows: dataset (context) and the loss setting."""
    import uaseg.report.figures as figures

    titles = {}
    real = figures.save_figure

    def capture(path, fig, *a, **kw):
        titles[Path(path).name] = " ".join([ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""])
        return real(path, fig, *a, **kw)

    monkeypatch.setattr(figures, "save_figure", capture)
    rng = np.random.default_rng(3)
    for f in range(2):
        write_run(tmp_path / f"b{f}", make_summary(rng, fold=f, lam=0.0, dataset="demo3d"))
        write_run(tmp_path / f"o{f}", make_summary(rng, fold=f, lam=2.0, dataset="demo3d"))
    build_report(tmp_path)
    assert "dataset=demo3d" in titles["fig3_01.png"] and "λ=2" in titles["fig3_01.png"], titles
    assert "dataset=demo3d" in titles["fig2_01.png"], titles
