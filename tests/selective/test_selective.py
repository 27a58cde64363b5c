"""uaseg.selective against independent brute force and hand-computed values."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from selectivecases import bf_case_dice, random_cases

from uaseg.selective import (SelectiveAccumulator, SelectiveResult, SelectiveSegmentationMetric,
                             dice_risk_coverage, format_table, plot_case_panel,
                             plot_dice_coverage, plot_risk_coverage, save_case_arrays,
                             voxel_risk_coverage, write_outputs, write_score_outputs)


# ---------------------------------------------------------------- brute force
def bf_dice_curve(cases, k):
    """Recompute every case from scratch at every distinct threshold (and c=0)."""
    allu = np.concatenate([u.ravel() for u, _, _ in cases])
    n = allu.size
    pts = []
    for t in list(np.unique(allu)[::-1]) + [-np.inf]:
        d = [bf_case_dice(np.where(u > t, y, p), y, k) for u, p, y in cases]
        pts.append((np.sum(allu <= t) / n, 1 - np.mean(d), t))
    cov, risk, thr = map(np.array, zip(*pts))
    aurc = 100 * sum((cov[i] - cov[i + 1]) * (risk[i] + risk[i + 1]) / 2 for i in range(len(cov) - 1))
    return cov, risk, thr, aurc


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 5])
def test_dice_curve_matches_brute_force_every_threshold(seed, levels):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 5))
    cases = random_cases(rng, int(rng.integers(1, 4)), k, (int(rng.integers(2, 6)), 5),
                         acc=float(rng.uniform(0, 1)), levels=levels,
                         empty_class=(k - 1 if seed % 2 else None))
    cov, risk, thr, aurc = bf_dice_curve(cases, k)
    full = dice_risk_coverage(cases, k, compress=False)
    np.testing.assert_allclose(full["coverage"], cov, atol=1e-12)
    np.testing.assert_allclose(full["risk"], risk, atol=1e-9)
    np.testing.assert_allclose(full["threshold"], thr)
    assert full["aurc"] == pytest.approx(aurc, abs=1e-9)
    comp = dice_risk_coverage(cases, k)            # compressed: same curve, fewer points
    assert comp["aurc"] == pytest.approx(aurc, abs=1e-9)
    assert comp["coverage"][0] == 1 and comp["coverage"][-1] == 0 and comp["risk"][-1] == 0
    np.testing.assert_allclose(np.interp(cov[::-1], comp["coverage"][::-1], comp["risk"][::-1]),
                               risk[::-1], atol=1e-9)


def test_dice_curve_perfect_all_wrong_and_empty():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, (6, 6))
    u = rng.random((6, 6)).astype(np.float32)
    perfect = dice_risk_coverage([(u, y, y)], 3, compress=False)
    assert np.allclose(perfect["risk"], 0) and perfect["aurc"] == 0
    wrong = (y + 1) % 3
    cases = [(u, wrong, y)]
    cov, risk, _, aurc = bf_dice_curve(cases, 3)
    r = dice_risk_coverage(cases, 3, compress=False)
    np.testing.assert_allclose(r["risk"], risk, atol=1e-12)
    assert r["risk"][0] == pytest.approx(1.0)
    # all background in label and prediction: every class left out -> Dice 1.0
    z = np.zeros((4, 4), int)
    assert dice_risk_coverage([(u[:4, :4], z, z)], 3)["aurc"] == 0
    # label empty of class 2 but predicted: FP-only class drops out once referred
    y2 = np.ones((3, 3), int)
    p2 = y2.copy()
    p2[0, 0] = 2
    u2 = np.full((3, 3), 0.1, np.float32)
    u2[0, 0] = 0.9
    r = dice_risk_coverage([(u2, p2, y2)], 3, compress=False)
    # c=1: class1 dice 2*8/(16+1)=16/17, class2 dice 0 -> mean 8/17; after referral 1.0
    np.testing.assert_allclose(r["risk"], [1 - 8 / 17, 0.0, 0.0])


def test_voxel_metrics_hand_computed():
    # thresholds 0.4 (c=1, risk 1/2), 0.2 (c=3/4, 1/3), 0.1 (c=1/4, 0), c=0 flat 0
    r = voxel_risk_coverage([0.1, 0.2, 0.2, 0.4], [1, 0, 1, 0])
    assert r["aurc"] == pytest.approx(0.25 * (0.5 + 1 / 3) / 2 + 0.5 * (1 / 3) / 2)
    assert r["augrc"] == pytest.approx(0.25 * (0.5 + 0.25) / 2 + 0.5 * 0.25 / 2)
    assert r["eaurc"] == pytest.approx(0.1875 - (0.5 + 0.5 * np.log(0.5)), abs=1e-12)
    np.testing.assert_allclose(r["coverage"], [1, 0.75, 0.25, 0])
    np.testing.assert_allclose(r["selective_risk"], [0.5, 1 / 3, 0, 0])
    # flat extension to c=0 carries the last selective risk (fd-shifts)
    r = voxel_risk_coverage(np.array([0.1, 0.1, 0.3]), np.array([False, True, True]))
    np.testing.assert_allclose(r["selective_risk"], [1 / 3, 0.5, 0.5])
    assert r["aurc"] == pytest.approx((1 / 3) * (1 / 3 + 0.5) / 2 + (2 / 3) * 0.5)
    assert r["augrc"] == pytest.approx((1 / 3) * (1 / 3 + 1 / 3) / 2 + (2 / 3) * (1 / 3) / 2)


def test_voxel_metrics_brute_force_and_subsampled_curve():
    rng = np.random.default_rng(3)
    u = np.round(rng.random(3000), 2)
    ok = rng.random(3000) < 0.8
    pts = [(1.0, np.mean(~ok))]
    for t in np.unique(u)[::-1][1:]:
        m = u <= t
        pts.append((m.mean(), np.mean(~ok[m])))
    pts.append((0.0, pts[-1][1]))
    c, r = map(np.array, zip(*pts))
    aurc = np.sum(-np.diff(c) * (r[1:] + r[:-1]) / 2)
    assert voxel_risk_coverage(u, ok)["aurc"] == pytest.approx(aurc, abs=1e-12)
    sub = voxel_risk_coverage(u, ok, max_points=10)
    assert sub["aurc"] == pytest.approx(aurc, abs=1e-12) and len(sub["coverage"]) < len(c)


def test_quantisation_error_bound():
    rng = np.random.default_rng(7)
    cases = random_cases(rng, 3, 3, (20, 20), acc=0.8)
    exact = dice_risk_coverage(cases, 3, compress=False)
    bits = 4
    q = dice_risk_coverage(cases, 3, quantize_bits=bits, compress=False)
    step = 1 / (2 ** bits - 1)
    # every quantised point is an exact point (same coverage and risk)
    for c, r in zip(q["coverage"], q["risk"]):
        i = np.flatnonzero(np.isclose(exact["coverage"], c, atol=1e-12))
        assert i.size == 1 and exact["risk"][i[0]] == pytest.approx(r, abs=1e-9)
    # AURC error <= sum over kept segments of width * risk range of exact points inside
    bound = 0.0
    for a, b in zip(q["coverage"][:-1], q["coverage"][1:]):
        m = (exact["coverage"] <= a + 1e-12) & (exact["coverage"] >= b - 1e-12)
        bound += (a - b) * np.ptp(exact["risk"][m])
    assert abs(q["aurc"] - exact["aurc"]) <= 100 * bound + 1e-9
    assert abs(q["aurc"] - exact["aurc"]) > 0      # the bound is not vacuous here
    # coverage at any threshold t: C(t) <= C_q(t) <= C(t + step)
    allu = np.concatenate([u.ravel() for u, _, _ in cases]).astype(np.float64)
    lv = np.rint(allu / step)
    for t in rng.random(50):
        cq = np.mean(lv <= np.rint(t / step))
        assert np.mean(allu <= t) <= cq <= np.mean(allu <= t + step)
    # thresholds reported within step/2 of the largest covered u
    for c, t in zip(q["coverage"][:-1], q["threshold"][:-1]):
        covered = np.sort(allu)[: int(round(c * allu.size))]
        assert abs(covered[-1] - t) <= step / 2 + 1e-7


def test_quantised_accumulator_matches_exact_on_coarse_input():
    rng = np.random.default_rng(2)
    cases = random_cases(rng, 4, 3, (10, 10), levels=255)   # already on 1/255 grid
    res = []
    for bits in (None, 8):
        acc = SelectiveAccumulator(3, quantize_bits=bits, bootstrap=0)
        for i, (u, p, y) in enumerate(cases):
            acc.add_case(u * 255 / 255.0, p, y, i)
        res.append(acc.compute())
    assert res[0].aurc_dice == pytest.approx(res[1].aurc_dice, abs=1e-7)
    assert res[0].aurc == pytest.approx(res[1].aurc, abs=1e-9)
    assert res[1].quantization["bits"] == 8


def test_at_coverage_nearest_with_ties():
    u = np.array([0.0] * 6 + [1.0] * 4, np.float32)   # achievable coverage 0, 0.6, 1
    y = np.ones(10, int)
    p = np.where(u > 0.5, 0, 1)
    acc = SelectiveAccumulator(2, coverages=(0.95, 0.8, 0.7, 0.3, 0.25), bootstrap=0)
    acc.add_case(u, p, y, "a")
    r = acc.compute().at_coverage
    assert set(r) == {"0.95", "0.80", "0.70", "0.30", "0.25"}
    assert r["0.95"].achieved_coverage == 1.0 and r["0.95"].threshold == 1.0
    assert r["0.80"].achieved_coverage == 1.0          # distance tie -> larger coverage
    assert r["0.70"].achieved_coverage == 0.6 and r["0.70"].threshold == 0.0
    assert r["0.70"].dice_mean == 1.0                   # wrong voxels all referred
    assert r["0.25"].achieved_coverage == 0.0 and r["0.25"].threshold is None
    assert r["0.30"].achieved_coverage == 0.6


def test_summary_statistics_against_numpy():
    rng = np.random.default_rng(5)
    cases = random_cases(rng, 7, 4, (6, 7, 3), acc=0.85)
    acc = SelectiveAccumulator(4, bootstrap=200, seed=1)
    for i, (u, p, y) in enumerate(cases):
        acc.add_case(u, p, y, f"c{i}")
    r = acc.compute()
    allu = np.sort(np.concatenate([c[0].ravel() for c in cases]))
    d1 = np.array([bf_case_dice(p, y, 4) for _, p, y in cases])
    assert r.dice_full.mean == pytest.approx(d1.mean())
    assert r.dice_full.std == pytest.approx(d1.std(ddof=0))
    assert r.dice_full.p5 == pytest.approx(np.percentile(d1, 5))
    a = r.at_coverage["0.90"]
    t = a.threshold
    assert a.achieved_coverage == pytest.approx(np.mean(allu <= t))
    d = np.array([bf_case_dice(np.where(u > t, y, p), y, 4) for u, p, y in cases])
    assert a.dice_mean == pytest.approx(d.mean()) and a.dice_p5 == pytest.approx(np.percentile(d, 5))
    for i, (u, p, y) in enumerate(cases):
        assert r.cases[i].at_coverage["0.90"].coverage == pytest.approx(np.mean(u <= t))
    cl = r.case_level
    assert cl.aggregation == "mean" and cl.ci95[0] <= cl.aurc <= cl.ci95[1] + 1e-9
    assert r.aurc_dice == pytest.approx(bf_dice_curve(cases, 4)[3], abs=1e-9)


def test_metric_updates_equal_one_shot_and_reset():
    rng = np.random.default_rng(11)
    cases = random_cases(rng, 6, 3, (5, 6, 4), acc=0.8)
    acc = SelectiveAccumulator(3, bootstrap=100)
    for i, (u, p, y) in enumerate(cases):
        acc.add_case(u, p, y, f"c{i}", group="A" if i < 3 else "B")
    ref = acc.compute()
    m = SelectiveSegmentationMetric(3, bootstrap=100)
    for j in range(0, 6, 2):   # batched updates with torch tensors
        ids = [f"c{j}", f"c{j + 1}"]
        m.update(torch.from_numpy(np.stack([cases[j][0], cases[j + 1][0]])),
                 torch.from_numpy(np.stack([cases[j][1], cases[j + 1][1]])),
                 torch.from_numpy(np.stack([cases[j][2], cases[j + 1][2]])),
                 ids, group=["A" if j < 3 else "B", "A" if j + 1 < 3 else "B"])
    out = m.compute()
    for key in ("aurc_dice", "aurc", "eaurc", "augrc"):
        assert getattr(out, key) == pytest.approx(getattr(ref, key), abs=1e-12)
    assert out.case_level == ref.case_level
    assert out.groups["A"].aurc_dice == pytest.approx(ref.groups["A"].aurc_dice)
    one = dice_risk_coverage([c for c in cases], 3)
    assert out.aurc_dice == pytest.approx(one["aurc"], abs=1e-12)
    m.reset()
    m.update(cases[0][0], cases[0][1], cases[0][2], "c0")   # same id is fine after reset
    assert m.compute().n_cases == 1


def test_input_validation():
    acc = SelectiveAccumulator(3)
    u, p = np.zeros((2, 2), np.float32), np.zeros((2, 2), int)
    with pytest.raises(ValueError, match="shape"):
        acc.add_case(u, p, np.zeros((2, 3), int), "a")
    with pytest.raises(ValueError, match="0..2"):
        acc.add_case(u, p, p + 3, "a")
    with pytest.raises(ValueError, match="NaN"):
        acc.add_case(u * np.nan, p, p, "a")
    acc.add_case(u, p, p, "a")
    with pytest.raises(ValueError, match="duplicate"):
        acc.add_case(u, p, p, "a")
    with pytest.raises(ValueError, match="quantize range"):
        SelectiveAccumulator(3, quantize_bits=8).add_case(u + 2, p, p, "a")
    m = SelectiveSegmentationMetric(3)
    m.update(u, p, p, "a")
    with pytest.raises(ValueError, match="duplicate"):
        m.update(u, p, p, "a")


REQUIRED = {"aurc_dice", "aurc", "eaurc", "augrc", "dice_full", "at_coverage", "case_level",
            "cases", "groups"}


def _result(tmp_path):
    rng = np.random.default_rng(4)
    cases = random_cases(rng, 4, 3, (6, 6, 3), acc=0.8, empty_class=2)
    acc = SelectiveAccumulator(3, bootstrap=50)
    for i, (u, p, y) in enumerate(cases):
        acc.add_case(u, p, y, f"c{i}", group="testA" if i % 2 else "testB")
    return acc.compute(), cases


def test_write_outputs_json_round_trip(tmp_path):
    r, cases = _result(tmp_path)
    ident = {"dataset": "glas", "fold": 0, "seed": 1, "lambda": 2.0, "margin": 0.1}
    s = write_outputs(r, tmp_path, ident, max_rows=50)
    back = json.loads((tmp_path / "summary.json").read_text())
    assert back == s and REQUIRED <= set(back) and back["dataset"] == "glas"
    assert set(back["at_coverage"]) == {"0.95", "0.90", "0.80", "0.70"}
    assert set(back["at_coverage"]["0.90"]) >= {"achieved_coverage", "threshold", "dice_mean",
                                              "dice_std", "dice_p5"}
    assert set(back["groups"]) == {"testA", "testB"}
    assert REQUIRED - {"cases", "groups"} <= set(back["groups"]["testA"])
    assert back["case_level"]["aggregation"] == "mean" and len(back["case_level"]["ci95"]) == 2
    c0 = back["cases"][0]
    assert set(c0["at_coverage"]) == {"1.00", "0.95", "0.90", "0.80", "0.70"}
    assert back["aurc_dice"] == pytest.approx(r.aurc_dice)
    assert SelectiveResult.from_summary(back).to_summary() == {k: v for k, v in back.items() if k not in ident}
    rows = np.loadtxt(tmp_path / "curves.csv", delimiter=",", skiprows=1)
    assert len(rows) <= 50 and rows[0, 0] == 1.0 and rows[-1, 0] == 0.0 and rows[-1, 1] == 0.0
    path = save_case_arrays(tmp_path, "c0", *cases[0])
    z = np.load(path)
    assert set(z.files) == {"uncertainty", "prediction", "label"}
    np.testing.assert_array_equal(z["label"], cases[0][2])
    table = format_table(r)
    assert "AURC" in table
    assert f"voxel AURC {100 * r.aurc:.3f} %" in table and f"AUGRC {100 * r.augrc:.3f} %" in table  # % as Dice-AURC


def test_every_score_gets_its_own_curve_file(tmp_path):
    """Three scores of one run, each with other uncertainties: the first in curves.csv, the others in
    curves_<score>.csv, each file that score's brute-force curve (and so all different), and the
    report reads each score's curve from its own file."""
    from uaseg.report import collect
    from uaseg.report.figures import read_curve
    from uaseg.report.methods import curve_file

    rng = np.random.default_rng(8)
    cases = random_cases(rng, 3, 3, (5, 4), acc=0.7)
    names = ["max_softmax", "tta", "mc_dropout"]
    per_score, results = {}, {}
    for n in names:
        per_score[n] = [(np.floor(rng.random(p.shape) * 12) / 12, p, y) for _, p, y in cases]
        acc = SelectiveAccumulator(3, bootstrap=0)
        for i, (u, p, y) in enumerate(per_score[n]):
            acc.add_case(u.astype(np.float32), p, y, f"c{i}")
        results[n] = acc.compute()
    ident = {"dataset": "demo2d", "model": "unet", "fold": 0, "seed": 1, "lambda": 0.0, "method": "single"}
    write_score_outputs(results, tmp_path, ident, {n: {"passes": 1} for n in names}, {n: "p" for n in names})
    files = {n: tmp_path / ("curves.csv" if n == names[0] else f"curves_{n}.csv") for n in names}
    assert sorted(p.name for p in tmp_path.glob("curves*.csv")) == sorted(p.name for p in files.values())
    curves = {}
    for n in names:
        cov, risk, thr, _ = bf_dice_curve(per_score[n], 3)
        rows = np.loadtxt(files[n], delimiter=",", skiprows=1)  # points on straight segments are dropped
        assert set(np.round(rows[:, 0], 9)) <= set(np.round(cov, 9))
        np.testing.assert_allclose(np.interp(cov, rows[::-1, 0], rows[::-1, 1]), risk, atol=1e-9)
        curves[n] = rows
    assert not np.array_equal(curves["tta"], curves["mc_dropout"])
    assert not np.array_equal(curves["max_softmax"], curves["tta"])
    (run,), _ = collect(tmp_path)
    for n in names:
        c, dice = read_curve(run.path, curve_file(run, n))
        order = np.argsort(curves[n][:, 0], kind="stable")
        np.testing.assert_allclose(c, curves[n][order, 0])
        np.testing.assert_allclose(dice, 1 - curves[n][order, 1])


def test_class_left_out_is_null_in_json(tmp_path):
    u = np.linspace(0, 1, 8, dtype=np.float32)
    y = np.array([0, 1, 1, 0, 0, 1, 0, 0])
    acc = SelectiveAccumulator(3, bootstrap=0)
    acc.add_case(u, y, y, "a")
    s = write_outputs(acc.compute(), tmp_path, {})
    assert s["cases"][0]["at_coverage"]["1.00"]["class_dice"] == [1.0, None]


def test_plots_write_pngs(tmp_path):
    r, cases = _result(tmp_path)
    u, p, y = cases[0]
    paths = [plot_risk_coverage(r, tmp_path / "rc.png"),
             plot_dice_coverage({"baseline": r, "ours": r}, tmp_path / "dc.png"),
             plot_case_panel(np.random.rand(3, *y.shape), y, p, u, 0.5, tmp_path / "case3d.png", "c0"),
             plot_case_panel(np.random.rand(6, 6), y[..., 0], p[..., 0], u[..., 0], 0.5,
                             tmp_path / "case2d.png")]
    for pth in paths:
        assert pth.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metric_quantised_equals_accumulator():
    rng = np.random.default_rng(12)
    cases = random_cases(rng, 3, 3, (6, 6), acc=0.8)
    acc = SelectiveAccumulator(3, quantize_bits=6, bootstrap=0)
    m = SelectiveSegmentationMetric(3, quantize_bits=6, bootstrap=0)
    for i, (u, p, y) in enumerate(cases):
        acc.add_case(u, p, y, i)
        m.update(torch.from_numpy(u), torch.from_numpy(p), torch.from_numpy(y), i)
    a, b = acc.compute(), m.compute()
    assert a.aurc_dice == pytest.approx(b.aurc_dice) and a.aurc == pytest.approx(b.aurc)
    assert a.at_coverage == b.at_coverage


def test_threshold_grid_maps_every_coverage_to_its_nearest_achievable_threshold():
    """predict.py turns a requested coverage into a threshold with this grid; it must hold every
    coverage, also where only correct voxels are referred (the Dice curve keeps no points there)."""
    rng = np.random.default_rng(3)
    acc = SelectiveAccumulator(3, bootstrap=0)
    all_u = []
    for i in range(4):
        label = rng.integers(0, 3, (16, 16))
        pred = label.copy()
        wrong = rng.random(label.shape) < 0.05
        pred[wrong] = (label[wrong] + 1) % 3
        u = np.round(rng.random(label.shape), 2)  # many ties
        all_u.append(u.ravel())
        acc.add_case(u, pred, label, case_id=str(i))
    grid = acc.compute().threshold_grid
    u = np.concatenate(all_u)
    achievable = np.array([0.0] + [np.mean(u <= t) for t in np.unique(u)])
    assert len(grid.coverage) == 1001
    for target, cov, thr in zip(np.linspace(1, 0, 1001), grid.coverage, grid.threshold):
        assert cov == pytest.approx(np.mean(u <= thr) if np.isfinite(thr) else 0.0)
        assert abs(cov - target) == pytest.approx(np.abs(achievable - target).min())


def test_case_panel_has_a_legend_of_the_class_colours(tmp_path, monkeypatch):
    import uaseg.selective.plots as plots
    from uaseg.io import class_colour

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, tight=True: figs.append(fig) or Path(path))
    y = np.zeros((8, 8), np.int64)
    y[:3] = 1
    p = y.copy()
    p[5:, 5:] = 2
    plot_case_panel(np.random.rand(8, 8), y, p, np.random.rand(8, 8), 0.5, tmp_path / "c.png", "c0",
                    class_names=["LV", "RV", "LA"])
    (legend,) = figs[0].legends
    assert [t.get_text() for t in legend.get_texts()] == ["background", "LV", "RV"]
    colours = [tuple(np.round(np.asarray(h.get_facecolor()[:3]) * 255).astype(int)) for h in legend.legend_handles]
    assert colours == [class_colour(0), class_colour(1), class_colour(2)]  # the written PNGs' colours


def test_one_unit_per_kind_in_displays():
    from uaseg.selective import display_metric

    assert display_metric("test/dice", 0.8876) == "88.76 %"
    assert display_metric("val/dice@0.90", 0.9679) == "96.79 %"
    assert display_metric("test/dice_p5@0.90", 0.5) == "50.00 %"
    assert display_metric("test/aurc_dice", 1.1754) == "1.175 %"  # stored in percent already
    assert display_metric("test/aurc", 0.00427) == "0.427 %"  # stored as a fraction
    assert display_metric("test/eaurc", 0.0036) == "0.360 %" and display_metric("test/augrc", 0.0032) == "0.320 %"
    assert display_metric("train/loss", 27.8093) == "27.81"
