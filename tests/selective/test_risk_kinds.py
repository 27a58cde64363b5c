"""Risk kinds of uaseg.selective.risk_control (structure, tail@b, fnr, per patient) against brute force:
each unit's loss recomputed from scratch at every threshold, calibrations by scanning every candidate
with independently written p-values (WSR as a loop), and Monte-Carlo splits where each guarantee holds
and the plain empirical calibration visibly fails."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from selectivecases import random_cases

from uaseg.selective.case_losses import risk_losses
from uaseg.selective.case_stats import make_case_stats
from uaseg.selective.risk_check import check_splits, format_rows
from uaseg.selective.risk_bounds import hb_pvalue, min_calibration_cases, wsr_pvalue
from uaseg.selective.risk_control import Calibration, calibrate
from uaseg.selective.risk_evaluate import evaluate
from uaseg.selective.risk_kinds import parse_kind

KINDS = ["dice", "structure", "tail@0.3", "fnr"]


# ---------------------------------------------------------------- brute force
def bf_counts(q, y, k):
    return [(np.sum((q == c) & (y == c)), np.sum((q == c) & (y != c)), np.sum((q != c) & (y == c))) for c in range(1, k)]


def bf_base(kind, u, p, y, t, k):
    """The base loss of one image with u > t referred: a list (one per component)."""
    q = np.where(u > t, y, p)
    cnt = bf_counts(q, y, k)
    dice = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in cnt if 2 * tp + fp + fn > 0]
    if kind.name in ("dice", "tail"):
        return [1 - (np.mean(dice) if dice else 1.0)]
    if kind.name == "structure":
        return [1 - 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0 for tp, fp, fn in cnt]
    fg = np.sum(y > 0)
    return [np.sum((y > 0) & (q != y)) / fg if fg else 0.0]


def bf_unit_losses(kind, cases, groups, t, k):
    """(units, M): mean over a unit's images of the base loss, then tail's indicator."""
    out = []
    for g in dict.fromkeys(groups):
        v = np.mean([bf_base(kind, *c, t, k) for c, gg in zip(cases, groups) if gg == g], axis=0)
        out.append((v > kind.beta).astype(float) if kind.name == "tail" else v)
    return np.array(out)


def bf_wsr(losses, a, delta):
    """LTT's p^WSR written out with a loop."""
    n = len(losses)
    mus, sig2 = [], [0.25]
    k, best, s, ss = 1.0, 1.0, 0.0, 0.0
    for i, x in enumerate(losses, 1):
        nu = min(1.0, math.sqrt(2 * math.log(1 / delta) / (n * sig2[-1])))
        k *= 1 - nu * (x - a)
        best = max(best, k)
        s += x
        mu = (0.5 + s) / (1 + i)
        ss += (x - mu) ** 2
        sig2.append((0.25 + ss) / (1 + i))
    return min(1.0, 1 / best)


def bf_binom(r, n, a):
    kk = round(n * r)
    return sum(math.comb(n, j) * a ** j * (1 - a) ** (n - j) for j in range(kk + 1))


def bf_ok(method, pvalue, L, alpha, delta):
    n = len(L)
    if method == "crc":
        return (np.sum(L) + 1) / (n + 1) <= alpha
    p = {"hb": lambda: hb_pvalue(np.sum(L), n, alpha), "wsr": lambda: bf_wsr(L, alpha, delta),
         "binom": lambda: bf_binom(np.mean(L), n, alpha)}[pvalue]()
    return p <= delta


def bf_calibrate(kind, cases, groups, k, alpha, method, pvalue="hb", delta=0.2):
    """Per component: scan every distinct u, most referral first, stop at the first failure; the
    smallest component threshold (None: infeasible), LTT at delta / M."""
    cands = [-np.inf] + list(np.unique(np.concatenate([c[0].ravel() for c in cases])))
    per = [bf_unit_losses(kind, cases, groups, t, k) for t in cands]
    m = per[0].shape[1]
    ts = []
    for j in range(m):
        best = None
        for t, L in zip(cands, per):
            if not bf_ok(method, pvalue, L[:, j], alpha, delta / m):
                break
            best = t
        if best is None:
            return None
        ts.append(best)
    return min(ts)


def stats_of(cases, k, ids=None):
    return [make_case_stats(u, p, y, num_classes=k, case_id=i if ids is None else ids[i], aggregations=())
            for i, (u, p, y) in enumerate(cases)]


# ---------------------------------------------------------------- the losses
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_every_kind_matches_brute_force_and_is_monotone_in_0_1(kind, seed):
    rng = np.random.default_rng(seed)
    kd = parse_kind(kind)
    k = int(rng.integers(2, 5))
    cases = random_cases(rng, 6, k, (4, 5), acc=float(rng.choice([0.5, 0.8, 1.0])),
                         levels=5 if seed % 2 else None, empty_class=k - 1 if seed == 2 else None)
    groups = [f"p{i // 2}" for i in range(6)] if seed else [str(i) for i in range(6)]  # patients of 2 images
    units = dict(zip(map(str, range(6)), groups))
    rl = risk_losses(stats_of(cases, k), kind, units if seed else None)
    assert rl.n_units == len(set(groups)) and len(rl.components) == (k - 1 if kind == "structure" else 1)
    prev = None
    for t in [-np.inf, *np.unique(np.concatenate([c[0].ravel() for c in cases])), np.inf]:
        got = np.stack([c.loss_at(t) for c in rl.components], axis=1)
        np.testing.assert_allclose(got, bf_unit_losses(kd, cases, groups, t, k), atol=1e-12)
        assert got.min() >= 0 and got.max() <= 1 + 1e-12
        assert prev is None or np.all(got >= prev - 1e-12)
        prev = got
    assert all(c.min_raw_jump >= -1e-12 for c in rl.components)


@pytest.mark.parametrize("kind,method,pvalue", [
    ("structure", "crc", "hb"), ("structure", "ltt", "hb"), ("structure", "ltt", "wsr"),
    ("tail@0.25", "crc", "hb"), ("tail@0.25", "ltt", "binom"), ("tail@0.25", "ltt", "wsr"),
    ("fnr", "ltt", "wsr"), ("dice", "ltt", "wsr"), ("dice", "crc", "hb")])
def test_calibration_matches_a_scan_of_every_candidate(kind, method, pvalue):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{method}{pvalue}".encode()))
    k = 3
    cases = sum((random_cases(rng, 8, k, (4, 4), acc=a, levels=12) for a in (0.7, 0.85, 0.97)), [])
    groups = [f"p{i // 2}" for i in range(24)] if kind == "fnr" else [str(i) for i in range(24)]
    units = dict(zip(map(str, range(24)), groups))
    rl = risk_losses(stats_of(cases, k), kind, units)
    seen = set()
    for alpha in (0.05, 0.15, 0.3, 0.4, 0.5, 0.65, 0.8, 0.95):
        c = calibrate(rl, alpha, method, 0.2, pvalue=pvalue)
        bf = bf_calibrate(parse_kind(kind), cases, groups, k, alpha, method, pvalue, 0.2)
        assert c.feasible == (bf is not None), alpha
        assert c.threshold == (-np.inf if bf is None else float(bf)), alpha
        seen.add("infeasible" if bf is None else "all" if c.coverage == 1 else "some")
    assert "some" in seen and len(seen) >= 2


def test_wsr_pvalue_against_a_loop_and_its_validity():
    rng = np.random.default_rng(0)
    for n in (5, 30):
        L = rng.beta(1, 6, n)
        assert wsr_pvalue(L, 0.1, 0.1) == pytest.approx(bf_wsr(L, 0.1, 0.1), rel=1e-10)
    # valid: losses with mean exactly alpha are rejected at level delta at most delta of the time
    for n, a in [(30, 0.1), (100, 0.05)]:
        L = rng.beta(a * 4, (1 - a) * 4, (4000, n))
        assert np.mean(wsr_pvalue(L, a, 0.1) <= 0.1) <= 0.1
    # and much less conservative than Hoeffding-Bentkus for losses that are not 0/1
    L = rng.beta(1, 50, (200, 100))                  # mean ~0.02, alpha 0.05: WSR rejects, HB cannot
    assert np.mean(wsr_pvalue(L, 0.05, 0.1) <= 0.1) > 0.9 and np.mean(hb_pvalue(L.sum(1), 100, 0.05) <= 0.1) < 0.1


def test_exact_hb_ceiling_duplicates_and_settings():
    # a sum just above an integer counts as the next integer (the old 1e-9 tolerance made it 3)
    assert hb_pvalue(3 + 1e-10, 50, 0.2) > hb_pvalue(3.0, 50, 0.2)
    rl = risk_losses(stats_of(random_cases(np.random.default_rng(1), 5, 2, (3, 3)), 2), "dice")
    with pytest.raises(ValueError, match="repeated"):
        calibrate(rl, 0.5, "crc", cases=[0, 1, 1, 2])
    with pytest.raises(ValueError, match="0/1"):
        calibrate(rl, 0.5, "ltt", 0.1, pvalue="binom")
    assert min_calibration_cases(0.1, "ltt", 0.1, components=3) == 33    # 0.9^n <= 0.1/3
    assert min_calibration_cases(0.05, "ltt", 0.1, "wsr") > min_calibration_cases(0.05, "ltt", 0.1)
    with pytest.raises(ValueError, match="choose from"):
        parse_kind("dise")
    with pytest.raises(ValueError, match="beta"):
        parse_kind("tail@1.5")


def test_patients_loo_and_realised_values():
    """n counts patients; the leave-one-out coverage is recomputed by hand; every kind's realised value
    is in the record; the statement names patients, the warning the minimum."""
    rng = np.random.default_rng(5)
    k = 3
    cases = random_cases(rng, 24, k, (4, 4), acc=0.9, levels=30)
    ids = [f"img{i}" for i in range(24)]
    units = {c: f"pat{i // 3}" for i, c in enumerate(ids)}
    stats = stats_of(cases, k, ids)
    c = calibrate(stats, 0.15, "crc", kind="structure", units=units, expected_coverage=True,
                  class_names=["bg", "a", "b"])
    assert c.n_calibration == 8 and c.n_images == 24 and c.unit == "patient" and c.kind == "structure"
    assert set(c.components) == {"a", "b"} and c.threshold == min(v["threshold"] for v in c.components.values())
    rl = risk_losses(stats, "structure", units)
    hand = []
    for j in range(8):
        t = calibrate(rl, 0.15, "crc", cases=[i for i in range(8) if i != j]).threshold
        mine = [s for s in stats if units[s.case_id] == f"pat{j}"]
        hand.append((sum(int(s.index.count_le(t)) for s in mine), sum(s.n for s in mine)))
    assert c.expected_coverage == pytest.approx(sum(a for a, _ in hand) / sum(b for _, b in hand))
    assert c.near_minimum and "close to the minimum" in c.warning and "leave-one-out" in c.warning
    assert "8 calibration patients" in c.statement and "every structure" in c.statement
    assert set(c.values) == {"dice", "structure", "structure_max", "tail@0.15", "fnr"}
    assert c.values["structure_max"] == pytest.approx(c.risk)
    assert Calibration.from_dict(c.to_dict()) == c
    r = evaluate(c, stats, units, ["bg", "a", "b"])
    assert r["n_test"] == 8 and r["n_test_images"] == 24 and r["test_values"]["structure"].keys() == {"a", "b"}
    assert r["test_risk"] == pytest.approx(r["test_values"]["structure_max"])
    img = calibrate(stats, 0.15, "crc", kind="structure")           # per image: no patients named
    assert img.unit == "case" and img.n_calibration == 24 and "not patients" in img.statement
    # a calibration subset with patients of one image each selects its cases by unit number, not by name
    one = calibrate(stats, 0.15, "crc", cases=range(10), units={c: f"p{c}" for c in ids})
    assert one.n_calibration == 10 and one.values == calibrate(stats[:10], 0.15, "crc").values


# ---------------------------------------------------------------- the guarantees
def structure_cases(seed, m=160):
    """A large structure segmented well and a small one (4 voxels) missed in about a fifth of the
    cases at a u drawn per case: the class mean hides the small structure."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(m):
        y = np.zeros((10, 10), np.int64)
        y[:6] = 1
        y[8:10, 8:10] = 2
        wrong = rng.random(y.shape) < 0.03
        p = np.where(wrong, 0, y)
        u = np.where(wrong, rng.beta(4, 2, y.shape), rng.beta(2, 5, y.shape))
        if rng.random() < 0.25:
            p[8:10, 8:10] = 0
            u[8:10, 8:10] = rng.random()
        cases.append((u.astype(np.float32), p, y))
    return stats_of(cases, 3)


def tail_cases(seed, m=200):
    """Dice risk per case spread over [0, 0.6] with all wrong voxels at one u per case: the tail loss
    1{1 - Dice > 0.2} is a Bernoulli step at that u (CRC tight, empirical fails)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(m):
        y = np.zeros((10, 10), np.int64)
        y[2:8, 2:8] = 1
        p = y.copy()
        n_wrong = int(rng.integers(0, 25))
        idx = rng.choice(np.flatnonzero(y.ravel()), n_wrong, replace=False)
        p.ravel()[idx] = 0
        u = rng.random(y.shape) * 0.5
        u.ravel()[idx] = 0.5 + 0.5 * rng.random()
        cases.append((u.astype(np.float32), p, y))
    return stats_of(cases, 2)


def empirical_splits(rl, alpha, n_cal, splits, seed=2):
    """(splits, M) test risks of the plain empirical calibration (calibration mean <= alpha)."""
    from uaseg.selective.risk_control import threshold_for
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(splits):
        perm = rng.permutation(rl.n_units)
        t, _, _ = threshold_for(rl, alpha, "empirical", None, cases=perm[:n_cal])
        out.append([c.loss_at(t, perm[n_cal:]).mean() for c in rl.components])
    return np.array(out)


@pytest.mark.parametrize("kind", ["structure", "tail@0.2"])
def test_guarantees_hold_on_random_splits_and_empirical_fails(kind):
    """CRC with 20 calibration units (where its 1/(n+1) correction matters) and LTT with half the pool:
    every guarantee holds, not by referring everything; the empirical calibration breaks both bounds."""
    stats = structure_cases(0) if kind == "structure" else tail_cases(0)
    rl = risk_losses(stats, kind)
    alpha, half = 0.1, len(stats) // 2
    rows = check_splits(rl, (alpha,), ("crc",), n_cal=20, splits=300, seed=1) + \
        check_splits(rl, (alpha,), ("ltt",), delta=0.1, n_cal=half, splits=200, seed=1,
                     pvalues=("hb", "wsr") if kind == "structure" else ("binom", "wsr"))
    print(format_rows(rows))
    for r in rows:
        assert r["holds"], r
        assert r["refer_all"] < 0.5, r
    assert rows[0]["mean_test_risk"] >= alpha - 0.03, rows[0]      # CRC nearly tight, not vacuous
    emp = empirical_splits(rl, alpha, 20, 300)                        # CRC's bound, empirically calibrated
    mean, se = emp.mean(0), emp.std(0, ddof=1) / math.sqrt(len(emp))
    assert np.any(mean > alpha + 3 * se), mean
    emp = empirical_splits(rl, alpha, half, 200)                      # LTT's bound
    assert np.mean((emp > alpha).any(1)) > 0.3
    if kind == "structure":   # controlling the class mean leaves the small structure above alpha
        d = calibrate(stats[:80], alpha, "crc", kind="dice")
        small = risk_losses(stats[80:], "structure").components[1].loss_at(d.threshold).mean()
        assert small > alpha + 0.02


def test_records_written_before_risk_kinds_still_load():
    """A checkpoint calibrated before this change: the Dice risk, per case, its minimum recomputed."""
    old = {"method": "crc", "alpha": 0.05, "delta": None, "n_calibration": 10, "threshold": float("-inf"),
           "feasible": False, "risk": 0.0, "coverage": 0.0, "spread": {}}
    c = Calibration.from_dict(old)
    assert (c.kind, c.unit, c.pvalue, c.warning) == ("dice", "case", None, None)
    assert "at least 19 needed" in c.statement and "Dice risk" in c.statement
