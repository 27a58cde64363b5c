"""Test-time uncertainty scores (eval.scores), temperature scaling, flip TTA, MC dropout, deep
ensembles and the Methods table: each against hand-computed values or an exact equivalence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import compose_cfg, FAST, TINY, stage_seconds
from test_report import make_summary, write_run

from uaseg.errors import ConfigError
from uaseg.losses.scores import get_score
from uaseg.train import build_module, train
from uaseg.uncertainty import MeanOfPasses, check_scores, deterministic_scores, entropy
from uaseg.uncertainty.temperature import fit_temperature
from uaseg.uncertainty.tta import flip_sets

# two voxels, two classes: probabilities (0.5, 0.5) and (e^2 / (1 + e^2), 1 / (1 + e^2))
LOGITS = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]]])  # (B=1, K=2, 1, 2)


def _p(z):
    return math.exp(z) / (1 + math.exp(z))


# ---------------------------------------------------------------------------------------- scores by hand
def test_one_pass_scores_by_hand():
    out = deterministic_scores(LOGITS, temperature=2.0)
    p = _p(2.0)
    u, pred = out["max_softmax"]
    assert u.flatten().tolist() == pytest.approx([0.5, 1 - p])
    assert pred.flatten().tolist() == [0, 0]
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)
    assert out["entropy"][0].flatten().tolist() == pytest.approx([1.0, h])
    assert out["temperature"][0].flatten().tolist() == pytest.approx([0.5, 1 - _p(1.0)])  # z / T = 1
    assert "temperature" not in deterministic_scores(LOGITS, temperature=None)


def test_mean_of_passes_by_hand():
    """Two passes (0.9, 0.1) and (0.5, 0.5): mean (0.7, 0.3), MI = H(mean) - mean H."""
    acc = MeanOfPasses()
    acc.add(torch.tensor([[[0.9]], [[0.1]]])[None])
    acc.add(torch.tensor([[[0.5]], [[0.5]]])[None])
    s = acc.scores("mc", "mc_dropout")
    ln2 = math.log(2)
    h = lambda q: -(q * math.log(q) + (1 - q) * math.log(1 - q)) / ln2  # noqa: E731
    assert float(s["mc_dropout"][0]) == pytest.approx(0.3)
    assert float(s["mc_entropy"][0]) == pytest.approx(h(0.7))
    assert float(s["mc_mutual_information"][0]) == pytest.approx(h(0.7) - (h(0.9) + 1.0) / 2)
    assert int(s["mc_dropout"][1]) == 0


def test_training_score_entropy_matches_hand_value_and_is_differentiable():
    z = LOGITS.clone().double().requires_grad_(True)
    u, pred = get_score("entropy")(z)
    p = _p(2.0)
    assert u.flatten().tolist() == pytest.approx([1.0, -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)])
    u.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    big = torch.tensor([[[[80.0]], [[-80.0]]]], requires_grad=True)  # a probability underflows to 0
    get_score("entropy")(big)[0].sum().backward()
    assert torch.isfinite(big.grad).all()


@pytest.mark.parametrize("k", [3, 8])
def test_entropy_is_divided_by_log_k(k):
    """Uniform -> 1, one-hot -> 0 and a hand value, for K = 3 and K = 8, in the test-time entropy (and so
    the mutual information of MeanOfPasses) and in the training score (from logits)."""
    half = torch.zeros(k, dtype=torch.float64)
    half[:2] = 0.5  # two classes at 1/2: H = log 2, so log 2 / log K
    p = torch.stack([torch.full((k,), 1.0 / k, dtype=torch.float64), torch.eye(k, dtype=torch.float64)[k - 1], half])
    prob = p.T[None, :, :, None]  # (B=1, K, 3 voxels, 1)
    want = [1.0, 0.0, math.log(2) / math.log(k)]
    assert entropy(prob).flatten().tolist() == pytest.approx(want, abs=1e-12)
    logits = torch.log(prob.clamp_min(1e-300))  # softmax(log p) = p
    assert get_score("entropy")(logits)[0].flatten().tolist() == pytest.approx(want, abs=1e-9)
    acc = MeanOfPasses()
    acc.add(prob[:, :, 1:2])  # one-hot, then uniform: MI = H(mean) - (0 + 1) / 2
    acc.add(prob[:, :, :1])
    mean = (p[0] + p[1]) / 2
    h_mean = float(-(mean * mean.log()).sum() / math.log(k))
    s = acc.scores("mc", "mc_dropout")
    assert float(s["mc_entropy"][0]) == pytest.approx(h_mean)
    assert float(s["mc_mutual_information"][0]) == pytest.approx(h_mean - 0.5)


def test_score_names_are_checked():
    assert check_scores(["max_softmax", "tta"]) == ["max_softmax", "tta"]
    with pytest.raises(ConfigError, match="unknown score 'bogus'"):
        check_scores(["bogus"])
    with pytest.raises(ConfigError, match="unknown score 'ensemble'"):  # only `uaseg ensemble` makes those
        check_scores(["ensemble"])
    with pytest.raises(ConfigError, match="twice"):
        check_scores(["tta", "tta"])
    assert flip_sets(2, "all") == [(), (0,), (1,), (0, 1)] and len(flip_sets(3, "all")) == 8
    with pytest.raises(ConfigError, match="axes must lie in 0..1"):
        flip_sets(2, [[2]])


# ---------------------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_temperature_fit_recovers_the_temperature_that_generated_the_labels(t_true):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40000, 4, generator=g, dtype=torch.float64) * 3
    y = torch.multinomial((z / t_true).softmax(1), 1, generator=g)[:, 0]
    assert fit_temperature(z, y) == pytest.approx(t_true, rel=0.05)


class _FakeData:
    """Batches of two cases whose image holds the case index (read by the fake modules)."""

    def __init__(self, labels, batch_size=2):
        self.labels, self.batch_size = labels, batch_size
        self.splits = {"val": [f"case{i}" for i in range(len(labels))]}

    def setup(self, stage=None):
        pass

    def test_dataloader(self):
        n = len(self.labels)
        for s in range(0, n, self.batch_size):
            idx = list(range(s, min(s + self.batch_size, n)))
            image = torch.tensor(idx, dtype=torch.float32)[:, None, None, None].expand(-1, 1, *self.labels[0].shape)
            yield {"image": image.clone(), "label": torch.stack([self.labels[i] for i in idx])[:, None],
                   "case_id": [f"case{i}" for i in idx]}

    val_dataloader = test_dataloader


class _FixedLogits:
    """A module whose sliding-window inference returns stored logits (the case index is in the image)."""

    def __init__(self, logits):
        self.logits, self.net = logits, None

    def eval(self):
        return self

    def to(self, device):
        return self

    def inferer(self, image, net):
        return torch.stack([self.logits[int(i)] for i in image[:, 0, 0, 0]])


def test_temperature_fit_on_validation_flattens_voxels_not_classes():
    """Validation logits (B, K, H, W) in batches of two: the fitted T is the brute-force minimiser of
    the voxel NLL over (voxel, its K logits) pairs; flattening that mixes class and spatial axes (or
    pairs a voxel with another voxel's label) gives another T."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    from uaseg.stages.temperature import fit_temperature_on_validation

    g = torch.Generator().manual_seed(0)
    k, shape, n = 4, (7, 5), 5
    logits = torch.randn(n, k, *shape, generator=g, dtype=torch.float64) * 3
    labels = torch.stack([torch.multinomial((z / 0.6).softmax(0).movedim(0, -1).reshape(-1, k), 1, generator=g)
                          .reshape(shape) for z in logits])
    t, used = fit_temperature_on_validation(_FixedLogits(logits.float()), _FakeData(list(labels)), max_voxels=10 ** 6)
    assert used == n * 7 * 5

    def brute(z, y):  # z (N, K), y (N,): minimise the mean NLL over T itself
        def nll(temp):
            s = z / temp
            return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))
        return minimize_scalar(nll, bounds=(1e-3, 1e3), method="bounded", options={"xatol": 1e-9}).x

    z32 = logits.float().double().numpy()
    right = brute(z32.transpose(0, 2, 3, 1).reshape(-1, k), labels.numpy().reshape(-1))
    assert t == pytest.approx(right, rel=1e-3)
    mixed = brute(z32.reshape(-1, k), labels.numpy().reshape(-1))  # classes and space mixed up
    swapped = brute(z32.transpose(0, 2, 3, 1).reshape(-1, k), labels.numpy().transpose(0, 2, 1).reshape(-1))
    assert abs(mixed - right) > 0.1 * right and abs(swapped - right) > 0.1 * right


# ---------------------------------------------------------------------------------------- a module's passes
def _module(tmp_path, *extra):
    cfg = compose_cfg(["dataset=demo2d", *TINY["demo2d"], *FAST, *extra], tmp_path / "run", tmp_path / "cache")
    torch.manual_seed(0)
    return build_module(cfg).eval()


IMAGE = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(1))


def test_tta_with_the_identity_only_is_the_plain_pass(tmp_path):
    m = _module(tmp_path, "eval.scores=[max_softmax,tta]", "eval.tta_flips=[[]]")
    out = m.score_maps(IMAGE)
    assert torch.equal(out["tta"][1], out["max_softmax"][1])
    torch.testing.assert_close(out["tta"][0], out["max_softmax"][0])


def test_flips_map_back_exactly(tmp_path):
    """A pointwise (hence flip-equivariant) network: every flipped pass, flipped back, equals the plain
    one, so TTA over all flips gives the plain probabilities; a network that is not equivariant
    (the U-Net) gives different ones, so the flips were really applied."""
    m = _module(tmp_path, "eval.scores=[max_softmax,tta]")
    unet = m.score_maps(IMAGE)
    assert not torch.allclose(unet["tta"][0], unet["max_softmax"][0])
    m.net = torch.nn.Conv2d(3, 2, 1)
    out = m.score_maps(IMAGE)
    torch.testing.assert_close(out["tta"][0], out["max_softmax"][0], atol=1e-6, rtol=0)
    assert torch.equal(out["tta"][1], out["max_softmax"][1])


def test_mc_dropout_needs_dropout_and_equals_the_plain_pass_when_dropout_does_nothing(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="model.dropout"):
        _module(tmp_path, "eval.scores=[mc_dropout]").score_maps(IMAGE)
    m = _module(tmp_path, "eval.scores=[max_softmax,mc_dropout,mc_mutual_information]", "model.dropout=0.3",
                "eval.mc_samples=4")
    sampled = m.score_maps(IMAGE)
    assert float(sampled["mc_mutual_information"][0].max()) > 1e-4  # dropout really sampled
    assert all(not mod.training for mod in m.net.modules())  # and inference mode restored
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    out = m.score_maps(IMAGE)
    torch.testing.assert_close(out["mc_dropout"][0], out["max_softmax"][0], atol=1e-6, rtol=0)
    assert torch.equal(out["mc_dropout"][1], out["max_softmax"][1])
    assert float(out["mc_mutual_information"][0].abs().max()) < 1e-6


@pytest.mark.parametrize("samples", [1, 4])
def test_mc_dropout_runs_exactly_mc_samples_passes(tmp_path, samples):
    """Forward calls of the network, counted: eval.mc_samples passes of the one-pass inference each
    (and one pass per flip for tta), as the cost in the summary says. A pointwise network with
    dropout keeps it fast."""
    m = _module(tmp_path, "eval.scores=[mc_dropout,mc_entropy,tta]", "model.dropout=0.3", f"eval.mc_samples={samples}",
                "eval.tta_flips=[[],[0],[1]]")
    m.net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Dropout(0.3))
    calls = []
    m.net.register_forward_pre_hook(lambda mod, args: calls.append(1))
    m.inferer(IMAGE, m.net)
    one_pass = len(calls)
    assert one_pass >= 1
    calls.clear()
    m.score_maps(IMAGE)
    assert len(calls) == (samples + 3) * one_pass
    assert m.family_passes("mc") == samples and m.family_passes("tta") == 3


# ---------------------------------------------------------------------------------------- a run, an ensemble
RUN_ARGS = ("loss.lambda=0", "model.dropout=0.2", "eval.mc_samples=2", "eval.figures=false", "eval.save_arrays=true",
            "eval.scores=[max_softmax,entropy,temperature,tta,mc_dropout]")


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    """Two tiny runs that differ only in seed, in a multirun-like folder."""
    root = tmp_path_factory.mktemp("multi")
    for i, seed in enumerate((1, 2)):
        cfg = compose_cfg(["dataset=demo2d", *TINY["demo2d"], *FAST, f"seed={seed}", *RUN_ARGS],
                          root / f"{i}_seed={seed}", root / "cache")
        train(cfg)
    return root


def test_every_score_is_reported_with_its_cost_arrays_and_scalars(seed_runs):
    run = seed_runs / "0_seed=1"
    s = json.loads((run / "summary.json").read_text())
    assert list(s["scores"]) == ["max_softmax", "entropy", "temperature", "tta", "mc_dropout"]
    assert s["aurc_dice"] == s["scores"]["max_softmax"]["aurc_dice"]  # the top level is the first score
    assert s["temperature"] > 0 and s["method"] == "single"
    stage_seconds(run, "temperature", "val_curves", "test")  # entropy's curve; no head, no risk control
    ck = torch.load(s["checkpoint"], map_location="cpu", weights_only=True)
    assert ck["uaseg_temperature"] == pytest.approx(s["temperature"])
    assert s["scores"]["tta"]["cost"]["passes"] == 4 and s["scores"]["mc_dropout"]["cost"]["passes"] == 2
    assert s["scores"]["tta"]["prediction"].startswith("argmax of the mean")
    z = np.load(next((run / "predictions").glob("*.npz")))
    assert {"uncertainty_tta", "prediction_tta", "uncertainty_entropy", "prediction_mc_dropout"} <= set(z.files)
    assert "prediction_entropy" not in z.files
    np.testing.assert_array_equal(z["uncertainty_max_softmax"], z["uncertainty"])
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test/aurc_dice" in header and "test/tta/aurc_dice" in header and "test/max_softmax/aurc_dice" not in header
    assert (run / "curves_tta.csv").exists()


def test_an_ensemble_of_copies_of_one_checkpoint_is_that_checkpoint(seed_runs):
    from uaseg.inference import load_model
    from uaseg.inference.ensemble import evaluate_ensemble

    s = json.loads((seed_runs / "0_seed=1" / "summary.json").read_text())
    model = load_model(s["checkpoint"])
    out = evaluate_ensemble([model, model, model])
    one = out["results"]["ensemble"]
    assert one.aurc_dice == pytest.approx(s["aurc_dice"], abs=1e-9)
    assert one.dice_full.mean == pytest.approx(s["dice_full"]["mean"], abs=1e-12)
    assert out["results"]["ensemble_mutual_information"].voxel_error_rate == pytest.approx(s["voxel_error_rate"])
    assert out["costs"]["ensemble"]["passes"] == 3


def test_uaseg_ensemble_and_the_methods_table(seed_runs, capsys):
    from uaseg.cli import main as cli

    assert cli(["ensemble", str(seed_runs)]) == 0
    (folder,) = (seed_runs / "ensembles").iterdir()
    s = json.loads((folder / "summary.json").read_text())
    assert f"(Dice {100 * s['dice_full']['mean']:.2f} %)" in capsys.readouterr().out  # Dice in %, as everywhere
    assert s["method"] == "ensemble" and len(s["members"]) == 2 and s["member_seeds"] == [1, 2]
    assert list(s["scores"]) == ["ensemble", "ensemble_entropy", "ensemble_mutual_information"]
    assert 0 <= s["case_level_pairwise_dice"]["aurc"] <= 100
    assert cli(["ensemble", str(seed_runs)]) == 2  # never overwritten without --force
    assert cli(["report", str(seed_runs), "--no-figures"]) == 0
    md = (seed_runs / "report.md").read_text()
    table = md.split("## Methods")[1]
    for row in ("| λ=0 (baseline) | max_softmax |", "| λ=0 (baseline) | tta |", "| λ=0 (baseline) + ensemble | ensemble |",
                "| λ=0 (baseline) + ensemble | pairwise_dice |"):
        assert row in table, row


# ---------------------------------------------------------------------------------------- the Methods table
def test_methods_table_rows_and_relative_changes(tmp_path):
    """Fake runs: 2 settings x 2 scores x 2 seeds; AURC of a row = mean over its seeds; relative
    change against (λ = 0, max_softmax) computed here by hand."""
    from uaseg.report.methods import method_rows, render_methods, row_values

    rng = np.random.default_rng(0)
    aurc = {}
    for i, (lam, seed) in enumerate([(0.0, 1), (0.0, 2), (2.0, 1), (2.0, 2)]):
        s = make_summary(rng, fold=0, lam=lam, seed=seed)
        s["scores"] = {}
        for score, off in (("max_softmax", 0.0), ("tta", -3.0)):
            part = json.loads(json.dumps(s))
            part["aurc_dice"] = 20.0 - 2 * lam + off + seed  # known values
            aurc.setdefault((lam, score), []).append(part["aurc_dice"])
            s["scores"][score] = {**part, "cost": {"passes": 1 if score == "max_softmax" else 4,
                                                   "seconds_per_case": 0.1}, "prediction": "p"}
        s.update({k: v for k, v in s["scores"]["max_softmax"].items() if k not in ("cost", "prediction", "scores")})
        write_run(tmp_path / f"{i}", s, [f"loss.lambda={lam:g}", f"seed={seed}"])
    from uaseg.report import collect

    (ctx, rows), = method_rows(collect(tmp_path)[0]).items()
    assert [(r.loss == (), r.score) for r in rows] == [(True, "max_softmax"), (True, "tta"),
                                                       (False, "max_softmax"), (False, "tta")]
    ref = rows[0]
    want_ref = np.mean(aurc[(0.0, "max_softmax")])
    for r in rows:
        lam = 0.0 if r.loss == () else 2.0
        v = row_values(r, ref)
        assert v["aurc_dice"] == pytest.approx(np.mean(aurc[(lam, r.score)]))
        assert v["aurc_sd"] == pytest.approx(np.std(aurc[(lam, r.score)], ddof=1))  # the seed spread
        if r is not ref:
            assert v["rel_aurc_pct"] == pytest.approx(100 * (np.mean(aurc[(lam, r.score)]) - want_ref) / want_ref)
        assert v["passes"] == (1 if r.score == "max_softmax" else 4)
    md, tidy = render_methods({ctx: rows})
    assert md.count("\n| λ") == 4 and "reference" in md and len(tidy) == 4


# ---------------------------------------------------------------------------------------- ensembles of different members
class _FakeModule:
    """A member that returns fixed probabilities per case (the case index is written in the image)."""

    def __init__(self, probs, evaluation):
        self.probs, self.hparams = probs, {"evaluation": evaluation}

    def to(self, device):
        return self

    def eval(self):
        return self

    def segment(self, image):
        prob = torch.stack([self.probs[int(i)] for i in image[:, 0, 0, 0]])
        conf, pred = prob.max(dim=1)
        return 1.0 - conf, pred, prob


def _h(p, axis=0):
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis) / math.log(p.shape[axis])


def test_an_ensemble_of_different_members_against_a_hand_computation(monkeypatch):
    """Three members with different probabilities on four cases (K = 3): the ensemble's scores are
    those of the numpy mean of all members, and the case score is 1 - the mean Dice over all three
    member pairs (higher = members disagree = refer first)."""
    from selectivecases import bf_case_dice

    import uaseg.inference.ensemble as ens
    from uaseg.inference.model import LoadedModel
    from uaseg.selective import SelectiveAccumulator

    rng = np.random.default_rng(3)
    k, n_cases, n_members, shape = 3, 4, 3, (5, 7)
    # member probabilities: Dirichlet, sharper for member 0 so argmaxes differ between members
    probs = rng.dirichlet(np.ones(k) * 0.5, size=(n_members, n_cases, *shape)).transpose(0, 1, 4, 2, 3)
    labels = rng.integers(0, k, (n_cases, *shape))
    evaluation = {"coverages": [0.9, 0.8], "quantize_bits": None, "case_aggregation": "mean", "bootstrap": 0}
    data = _FakeData([torch.from_numpy(y) for y in labels])
    members = [LoadedModel(module=_FakeModule(torch.from_numpy(probs[j]).float(), evaluation), datamodule=data,
                           dataset_cfg={}, val_curve=None, spatial_dims=2, in_channels=1, num_classes=k)
               for j in range(n_members)]
    seen = {}
    real_aurc = ens.case_level_aurc

    def spy(u, risk, **kw):
        seen["u"], seen["risk"] = np.asarray(u), np.asarray(risk)
        return real_aurc(u, risk, **kw)

    monkeypatch.setattr(ens, "case_level_aurc", spy)
    out = ens.evaluate_ensemble(members)

    # the scores: every member averaged, by hand
    mean = probs.astype(np.float32).mean(0)  # (cases, K, H, W)
    pred = mean.argmax(1)
    by_hand = {"ensemble": 1.0 - mean.max(1), "ensemble_entropy": _h(mean, 1),
               "ensemble_mutual_information": np.clip(_h(mean, 1) - _h(probs, 2).mean(0), 0, None)}
    for name, u in by_hand.items():
        ref = SelectiveAccumulator(k, coverages=[0.9, 0.8], bootstrap=0)
        for i in range(n_cases):
            ref.add_case(torch.from_numpy(u[i]).float(), torch.from_numpy(pred[i]), torch.from_numpy(labels[i]),
                         case_id=f"case{i}")
        want, got = ref.compute(), out["results"][name]
        assert got.aurc == pytest.approx(want.aurc, abs=1e-6), name
        assert got.aurc_dice == pytest.approx(want.aurc_dice, abs=1e-4), name
        assert [c.at_coverage["1.00"].dice for c in got.cases] == pytest.approx(
            [bf_case_dice(pred[i], labels[i], k) for i in range(n_cases)]), name
    # the members really disagree, so one member alone (or two) would give other numbers
    assert len({tuple(probs[j].argmax(1).ravel()) for j in range(n_members)}) == n_members

    # the case-level score: 1 - mean Dice over the 3 pairs (0,1), (0,2), (1,2), in case order
    member_pred = probs.argmax(2)  # (members, cases, H, W)
    want = [1.0 - np.mean([bf_case_dice(member_pred[a, i], member_pred[b, i], k)
                           for a, b in ((0, 1), (0, 2), (1, 2))]) for i in range(n_cases)]
    np.testing.assert_allclose(seen["u"], want, atol=1e-12)
    np.testing.assert_allclose(seen["risk"], [1 - bf_case_dice(pred[i], labels[i], k) for i in range(n_cases)])
    # each pair's Dice differs, so any subset of the pairs gives another score
    pair_dice = [bf_case_dice(member_pred[a, 0], member_pred[b, 0], k) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert len(set(np.round(pair_dice, 9))) == 3
    assert ens.pairwise_dice([torch.from_numpy(member_pred[j, 0]) for j in range(3)], k) == pytest.approx(
        np.mean(pair_dice))


def test_an_ensemble_leaves_the_ignore_label_out_of_every_number(monkeypatch, caplog):
    """nnU-Net's ignore label (3, with K = 3): the ensemble's numbers are those of the cases with the
    ignored voxels cut out -- each score's results, the case Dice behind the case-level risk and the
    members' pairwise Dice -- and a case with no annotated voxel is left out with a warning."""
    import logging

    from selectivecases import bf_case_dice

    import uaseg.inference.ensemble as ens
    from uaseg.inference.model import LoadedModel
    from uaseg.selective import SelectiveAccumulator

    rng = np.random.default_rng(5)
    k, n_cases, n_members, shape = 3, 5, 3, (6, 7)
    probs = rng.dirichlet(np.ones(k) * 0.5, size=(n_members, n_cases, *shape)).transpose(0, 1, 4, 2, 3)
    labels = rng.integers(0, k + 1, (n_cases, *shape))  # value k: not annotated
    labels[4] = k  # a case with nothing annotated
    evaluation = {"coverages": [0.9, 0.8], "quantize_bits": None, "case_aggregation": "mean", "bootstrap": 0}
    data = _FakeData([torch.from_numpy(y) for y in labels])
    members = []
    for j in range(n_members):
        module = _FakeModule(torch.from_numpy(probs[j]).float(), evaluation)
        module.ignore_label = k
        members.append(LoadedModel(module=module, datamodule=data, dataset_cfg={}, val_curve=None, spatial_dims=2,
                                   in_channels=1, num_classes=k))
    seen = {}
    real_aurc = ens.case_level_aurc

    def spy(u, risk, **kw):
        seen["u"], seen["risk"] = np.asarray(u), np.asarray(risk)
        return real_aurc(u, risk, **kw)

    monkeypatch.setattr(ens, "case_level_aurc", spy)
    with caplog.at_level(logging.WARNING, logger="uaseg.inference.ensemble"):
        out = ens.evaluate_ensemble(members)
    assert any("case4: every voxel is labelled ignore (3)" in r.getMessage() for r in caplog.records)

    mean = probs.astype(np.float32).mean(0)
    pred, member_pred, keep = mean.argmax(1), probs.argmax(2), labels != k
    kept = range(n_cases - 1)
    u_all = {"ensemble": 1.0 - mean.max(1), "ensemble_entropy": _h(mean, 1),
             "ensemble_mutual_information": np.clip(_h(mean, 1) - _h(probs, 2).mean(0), 0, None)}
    for name, u in u_all.items():
        ref = SelectiveAccumulator(k, coverages=[0.9, 0.8], bootstrap=0)  # the cases without their ignored voxels
        for i in kept:
            m = keep[i]
            ref.add_case(torch.from_numpy(u[i][m]).float(), torch.from_numpy(pred[i][m]),
                         torch.from_numpy(labels[i][m]), case_id=f"case{i}")
        want, got = ref.compute(), out["results"][name]
        assert [c.case_id for c in got.cases] == [f"case{i}" for i in kept]
        assert got.aurc == pytest.approx(want.aurc, abs=1e-6), name
        assert got.aurc_dice == pytest.approx(want.aurc_dice, abs=1e-4), name
        assert got.dice_full.mean == pytest.approx(want.dice_full.mean, abs=1e-12), name
    pairs = ((0, 1), (0, 2), (1, 2))
    want_u = [1.0 - np.mean([bf_case_dice(member_pred[a, i][keep[i]], member_pred[b, i][keep[i]], k) for a, b in pairs])
              for i in kept]
    np.testing.assert_allclose(seen["u"], want_u, atol=1e-12)
    np.testing.assert_allclose(seen["risk"], [1 - bf_case_dice(pred[i][keep[i]], labels[i][keep[i]], k) for i in kept])
    # counted, the ignored voxels would change the members' disagreement
    every = [1.0 - np.mean([bf_case_dice(member_pred[a, i], member_pred[b, i], k) for a, b in pairs]) for i in kept]
    assert not np.allclose(every, want_u, atol=1e-6)


def test_uaseg_ensemble_on_a_dataset_with_an_ignore_label(tmp_path):
    """Two seeds on a tiny nnU-Net dataset whose labels leave voxels unannotated: ``uaseg ensemble``
    writes its run, and an ensemble of copies of one member gives that member's own test numbers
    (which leave the ignored voxels out)."""
    from layoutfiles import make_nnunet_2d

    from uaseg.cli import main as cli
    from uaseg.inference import load_model
    from uaseg.inference.ensemble import evaluate_ensemble

    data = make_nnunet_2d(tmp_path / "Dataset005_Sparse", ignore=True, n_test=0)
    for i, seed in enumerate((1, 2)):
        train(compose_cfg(["dataset=nnunet", f"dataset.root={data}", "dataset.num_workers=0", "dataset.cache=false",
                           *FAST, f"seed={seed}", "loss.lambda=0", "eval.figures=false"],
                          tmp_path / "multi" / f"{i}_seed={seed}", tmp_path / "cache"))
    s = json.loads((tmp_path / "multi" / "0_seed=1" / "summary.json").read_text())
    model = load_model(s["checkpoint"])
    assert model.module.ignore_label == 3
    one = evaluate_ensemble([model, model])["results"]["ensemble"]
    assert one.aurc_dice == pytest.approx(s["aurc_dice"], abs=1e-9)
    assert one.dice_full.mean == pytest.approx(s["dice_full"]["mean"], abs=1e-12)
    assert cli(["ensemble", str(tmp_path / "multi")]) == 0
    (folder,) = (tmp_path / "multi" / "ensembles").iterdir()
    ens = json.loads((folder / "summary.json").read_text())
    assert ens["method"] == "ensemble" and [c["case_id"] for c in ens["cases"]] == [c["case_id"] for c in s["cases"]]


def test_ensemble_members_with_as_many_but_other_test_cases_are_refused(tmp_path, capsys):
    """Members are compared by their test case ids, not by how many there are."""
    from uaseg.cli import main as cli
    from uaseg.errors import UserError
    from uaseg.report import collect
    from uaseg.report.grouping import seed_groups

    rng = np.random.default_rng(0)
    for i, seed in enumerate((1, 2)):
        s = make_summary(rng, fold=0, lam=0.0, seed=seed, n_cases=4)
        if seed == 2:  # as many cases, one of them another
            s["cases"][3]["case_id"] = "f0_case9"
        write_run(tmp_path / f"{i}_seed={seed}", s, ["loss.lambda=0", f"seed={seed}"])
    with pytest.raises(UserError, match="different cases") as e:
        seed_groups(collect(tmp_path)[0])
    assert "f0_case3" in str(e.value) and "f0_case9" in str(e.value)
    assert cli(["ensemble", str(tmp_path)]) == 2
    assert "different cases" in capsys.readouterr().err
    assert not (tmp_path / "ensembles").exists()
