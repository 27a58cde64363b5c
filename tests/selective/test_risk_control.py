"""uaseg.selective.risk_control against brute force: every case's L_i(t) recomputed from scratch at every
threshold, CRC / LTT thresholds by scanning every candidate, an independent Hoeffding-Bentkus p-value,
and Monte-Carlo splits that check both guarantees."""
from __future__ import annotations

import math

import numpy as np
import pytest
from selectivecases import bf_case_dice, random_cases

from uaseg.selective.case_losses import case_losses
from uaseg.selective.case_stats import make_case_stats
from uaseg.selective.risk_check import check_splits, format_rows
from uaseg.selective.risk_bounds import hb_pvalue, min_calibration_cases
from uaseg.selective.risk_control import Calibration, calibrate
from uaseg.selective.risk_evaluate import evaluate


# ---------------------------------------------------------------- brute force
def bf_loss(case, t, k):
    u, p, y = case
    return 1.0 - bf_case_dice(np.where(u > t, y, p), y, k)


def bf_hb(r, n, a):
    """Bates et al. (2021) Hoeffding-Bentkus p-value, written out with math.comb."""
    x = min(r, a)
    h = (x * math.log(x / a) if x > 0 else 0.0) + (1 - x) * math.log((1 - x) / (1 - a))
    k = math.ceil(round(n * r, 9))
    cdf = sum(math.comb(n, j) * a ** j * (1 - a) ** (n - j) for j in range(0, min(k, n) + 1))
    return min(math.exp(-n * h), math.e * cdf, 1.0)


def bf_calibrate(cases, k, alpha, method, delta=None):
    """Scan every distinct u of the calibration voxels, most referral first; stop at the first failure."""
    n = len(cases)
    cands = [-np.inf] + list(np.unique(np.concatenate([c[0].ravel() for c in cases])))
    best = None
    for t in cands:
        r = np.mean([bf_loss(c, t, k) for c in cases])
        ok = (n * r + 1) / (n + 1) <= alpha if method == "crc" else bf_hb(r, n, alpha) <= delta
        if not ok:
            break
        best = t
    return best   # None: infeasible


def stats_of(cases, k):
    return [make_case_stats(u, p, y, num_classes=k, case_id=i, aggregations=()) for i, (u, p, y) in enumerate(cases)]


# ---------------------------------------------------------------- the loss
@pytest.mark.parametrize("seed", range(8))
def test_case_losses_match_brute_force_at_every_threshold(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 5))
    cases = random_cases(rng, 4, k, (5, 6), acc=float(rng.choice([0.0, 0.5, 0.9, 1.0])),
                         levels=5 if seed % 2 else None, empty_class=k - 1 if seed % 3 == 0 else None)
    losses = case_losses(stats_of(cases, k))
    allu = np.unique(np.concatenate([c[0].ravel() for c in cases]))
    for t in [-np.inf, *allu, np.inf]:
        expected = [bf_loss(c, t, k) for c in cases]
        np.testing.assert_allclose(losses.loss_at(t), expected, atol=1e-12)
    assert losses.min_raw_jump == 0.0


def test_loss_is_monotone_in_t_on_random_tiny_cases():
    """The claim itself, on brute force only: referring more never lowers a case's Dice (class left
    out when absent in both, mean over classes, all classes left out = 1.0)."""
    rng = np.random.default_rng(0)
    for _ in range(1500):
        k = int(rng.integers(2, 5))
        n = int(rng.integers(1, 7))
        case = (np.round(rng.random(n), 1), rng.integers(0, k, n), rng.integers(0, k, n) * (rng.random(n) < 0.7))
        ts = [-np.inf, *np.unique(case[0]), np.inf]
        seq = [bf_loss(case, t, k) for t in ts]
        assert all(b >= a - 1e-15 for a, b in zip(seq, seq[1:])), (case, seq)


def test_class_left_out_when_referred_raises_dice():
    """Class 2 is only a false positive (absent from the label): referring it drops the class from
    the mean (Dice 0 -> left out); the case Dice rises from mean(16/17, 0) to 1."""
    y = np.ones((3, 3), int)
    p = y.copy()
    p[0, 0] = 2
    u = np.full((3, 3), 0.1, np.float32)
    u[0, 0] = 0.9
    losses = case_losses(stats_of([(u, p, y)], 3))
    assert losses.loss_at(np.inf)[0] == pytest.approx(1 - 8 / 17)
    assert losses.loss_at(0.5)[0] == 0.0 and losses.loss_at(-np.inf)[0] == 0.0
    assert losses.min_raw_jump == 0.0


# ---------------------------------------------------------------- p-value and sizes
def test_hb_pvalue_against_written_out_formula_and_its_validity():
    for n, a, r in [(10, 0.1, 0.0), (10, 0.1, 0.05), (30, 0.05, 0.02), (50, 0.2, 0.19), (20, 0.1, 0.3)]:
        assert hb_pvalue(n * r, n, a) == pytest.approx(bf_hb(r, n, a), rel=1e-9)
    assert hb_pvalue(0.0, 40, 0.1) == pytest.approx(0.9 ** 40)
    # valid: Bernoulli(alpha) losses (risk exactly alpha) are rejected at level delta at most delta of the time
    rng = np.random.default_rng(0)
    for n, a in [(20, 0.1), (60, 0.05)]:
        p = hb_pvalue(rng.binomial(n, a, 20000).astype(float), n, a)
        assert np.mean(p <= 0.1) <= 0.1


def test_min_calibration_cases():
    assert min_calibration_cases(0.1, "crc") == 9          # 1/(n+1) <= 0.1
    assert min_calibration_cases(0.05, "crc") == 19
    assert min_calibration_cases(0.1, "ltt", 0.1) == 22    # 0.9^n <= 0.1
    assert min_calibration_cases(0.05, "ltt", 0.1) == 45
    with pytest.raises(ValueError, match="delta"):
        min_calibration_cases(0.1, "ltt")


# ---------------------------------------------------------------- calibration
@pytest.mark.parametrize("method", ["crc", "ltt"])
@pytest.mark.parametrize("seed", range(4))
def test_calibration_matches_a_scan_of_every_candidate(method, seed):
    rng = np.random.default_rng(10 + seed)
    k = int(rng.integers(2, 4))
    cases = random_cases(rng, 12, k, (4, 5), acc=0.85, levels=20 if seed % 2 else None)
    losses = case_losses(stats_of(cases, k))
    pooled = losses.with_pooled_index()      # the split check's vectorised coverage queries
    seen = set()
    for alpha in (0.02, 0.08, 0.12, 0.2, 0.3, 0.5, 0.9):
        c = calibrate(losses, alpha, method, 0.2)
        assert calibrate(pooled, alpha, method, 0.2) == c
        bf = bf_calibrate(cases, k, alpha, method, 0.2)
        assert c.feasible == (bf is not None)
        assert c.threshold == (-np.inf if bf is None else float(bf)), alpha
        assert c.risk == pytest.approx(np.mean([bf_loss(x, c.threshold, k) for x in cases]), abs=1e-12)
        seen.add("infeasible" if bf is None else "all" if c.coverage == 1 else "some")
    assert seen == {"infeasible", "some", "all"}   # every regime was exercised


def test_no_wrong_voxels_covers_everything_and_infeasible_says_so():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (30, 8, 8))
    cases = [(rng.random((8, 8)).astype(np.float32), y[i], y[i]) for i in range(30)]
    c = calibrate(stats_of(cases, 2), 0.05, "crc")
    assert c.feasible and c.coverage == 1.0 and c.risk == 0.0 and c.threshold == max(u.max() for u, _, _ in cases)
    small = calibrate(stats_of(cases[:10], 2), 0.05, "crc")       # 1/11 > 0.05
    assert not small.feasible and small.threshold == -np.inf and small.coverage == 0.0
    assert "every voxel is referred" in small.statement and "19 needed" in small.statement
    back = Calibration.from_dict(small.to_dict())
    assert back == small


def test_pooled_index_answers_like_the_per_case_indexes():
    rng = np.random.default_rng(3)
    losses = case_losses(stats_of(random_cases(rng, 9, 3, (4, 6), levels=7), 3))
    pooled = losses.with_pooled_index()
    for _ in range(50):
        sub = rng.choice(9, int(rng.integers(1, 9)), replace=False)
        t = float(rng.choice([-np.inf, np.inf, rng.random(), np.floor(rng.random() * 7) / 7]))
        assert pooled.coverage_at(t, sub) == losses.coverage_at(t, sub)
        assert pooled.below(t, sub) == losses.below(t, sub)
        assert pooled.max_u(sub) == losses.max_u(sub)


def test_evaluate_against_brute_force():
    rng = np.random.default_rng(4)
    k = 3
    cal, test = random_cases(rng, 15, k, (5, 5), acc=0.8), random_cases(rng, 6, k, (5, 5), acc=0.8)
    alpha = 0.1                               # about half the test cases' risk at full coverage
    c = calibrate(stats_of(cal, k), alpha, "crc")
    r = evaluate(c, stats_of(test, k))
    t = c.threshold
    loss = np.array([bf_loss(x, t, k) for x in test])
    allu = np.concatenate([x[0].ravel() for x in test])
    assert r["test_risk"] == pytest.approx(loss.mean(), abs=1e-12)
    assert r["test_coverage"] == pytest.approx(np.mean(allu <= t))
    assert r["test_case_risk"]["p90"] == pytest.approx(np.quantile(loss, 0.9))
    assert r["test_case_risk"]["max"] == pytest.approx(loss.max())
    assert r["test_fraction_above_alpha"] == pytest.approx(np.mean(loss > alpha))
    # oracle: the largest threshold at which these test cases' own mean risk is <= alpha
    ok = [s for s in [-np.inf, *np.unique(allu)] if np.mean([bf_loss(x, s, k) for x in test]) <= alpha]
    assert r["oracle_coverage"] == pytest.approx(np.mean(allu <= max(ok)))
    assert 0.3 < r["oracle_coverage"] < 0.95 and r["oracle_coverage"] != r["test_coverage"]
    assert r["coverage_lost"] == pytest.approx(r["oracle_coverage"] - r["test_coverage"])
    assert r["n_calibration"] == 15 and r["n_test"] == 6 and r["calibration_risk"] == c.risk


# ---------------------------------------------------------------- the guarantees
def synthetic(seed, kind, m=160):
    """``informative``/``noise``: cases of heterogeneous difficulty whose wrong voxels get higher u only
    when informative. ``all_or_nothing``: each case misses one small object whose voxels share one
    u = tau_i, so L_i(t) = 1{t >= tau_i}: Bernoulli losses, where CRC and the Hoeffding-Bentkus bound
    are nearly tight and calibrating on the plain empirical risk visibly fails."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(m):
        if kind == "all_or_nothing":
            y = np.zeros((12, 12), np.int64)
            y[5:7, 5:7] = 1
            u = rng.random(y.shape)
            u[5:7, 5:7] = rng.random()
            cases.append((u.astype(np.float32), np.zeros_like(y), y))
            continue
        y = (rng.random((12, 12)) < rng.uniform(0.2, 0.5)).astype(np.int64)
        wrong = rng.random((12, 12)) < rng.uniform(0.02, 0.25)
        p = np.where(wrong, 1 - y, y)
        u = np.where(wrong, rng.beta(4, 2, y.shape), rng.beta(2, 4, y.shape)) if kind == "informative" \
            else rng.random(y.shape)
        cases.append((u.astype(np.float32), p, y))
    return case_losses(stats_of(cases, 2))


@pytest.mark.parametrize("kind,n_cal", [("informative", 80), ("noise", 80), ("all_or_nothing", 50)])
def test_guarantees_hold_on_random_splits(kind, n_cal):
    m = 200 if kind == "all_or_nothing" else 160
    rows = check_splits(synthetic(0, kind, m), alphas=(0.05, 0.1), delta=0.1, n_cal=n_cal, splits=300, seed=1)
    print(format_rows(rows))
    for r in rows:
        assert r["holds"], r
        assert r["refer_all"] < 0.5, r      # and not by referring everything
        if r["method"] == "crc":            # CRC is nearly tight: within 0.01 of its calibration bound
            tight = (r["alpha"] * (r["n_cal"] + 1) - 1) / r["n_cal"]
            assert r["mean_test_risk"] >= tight - 0.01, r
        else:                               # the test part's own rate too
            assert r["violation"] <= 0.1 + 3 * math.sqrt(0.09 / 300), r
    if kind == "informative":               # informative uncertainties keep far more voxels than noise
        noise = {(r["method"], r["alpha"]): r["mean_coverage"]
                 for r in check_splits(synthetic(0, "noise"), (0.05, 0.1), n_cal=80, splits=20)}
        assert all(r["mean_coverage"] > noise[(r["method"], r["alpha"])] + 0.1 for r in rows)
