"""The shift testbed's parts, without training: corruptions (deterministic, per the severity table),
the ``eval.shift`` settings, the case-level referral against brute force and its guarantee, failure
AUROC, the drift range, and a case referred whole."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from uaseg.errors import ConfigError
from uaseg.selective.case_stats import make_case_stats
from uaseg.selective.risk_bounds import condition_holds
from uaseg.selective.risk_control import calibrate
from uaseg.selective.risk_evaluate import evaluate
from uaseg.shift.corruptions import KINDS, RGB_ONLY, SEVERITIES, case_seed, corrupt, parameters, parse_condition
from uaseg.shift.referral import (
    calibrate_case_referral, referral_outcome, drift_check, drift_problem, drift_record, failure_auroc, referred_whole,
)
from uaseg.shift.settings import CaseReferralSettings, ShiftSettings, accepted_counts


def _image(dims: int, seed: int = 0) -> np.ndarray:
    """A smooth image with structure (blur, motion and ghosts act on edges)."""
    rng = np.random.default_rng(seed)
    shape = (3, 24, 24) if dims == 2 else (1, 16, 16, 12)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[1:]], indexing="ij")
    blob = (sum(g ** 2 for g in grid) < 0.4).astype(np.float32)
    return (0.2 + 0.6 * blob[None] + 0.05 * rng.random(shape)).astype(np.float32)


KIND_DIMS = [(k, d) for k in KINDS for d in (2, 3) if not (k in RGB_ONLY and d == 3)]


@pytest.mark.parametrize("kind,dims", KIND_DIMS)
def test_corruption_is_deterministic_and_changes_the_image(kind, dims):
    img = _image(dims)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = corrupt(img, kind, 2, seed=7, case_id="case_001", spatial_dims=dims)
    assert torch.equal(torch.rand(3), expected_next), "the global torch generator must be left as it was"
    corrupt(img, kind, 2, seed=7, case_id="case_002", spatial_dims=dims)       # another case in between
    b = corrupt(img, kind, 2, seed=7, case_id="case_001", spatial_dims=dims)
    assert np.array_equal(a, b)                                              # same seed, same case: same image
    assert a.shape == img.shape and a.dtype == img.dtype and np.isfinite(a).all()
    assert a.min() >= img.min() - 1e-6 and a.max() <= img.max() + 1e-6       # clipped to the clean range
    assert np.abs(a - img).mean() > 1e-4                                     # it does corrupt
    t = corrupt(torch.from_numpy(img), kind, 2, seed=7, case_id="case_001", spatial_dims=dims)
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), a, atol=1e-6)


@pytest.mark.parametrize("kind", ["noise", "bias", "motion", "spike", "stain", "gamma"])
def test_other_seed_or_case_gives_other_draws(kind):
    img = _image(2)
    a = corrupt(img, kind, 3, 0, "x", 2)
    assert not np.array_equal(a, corrupt(img, kind, 3, 1, "x", 2)) or not np.array_equal(a, corrupt(img, kind, 3, 2, "x", 2))
    assert case_seed(0, kind, 3, "x") != case_seed(0, kind, 3, "y") != case_seed(1, kind, 3, "y")


def test_severity_table():
    assert set(SEVERITIES) == set(KINDS) and len(KINDS) == 10
    for kind, table in SEVERITIES.items():
        for name, values in table.items():
            assert len(values) == 5, (kind, name)
            steps = np.diff(values)
            assert (steps <= 0).all() if name == "quality" else (steps >= 0).all(), (kind, name)  # harsher with severity
        assert parameters(kind, 3) == {n: v[2] for n, v in table.items()}
    assert parameters("noise", 1) == {"std": 0.02} and parameters("jpeg", 5) == {"quality": 8}
    # noise's std is a fraction of the image's range (here 0.5 wide, the noise half the table's std)
    flat = np.full((3, 64, 64), 0.5, np.float32)
    flat[:, 0, 0], flat[:, 1, 1] = 0.25, 0.75
    diff = corrupt(flat, "noise", 3, 0, "c", 2) - flat
    assert abs(diff[:, 8:, 8:].std() - 0.5 * SEVERITIES["noise"]["std"][2]) < 0.005


@pytest.mark.parametrize("bad,message", [
    (("stain", 1, 3, 1), "for 2-D RGB images"),
    (("fog", 1, 2, 3), "unknown corruption 'fog'"),
    (("noise", 6, 2, 3), "severity 6 of noise"),
])
def test_corruption_refusals(bad, message):
    kind, sev, dims, ch = bad
    img = np.zeros((ch,) + (8,) * dims, np.float32)
    with pytest.raises(ConfigError, match=message):
        corrupt(img, kind, sev, 0, "c", dims)


def test_parse_condition():
    assert parse_condition("blur:4") == ("blur", 4)
    for bad in ("blur", "blur:x", "fog:1", "blur:9"):
        with pytest.raises(ConfigError, match="--shift"):
            parse_condition(bad)


@pytest.mark.parametrize("cfg,message", [
    ({"kinds": ["noise", "noise"]}, "noise is listed more than once"),
    ({"kinds": ["fog"]}, "unknown corruption 'fog'"),
    ({"kinds": ["noise"], "severities": [0]}, "each severity is an integer in 1..5"),
    ({"kinds": ["noise"], "fail_dice": 1.5}, "fail_dice=1.5"),
    ({"kinds": ["noise"], "case_referral": {"alpha": 2}}, "case_referral.alpha=2"),
    ({"kinds": ["noise"], "case_referral": {"alpha": 0.1, "method": "x"}}, "case_referral.method='x'"),
    ({"kinds": ["jpeg"]}, "jpeg is for 2-D RGB images"),
    ({"kinds": "noise", "groups": "yes"}, "groups='yes'"),
    ({"kinds": ["noise"], "case_referral": {"alpha": 0.1, "among": "accepted"}}, "among=accepted needs method=ltt"),
    ({"kinds": ["noise"], "case_referral": {"alpha": 0.1, "among": "some"}}, "case_referral.among='some'"),
    ({"kinds": ["noise"], "case_referral": {"alpha": None, "among": "accepted"}}, "has no effect with the case referral off"),
])
def test_settings_refusals(cfg, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ShiftSettings.from_config(cfg, spatial_dims=3, channels=1)


def test_settings_conditions():
    assert ShiftSettings.from_config({"kinds": []}) is None
    s = ShiftSettings.from_config({"kinds": ["noise", "blur"], "severities": [1, 3], "case_referral": {"alpha": 0.2}})
    assert s.conditions == [("clean", 0), ("noise", 1), ("noise", 3), ("blur", 1), ("blur", 3)]
    assert s.case_referral == CaseReferralSettings(0.2) and s.too_few(3) and not s.too_few(4)
    assert ShiftSettings.from_config({"kinds": [], "groups": True}).conditions == [("clean", 0)]
    acc = ShiftSettings.from_config({"kinds": ["noise"], "case_referral": {"alpha": 0.1, "method": "ltt", "among": "accepted"}})
    assert acc.case_referral.among == "accepted" and acc.too_few(22) and not acc.too_few(23)


def _brute_force_threshold(s, f, method, alpha, delta):
    """The largest candidate (-inf or a calibration score) whose loss meets the condition at every
    candidate up to it, computing each loss from scratch."""
    pvalue = "binom" if method == "ltt" else "hb"
    best = -np.inf
    for t in [-np.inf] + sorted(set(s.tolist())):
        if not condition_holds(method, float(np.sum((s <= t) & f)), s.size, alpha, delta, pvalue):
            break
        best = t
    return best


@pytest.mark.parametrize("method", ["crc", "ltt"])
def test_case_referral_matches_brute_force(method):
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(5, 40))
        s = np.round(rng.random(n), 1 if trial % 3 == 0 else 6)    # ties every third trial
        f = rng.random(n) < rng.uniform(0, 0.6) * (0.5 + s)         # failures likelier at high scores
        alpha = float(rng.choice([0.05, 0.1, 0.2, 0.3]))
        ref = calibrate_case_referral(s, f, CaseReferralSettings(alpha, method, 0.1))
        want = _brute_force_threshold(s, f, method, alpha, 0.1 if method == "ltt" else None)
        if not condition_holds(method, 0.0, n, alpha, 0.1 if method == "ltt" else None, "binom" if method == "ltt" else "hb"):
            assert not ref.feasible and ref.threshold == -np.inf
        else:
            assert ref.feasible and ref.threshold == want, (trial, n, alpha)
        assert ref.calibration_silent == pytest.approx(np.mean((s <= ref.threshold) & f))


def _brute_force_accepted(s, f, alpha, delta):
    """From scratch: every count m of accepted_counts, largest first; the m-th smallest score, the
    binomial test of the cases strictly below it at delta / |M|."""
    from scipy.stats import binom

    counts = accepted_counts(s.size, alpha, delta)
    for m in counts:
        t = sorted(s.tolist())[m - 1]
        below = s < t
        if below.any() and binom.cdf(int(np.sum(below & f)), int(below.sum()), alpha) <= delta / len(counts):
            return t
    return -np.inf


def test_accepted_counts_are_fixed_by_n_alpha_delta_and_can_reject():
    assert accepted_counts(22, 0.1, 0.1) == [] and accepted_counts(23, 0.1, 0.1) == [23]
    for n in (46, 100, 1000):
        m = accepted_counts(n, 0.1, 0.1)
        assert m[0] == n and m == sorted(m, reverse=True)
        assert all(0.9 ** (k - 1) <= 0.1 / len(m) for k in m)
    assert CaseReferralSettings(0.1, "ltt", 0.1, "accepted").min_cases() == 23


def test_case_referral_among_accepted_matches_brute_force():
    rng = np.random.default_rng(3)
    feasible = 0
    for trial in range(300):
        n = int(rng.integers(20, 200))
        s = np.round(rng.random(n), 2 if trial % 3 == 0 else 6)
        f = rng.random(n) < rng.uniform(0, 0.3) * (0.2 + s)
        alpha = float(rng.choice([0.05, 0.1, 0.2, 0.3]))
        ref = calibrate_case_referral(s, f, CaseReferralSettings(alpha, "ltt", 0.1, "accepted"))
        want = _brute_force_accepted(s, f, alpha, 0.1)
        assert ref.threshold == want and ref.feasible == (want > -np.inf), (trial, n, alpha)
        feasible += ref.feasible
        assert "fraction of the accepted cases that fail" in ref.statement
    assert 30 < feasible < 270      # both outcomes exercised


def test_case_referral_among_accepted_guarantee_holds_with_probability():
    """LTT's promise on the accepted cases, by simulation with a known truth: s ~ U(0, 1) and a case fails
    with probability 0.05 + 0.5 s^2, so P(fail | s <= t) = 0.05 + t^2 / 6 <= 0.1 exactly for t <= sqrt(0.3).
    The threshold exceeds that in at most delta of the draws; the joint (among all) threshold, which bounds
    another quantity, exceeds it in most draws."""
    rng = np.random.default_rng(4)
    alpha, delta, n, limit = 0.1, 0.1, 300, np.sqrt(0.3)
    over_accepted = over_all = feasible = 0
    for _ in range(400):
        s = rng.random(n)
        f = rng.random(n) < 0.05 + 0.5 * s ** 2
        ref = calibrate_case_referral(s, f, CaseReferralSettings(alpha, "ltt", delta, "accepted"))
        over_accepted += ref.threshold > limit
        feasible += ref.feasible
        over_all += calibrate_case_referral(s, f, CaseReferralSettings(alpha, "crc")).threshold > limit
    assert over_accepted / 400 <= delta + 0.03 and over_all / 400 > 0.5
    assert feasible > 40            # it does accept cases (about 18 % of draws here), not only refer all


def test_referral_outcome_checks_what_alpha_bounds():
    s, f = np.array([0.1, 0.2, 0.3, 0.9]), np.array([False, True, False, True])
    joint = referral_outcome(s, f, 0.3, 0.3)
    cond = referral_outcome(s, f, 0.3, 0.3, "accepted")
    assert joint["risk"] == 0.25 and joint["holds"]                         # 1 of 4 cases accepted and failing
    assert cond["risk"] == pytest.approx(1 / 3) and not cond["holds"]      # 1 of 3 accepted cases fails
    assert referral_outcome(s, f, -np.inf, 0.1, "accepted")["risk"] == 0.0


def test_case_referral_crc_guarantee_holds_on_average():
    """CRC's promise, by simulation: the mean over draws of the silent-failure rate of new cases is
    at most alpha, while referring nothing would break it."""
    rng = np.random.default_rng(1)
    alpha, n, realised, unreferred = 0.1, 30, [], []
    for _ in range(2000):
        s = rng.random(n + 200)
        f = rng.random(n + 200) < 0.05 + 0.5 * s ** 2       # overall failure rate ~0.22
        ref = calibrate_case_referral(s[:n], f[:n], CaseReferralSettings(alpha, "crc"))
        realised.append(np.mean((s[n:] <= ref.threshold) & f[n:]))
        unreferred.append(np.mean(f[n:]))
    assert np.mean(realised) <= alpha + 0.005 and np.mean(unreferred) > 2 * alpha


def test_failure_auroc_against_pairs():
    rng = np.random.default_rng(2)
    s, f = np.round(rng.random(40), 1), rng.random(40) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(s[f], s[~f])]
    assert failure_auroc(s, f) == pytest.approx(np.mean(pairs))
    assert failure_auroc(s, np.zeros(40, bool)) is None and failure_auroc(s, np.ones(40, bool)) is None


def test_drift_range_and_its_checks():
    rec = drift_record([0.3, 0.1, 0.2, float("nan")], "mean")
    assert rec == {"aggregation": "mean", "n": 3, "min": 0.1, "max": 0.3, "scores": [0.1, 0.2, 0.3]}
    assert drift_problem(rec) is None
    inside, high = drift_check(rec, 0.25), drift_check(rec, 0.5)
    assert not inside["outside"] and high["outside"] and high["p_value"] == pytest.approx(0.5)   # 2 * 1/(n+1)
    assert high["false_alarm_rate"] == pytest.approx(0.5)
    for bad, why in (({**rec, "scores": [0.1, 0.35, 0.3]}, "sorted"), ({**rec, "scores": [0.1, float("nan"), 0.3]}, "finite"),
                     ({**rec, "aggregation": "median"}, "aggregation"), ({**rec, "n": 4}, "matching"), ([1, 2], "mapping")):
        assert why in drift_problem(bad)


def test_a_case_referred_whole_has_no_risk_and_no_coverage():
    rng = np.random.default_rng(3)
    stats = []
    for i in range(12):
        y = (rng.random((16, 16)) < 0.4).astype(np.int64)
        p = np.where(rng.random((16, 16)) < 0.2, 1 - y, y)
        stats.append(make_case_stats(rng.random((16, 16)).astype(np.float32), p, y, num_classes=2, case_id=f"c{i}"))
    cal = calibrate(stats, 0.3, "crc")
    plain = evaluate(cal, stats)
    mixed = evaluate(cal, [referred_whole(s) if i < 6 else s for i, s in enumerate(stats)])
    half = evaluate(cal, stats[6:])
    assert mixed["test_risk"] == pytest.approx(half["test_risk"] / 2)           # six cases with loss 0
    assert mixed["test_coverage"] == pytest.approx(half["test_coverage"] / 2)   # and nothing covered
    assert plain["test_risk"] > mixed["test_risk"]


def test_the_documented_severity_table_is_the_code_s():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "shift.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] in SEVERITIES:
            rows[cells[0], cells[1]] = tuple(float(c) for c in cells[2:])
    assert rows == {(k, n): tuple(float(x) for x in v) for k, t in SEVERITIES.items() for n, v in t.items()}


def _stats(rng, n, group, prefix, err):
    out = []
    for i in range(n):
        y = (rng.random((12, 12)) < 0.4).astype(np.int64)
        p = np.where(rng.random((12, 12)) < err, 1 - y, y)
        u = np.clip(rng.random((12, 12)) * 0.5 + 0.4 * (p != y), 0, 1).astype(np.float32)
        out.append(make_case_stats(u, p, y, num_classes=2, case_id=f"{prefix}{i}", group=group, aggregations=("mean",)))
    return out


def test_natural_groups_get_their_own_rows_and_their_own_recalibration():
    from uaseg.shift.measure import shift_block

    rng = np.random.default_rng(4)
    val = _stats(rng, 12, "siteA", "va", 0.1) + _stats(rng, 12, "siteB", "vb", 0.3)
    test = _stats(rng, 10, "siteA", "ta", 0.1) + _stats(rng, 10, "siteB", "tb", 0.3)
    record = {"calibrations": {"crc": {"0.2": calibrate(val, 0.2, "crc").to_dict()}}}
    settings = ShiftSettings.from_config({"kinds": [], "groups": True, "case_referral": {"alpha": 0.3}})
    block = shift_block(settings, {("clean", 0): test}, {("clean", 0): val}, record, "mean", (0.9,))
    assert [(r["condition"], r["group"], r["n_cases"]) for r in block["rows"]] == [
        ("clean", "all", 20), ("clean", "siteA", 10), ("clean", "siteB", 10)]
    for row, cal_cases in zip(block["rows"], (val, val[:12], val[12:])):
        want = calibrate(cal_cases, 0.2, "crc")
        got = row["risk"][0]["recalibrated"]
        assert got["threshold"] == want.threshold and got["n_calibration"] == len(cal_cases)
        assert got["risk"] == pytest.approx(evaluate(want, [s for s in test if row["group"] in ("all", s.group)])["test_risk"])
    assert block["rows"][2]["failure_rate"] >= block["rows"][1]["failure_rate"]
