"""uaseg report: learning curves per arm from hand-written csv/metrics.csv, no training.

Two arms (λ = 0 and λ = 2) × two seeds. Every expected number is computed here by hand from the
rows written below: per run, the mean over an epoch's logged steps; per arm, mean and sample sd
(ddof = 1) over the runs that have the epoch, n = those runs.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_report import make_summary, write_run

from uaseg.report import build_report, collect, compare
from uaseg.report import curves as lc

HEADER = "epoch,lr-Adam,step,train/loss,train/rank,train/seg,train/grad_ratio,val/aurc_dice,val/dice\n"

# λ = 0, seed 1: two epochs; the validation row shares its step with the last training row
BASE_S1 = HEADER + """\
,0.001,0,,,,,,
0,,4,1.0,0.0,1.0,,,
0,,9,0.8,0.0,0.8,,,
0,,9,,,,,20.0,0.50
,0.001,10,,,,,,
1,,14,0.6,0.0,0.6,,,
1,,19,0.4,0.0,0.4,,,
1,,19,,,,,10.0,0.70
"""
# λ = 0, seed 2: three epochs (epoch 2 has n = 1)
BASE_S2 = HEADER + """\
0,,4,1.2,0.0,1.2,,,
0,,9,1.0,0.0,1.0,,,
0,,9,,,,,30.0,0.40
1,,14,0.7,0.0,0.7,,,
1,,19,0.5,0.0,0.5,,,
1,,19,,,,,14.0,0.60
2,,24,0.3,0.0,0.3,,,
2,,29,0.3,0.0,0.3,,,
2,,29,,,,,8.0,0.80
"""
# λ = 2, seed 1: killed in epoch 1 after step 14, resumed from the end of epoch 0 (step goes back
# to 10); the killed attempt's epoch-1 row (9.0, 0.05, 900) must not count
OURS_S1 = HEADER + """\
,0.001,0,,,,,,
0,,4,41.0,0.020,1.0,300.0,,
0,,9,20.8,0.010,0.8,,,
0,,9,,,,,15.0,0.45
,0.001,10,,,,,,
1,,14,109.0,0.050,9.0,900.0,,
,0.001,10,,,,,,
1,,14,20.6,0.010,0.6,100.0,,
1,,19,10.4,0.005,0.4,,,
1,,19,,,,,8.0,0.65
"""
# λ = 2, seed 2: grad ratio logged at the first step of each epoch only
OURS_S2 = HEADER + """\
0,,4,61.4,0.030,1.4,500.0,,
0,,9,41.0,0.020,1.0,,,
0,,9,,,,,25.0,0.35
1,,14,20.8,0.010,0.8,300.0,,
1,,19,20.6,0.010,0.6,,,
1,,19,,,,,12.0,0.55
"""
LOSS_CFG = "seed: {seed}\nloss:\n  lambda: {lam}\n  scale: 1000.0\n  margin: 0.1\n"


def make_multirun(root, grad_ratio=True):
    """2 arms × 2 seeds with metrics.csv, a third λ = 0 seed without one, and a failed job."""
    rng = np.random.default_rng(0)
    runs = [(0.0, 1, BASE_S1, True), (0.0, 2, BASE_S2, True), (2.0, 1, OURS_S1, True),
            (2.0, 2, OURS_S2, False), (0.0, 3, None, True)]
    for num, (lam, seed, metrics, loss_in_config) in enumerate(runs):
        ov = [f"loss.lambda={lam:g}", f"seed={seed}"]
        run = write_run(root / f"{num}_{','.join(ov)}", make_summary(rng, fold=0, lam=lam, seed=seed), ov)
        if loss_in_config:  # else λ × scale come from summary.json (λ = 2, scale = 1000)
            (run / ".hydra" / "config.yaml").write_text(LOSS_CFG.format(seed=seed, lam=lam))
        if metrics is not None:
            if not grad_ratio:
                metrics = "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != 6)
                                    for line in metrics.splitlines()) + "\n"
            (run / "csv").mkdir()
            (run / "csv" / "metrics.csv").write_text(metrics)
    failed = root / "9_loss.lambda=2,seed=3"  # no summary: not an arm member, must not break anything
    (failed / ".hydra").mkdir(parents=True)
    (failed / "failed.json").write_text(json.dumps({"error": "boom"}))
    (failed / "csv").mkdir()
    (failed / "csv" / "metrics.csv").write_text(OURS_S2.replace("0.35", "0.99"))


def read(path) -> dict:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {(r["arm"].startswith("λ=0"), r["metric"], int(r["epoch"])): r for r in rows}


def check(rows, base, metric, epoch, per_run):
    r = rows[(base, metric, epoch)]
    assert int(r["n"]) == len(per_run)
    assert float(r["mean"]) == pytest.approx(np.mean(per_run))
    if len(per_run) > 1:
        assert float(r["sd"]) == pytest.approx(np.std(per_run, ddof=1))
    else:
        assert r["sd"] == ""  # no spread from one run


def test_curve_numbers_against_hand_computation(tmp_path):
    make_multirun(tmp_path)
    rep = build_report(tmp_path)
    path = tmp_path / "learning_curves.csv"
    rows = read(path)
    assert path.read_text().splitlines()[0] == "arm,epoch,metric,unit,mean,sd,n"
    # λ = 0: per run, the epoch's step mean; seed 2 alone reaches epoch 3 (counted from 1; logged as 2)
    check(rows, True, "train/seg", 1, [np.mean([1.0, 0.8]), np.mean([1.2, 1.0])])
    check(rows, True, "train/seg", 2, [np.mean([0.6, 0.4]), np.mean([0.7, 0.5])])
    check(rows, True, "train/seg", 3, [0.3])
    check(rows, True, "val/dice", 1, [50.0, 40.0])  # %, logged as fractions
    check(rows, True, "val/dice", 3, [80.0])
    check(rows, True, "val/aurc_dice", 2, [10.0, 14.0])  # logged in %
    check(rows, True, "train/rank_weighted", 1, [0.0, 0.0])
    assert not [k for k in rows if k[0] and k[1] == "train/grad_ratio"]  # λ = 0 never logged it
    # λ = 2: seed 1's killed attempt replaced by the resumed one; ranking term × λ × scale = 2000
    check(rows, False, "train/seg", 1, [np.mean([1.0, 0.8]), np.mean([1.4, 1.0])])
    check(rows, False, "train/seg", 2, [np.mean([0.6, 0.4]), np.mean([0.8, 0.6])])
    check(rows, False, "train/rank_weighted", 1, [2000 * np.mean([0.02, 0.01]), 2000 * np.mean([0.03, 0.02])])
    check(rows, False, "train/rank_weighted", 2, [2000 * np.mean([0.01, 0.005]), 2000 * np.mean([0.01, 0.01])])
    check(rows, False, "train/grad_ratio", 1, [300.0, 500.0])
    check(rows, False, "train/grad_ratio", 2, [100.0, 300.0])
    check(rows, False, "val/dice", 2, [65.0, 55.0])
    check(rows, False, "val/aurc_dice", 1, [15.0, 25.0])
    assert {k[2] for k in rows if not k[0]} == {1, 2}  # epochs counted from 1
    assert {r["unit"] for k, r in rows.items() if k[1].startswith("val/")} == {"%"}

    png = tmp_path / "figures" / "learning_curves.png"
    assert png.exists() and png.stat().st_size > 10_000 and png in rep.figures
    md = rep.md_path.read_text()
    assert "## Learning curves" in md and "![learning curves](figures/learning_curves.png)" in md
    assert "learning_curves.csv" in md and "validation AURC (Dice risk) are in %" in md
    assert "no gradient-ratio panel" not in md
    assert "| λ=0 (baseline) | 2 of 3 | 2–3 | 65.00 (epoch 2, n=2, sd 7.07) |" in md  # seed 3 has no metrics.csv
    assert [p.stem for p in rep.figures].count("learning_curves") == 1


def test_resumed_rows_keep_the_last_attempt():
    rows = list(csv.DictReader(OURS_S1.splitlines()))
    assert lc.epoch_values(rows, "train/seg") == {0: [1.0, 0.8], 1: [0.6, 0.4]}
    assert lc.epoch_values(rows, "train/grad_ratio") == {0: [300.0], 1: [100.0]}
    assert lc.epoch_values(rows, "val/dice") == {0: [0.45], 1: [0.65]}
    # an exact duplicate (epoch, step) row: the later one wins
    dup = rows + [{"epoch": "1", "step": "19", "train/seg": "0.2"}]
    assert lc.epoch_values(dup, "train/seg")[1] == [0.6, 0.2]
    # without an attempt column, a new attempt starts where the step goes back: a killed attempt's
    # step that the last attempt did not log (24) is dropped with the rest of that epoch
    killed = [{"epoch": "1", "step": "14", "train/seg": "9.0"}, {"epoch": "1", "step": "24", "train/seg": "9.0"},
              {"epoch": "1", "step": "14", "train/seg": "0.6"}, {"epoch": "1", "step": "19", "train/seg": "0.4"}]
    assert lc.epoch_values(killed, "train/seg") == {1: [0.6, 0.4]}
    # an explicit attempt column: a later attempt's epoch replaces an earlier one even when the
    # step does not go back
    att = [{"epoch": "2", "step": "20", "attempt": "0", "val/dice": "0.1"},
           {"epoch": "2", "step": "25", "attempt": "1", "val/dice": "0.3"}]
    assert lc.epoch_values(att, "val/dice") == {2: [0.3]}
    assert lc.epoch_values([{k: v for k, v in r.items() if k != "attempt"} for r in att], "val/dice") == {2: [0.1, 0.3]}


def test_without_grad_ratio_the_panel_is_skipped(tmp_path):
    make_multirun(tmp_path, grad_ratio=False)
    rep = build_report(tmp_path)
    arms = lc.collect_curves(compare(collect(tmp_path)[0]))
    assert [c.name for c in lc.present(arms)] == ["val/dice", "val/aurc_dice", "train/seg", "train/rank_weighted"]
    assert (tmp_path / "figures" / "learning_curves.png").exists()
    assert "train/grad_ratio" not in (tmp_path / "learning_curves.csv").read_text()
    assert "No run logged `train/grad_ratio`: no gradient-ratio panel." in rep.md_path.read_text()
    assert rep.n_runs == 5


def test_no_metrics_csv_and_no_figures(tmp_path):
    make_multirun(tmp_path)
    for p in tmp_path.glob("*/csv/metrics.csv"):
        p.unlink()
    rep = build_report(tmp_path, make_figures=False)
    md = rep.md_path.read_text()
    assert "No run has these metrics in `csv/metrics.csv`" in md and "learning_curves.png" not in md
    assert (tmp_path / "learning_curves.csv").read_text().strip() == "arm,epoch,metric,unit,mean,sd,n"


def test_no_figures_still_writes_the_csv_next_to_a_numbered_report(tmp_path):
    make_multirun(tmp_path)
    build_report(tmp_path, make_figures=False)
    second = build_report(tmp_path, make_figures=False)
    assert second.md_path.name == "report-2.md" and (tmp_path / "learning_curves-2.csv").exists()
    assert "learning_curves-2.csv" in second.md_path.read_text()
    assert not (tmp_path / "figures").exists() and second.figures == []


def test_empty_or_unreadable_metrics_csv_does_not_stop_the_report(tmp_path):
    make_multirun(tmp_path)
    (tmp_path / "0_loss.lambda=0,seed=1" / "csv" / "metrics.csv").write_text("")
    (tmp_path / "1_loss.lambda=0,seed=2" / "csv" / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    rep = build_report(tmp_path)
    rows = read(tmp_path / "learning_curves.csv")
    assert not [k for k in rows if k[0]]  # the baseline arm has no usable curve left
    check(rows, False, "val/dice", 2, [65.0, 55.0])
    assert "| λ=0 (baseline) | 0 of 3 | – | – |" in rep.md_path.read_text()


def test_a_logged_weighted_term_is_used_as_logged(tmp_path):
    """Runs that log train/rank_weighted (warm-up and balance make the weight vary per step) are drawn
    from that column, not from train/rank × λ × scale."""
    rng = np.random.default_rng(1)
    metrics = ("epoch,step,train/rank,train/rank_weighted,train/seg,val/dice,val/aurc_dice\n"
               "0,4,0.02,0.0,1.0,,\n0,9,0.02,10.0,0.8,,\n0,9,,,,0.5,20.0\n")
    run = write_run(tmp_path / "0_loss.lambda=2", make_summary(rng, fold=0, lam=2.0, seed=1), ["loss.lambda=2"])
    (run / ".hydra" / "config.yaml").write_text(LOSS_CFG.format(seed=1, lam=2.0))
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text(metrics)
    curves = lc.run_curves(collect(tmp_path)[0][0])
    assert curves["train/rank_weighted"] == {0: pytest.approx(5.0)}  # not 2000 × 0.02 = 40
