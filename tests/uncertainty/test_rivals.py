"""The one-pass rivals of the Methods table: the free post-hoc scores (margin, doctor, max_logit,
energy), the ``margin`` training score and the ConfidNet head (``confidence_head=tcp``, score
``tcp``) -- each against a per-voxel brute force or a hand computation, and end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import FAST, TINY, compose_cfg, stage_seconds
from PIL import Image

from uaseg.config.check import check_config
from uaseg.errors import ConfigError
from uaseg.losses.scores import get_score
from uaseg.uncertainty import deterministic_scores
from uaseg.uncertainty.confidnet import (
    HEAD_KEY,
    ConfidenceHead,
    HeadSettings,
    WithConfidence,
    fit_confidence_head,
    logits_and_features,
    true_class_probability,
)

FREE = ("margin", "logit_margin", "doctor", "max_logit", "energy")


def _brute(z: np.ndarray) -> dict[str, float]:
    """One voxel's free scores from its logits, written out in float64."""
    p = np.exp(z - z.max())
    p /= p.sum()
    top = sorted(p, reverse=True)
    k = len(z)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    zt = sorted(z, reverse=True)
    return {"margin": 1.0 - (top[0] - top[1]), "logit_margin": sig(-float(zt[0] - zt[1])), "doctor": (1.0 - float((p ** 2).sum())) / (1.0 - 1.0 / k),
            "max_logit": sig(-float(z.max())), "energy": sig(-math.log(float(np.exp(z).sum())))}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_free_scores_match_a_per_voxel_brute_force(k):
    z = torch.randn(2, k, 3, 4, generator=torch.Generator().manual_seed(k), dtype=torch.float64) * 3
    out = deterministic_scores(z, temperature=None)
    zn = z.numpy()
    for b in range(2):
        for i in range(3):
            for j in range(4):
                want = _brute(zn[b, :, i, j])
                for name in FREE:
                    assert float(out[name][0][b, i, j]) == pytest.approx(want[name], rel=1e-5, abs=1e-6), name
                    assert int(out[name][1][b, i, j]) == int(zn[b, :, i, j].argmax())


def test_binary_margin_and_doctor_rank_like_max_softmax_and_logit_scores_do_not():
    """Two classes: margin = 2 (1 - p_max), doctor = 4 p (1 - p), both monotone in p_max. Logits
    (0, 1) and (10, 11) have the same softmax but different max logit and energy."""
    z = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(0)) * 4
    out = deterministic_scores(z, temperature=None)
    u = out["max_softmax"][0]
    torch.testing.assert_close(out["margin"][0], 2 * u, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["logit_margin"][0], u, atol=1e-6, rtol=0)
    p = 1.0 - u
    torch.testing.assert_close(out["doctor"][0], 4 * p * (1 - p), atol=1e-6, rtol=0)
    order = torch.argsort(u.flatten())
    for name in ("margin", "doctor"):
        assert torch.all(torch.diff(out[name][0].flatten()[order]) >= -1e-6), name
    same_softmax = torch.tensor([[[0.0, 10.0], [1.0, 11.0]]])  # (B, K=2, 2 voxels)
    s = deterministic_scores(same_softmax, temperature=None)
    assert float(s["max_softmax"][0][0, 0]) == pytest.approx(float(s["max_softmax"][0][0, 1]), abs=1e-6)
    for name in ("max_logit", "energy"):
        assert float(s[name][0][0, 0]) > float(s[name][0][0, 1]) + 0.1, name  # small logits refer first


def test_free_scores_stay_in_the_unit_interval_at_extremes():
    z = torch.tensor([[[1000.0, -1000.0, 0.0, 5.0], [-1000.0, 1000.0, 0.0, 5.0]]])  # (B, K=2, 4)
    for name in FREE:
        u = deterministic_scores(z, temperature=None)[name][0]
        assert torch.isfinite(u).all() and u.min() >= 0 and u.max() <= 1, name
    s = deterministic_scores(z, temperature=None)
    assert s["margin"][0][0, 2] == pytest.approx(1.0) and s["doctor"][0][0, 3] == pytest.approx(1.0)  # ties: 1
    assert s["margin"][0][0, 0] == pytest.approx(0.0) and s["doctor"][0][0, 0] == pytest.approx(0.0)  # sure: 0


def test_training_score_margin_matches_brute_force_and_is_differentiable():
    z = (torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2).requires_grad_(True)
    u, pred = get_score("margin")(z)
    for b in range(2):
        for i in range(5):
            assert float(u[b, i].detach()) == pytest.approx(_brute(z.detach().numpy()[b, :, i])["margin"], rel=1e-9)
    assert torch.equal(pred, z.argmax(dim=1))
    u.sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    z2 = torch.randn(1, 2, 7, dtype=torch.float64)
    torch.testing.assert_close(get_score("margin")(z2)[0], 2 * get_score("max_softmax")(z2)[0])


def test_training_score_logit_margin_is_the_top_two_logit_gap_with_a_gradient_that_never_vanishes():
    """u = z2 - z1 per voxel (brute force), ranks like the test-time logit_margin, and a confidently
    wrong voxel (p_max ~ 1) still gets gradient -1 / +1 on its top two logits (max softmax's is ~0)."""
    z = (torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2).requires_grad_(True)
    u, pred = get_score("logit_margin")(z)
    zn = z.detach().numpy()
    for b in range(2):
        for i in range(5):
            top = sorted(zn[b, :, i], reverse=True)
            assert float(u[b, i].detach()) == pytest.approx(top[1] - top[0], rel=1e-12)
    assert torch.equal(pred, z.argmax(dim=1))
    test_u = deterministic_scores(z.detach(), temperature=None)["logit_margin"][0]
    assert torch.equal(torch.argsort(u.detach().flatten()), torch.argsort(test_u.flatten()))
    sure = torch.tensor([[[30.0], [0.0], [-2.0]]], dtype=torch.float64, requires_grad=True)  # (B, K=3, 1)
    get_score("logit_margin")(sure)[0].sum().backward()
    assert sure.grad[0, :, 0].tolist() == [-1.0, 1.0, 0.0]
    flat = sure.detach().clone().requires_grad_(True)
    get_score("max_softmax")(flat)[0].sum().backward()
    assert flat.grad.abs().max() < 1e-10


# ---------------------------------------------------------------------------------------- ConfidNet
def test_true_class_probability_by_hand():
    logits = torch.tensor([[[0.0, 2.0]], [[0.0, 0.0]]])[None]  # (B=1, K=2, 1, 2)
    label = torch.tensor([[[[1, 0]]]])  # (B, 1, 1, 2)
    p, valid = true_class_probability(logits, label)
    e = math.exp(2.0) / (1 + math.exp(2.0))
    assert p.flatten().tolist() == pytest.approx([0.5, e])
    assert valid.all()
    p, valid = true_class_probability(logits, torch.tensor([[[[255, 1]]]]))  # an ignored label
    assert valid.flatten().tolist() == [False, True] and float(p.flatten()[1]) == pytest.approx(1 - e)


def _tiny_net():
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    return DynUNet(2, 3, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 8],
                   norm_name="instance").eval()


def test_the_head_reads_the_input_of_the_output_block():
    """The hooked features are what the 1x1 output conv turns into the logits, and WithConfidence
    gives the logits then the head's output on them."""
    net = _tiny_net()
    x = torch.rand(1, 3, 16, 16)
    logits, feats = logits_and_features(net, "output_block", x)
    assert feats.shape[1] == 4
    torch.testing.assert_close(net.output_block(feats), logits)
    torch.testing.assert_close(logits, net(x))
    head = ConfidenceHead(2, 4, hidden=3).eval()
    out = WithConfidence(net, head)(x)
    torch.testing.assert_close(out[:, :2], logits)
    torch.testing.assert_close(out[:, 2:], head(feats))
    with pytest.raises(ConfigError, match="confidence_head.layer='nope'"):
        logits_and_features(net, "nope", x)


def test_fitting_the_head_lowers_its_error_on_the_training_batches():
    net = _tiny_net()
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(2, 3, 16, 16, generator=g) for _ in range(2)]
    # labels that the features can predict: the net's own prediction, flipped where channel 0 is bright
    batches = [{"image": x, "label": (net(x).argmax(1, keepdim=True) ^ (x[:, :1] > 0.7)).long()} for x in images]

    def mse(head):
        errs = []
        for b in batches:
            with torch.no_grad():
                logits, f = logits_and_features(net, "output_block", b["image"])
                t, _ = true_class_probability(logits, b["label"])
                errs.append(float(((head(f) - t) ** 2).mean()))
        return np.mean(errs)

    before, _ = fit_confidence_head(net, batches, 2, HeadSettings(epochs=1, lr=1e-9, hidden=4), seed=0)
    head, info = fit_confidence_head(net, batches, 2, HeadSettings(epochs=30, lr=1e-2, hidden=4), seed=0)
    t = torch.cat([true_class_probability(net(b["image"]), b["label"])[0].flatten() for b in batches]).detach()
    assert mse(head) < 0.8 * mse(before) and mse(head) < 0.8 * float(t.var())  # beats the best constant
    assert info["parameters"] == head.num_parameters == sum(p.numel() for p in head.parameters())
    assert info["steps"] == 60
    assert all(p.grad is None for p in net.parameters())  # the segmenter stays frozen
    again = ConfidenceHead.from_record(head.to_record())
    torch.testing.assert_close(again(torch.ones(1, 4, 8, 8)), head(torch.ones(1, 4, 8, 8)))


def test_tcp_without_a_head_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="confidence_head=tcp"):
        check_config({"eval": {"scores": ["max_softmax", "tcp"]}})
    check_config({"eval": {"scores": ["tcp"]}, "confidence_head": {"epochs": 1}})
    with pytest.raises(ConfigError, match="confidence_head.epochs=0"):
        check_config({"confidence_head": {"epochs": 0}})
    with pytest.raises(ConfigError, match="confidence_head: unknown key"):
        HeadSettings.from_config({"epoch": 3})


@pytest.fixture(scope="module")
def tcp_run(tmp_path_factory):
    from uaseg.train import train

    root = tmp_path_factory.mktemp("tcp")
    cfg = compose_cfg(["dataset=demo2d", *TINY["demo2d"], *FAST, "confidence_head=tcp", "confidence_head.epochs=2",
                       "confidence_head.hidden=5", "eval.figures=false",
                       f"eval.scores=[max_softmax,{','.join(FREE)},tcp]"], root / "run", root / "cache")
    train(cfg)
    return root / "run"


def test_confidnet_end_to_end_report_checkpoint_and_prediction(tcp_run, tmp_path):
    from uaseg.inference import load_model, predict_files

    s = json.loads((tcp_run / "summary.json").read_text())
    assert list(s["scores"]) == ["max_softmax", *FREE, "tcp"]
    stage_seconds(tcp_run, "confidence_head", "val_curves", "test")  # FREE's curves; no temperature, no risk control
    cost = s["scores"]["tcp"]["cost"]
    assert cost["passes"] == 1 and cost["parameters"] > 0 and cost["train_seconds"] > 0
    ck = torch.load(s["checkpoint"], map_location="cpu", weights_only=True)  # plain values only
    rec = ck[HEAD_KEY]
    assert rec["hidden"] == 5 and rec["epochs"] == 2 and rec["parameters"] == cost["parameters"]  # keys reach the head
    assert rec["val_curve"] is not None
    assert not any(k.startswith("head") or "confid" in k for k in ck["state_dict"])  # the segmenter's weights as before
    model = load_model(s["checkpoint"])
    assert model.module.confidence["info"]["parameters"] == cost["parameters"]
    # the test's tcp map is the loaded model's one pass of network + head
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    u, pred, _ = model.module.segment(image, score="tcp")
    u2, pred2 = model.module.score_maps(image)["tcp"]
    torch.testing.assert_close(u, u2)
    assert torch.equal(pred, pred2) and torch.equal(pred, model.module.segment(image)[1])
    assert 0 <= float(u.min()) and float(u.max()) <= 1
    png = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save(png)
    (rec_tcp,) = predict_files(tcp_run, png, tmp_path / "out", coverage=0.9, score="tcp")
    assert rec_tcp["score"] == "tcp" and rec_tcp["threshold_source"] == "coverage"
    assert rec_tcp["threshold"] != predict_files(tcp_run, png, tmp_path / "out2", coverage=0.9)[0]["threshold"]
    # a free score: refers by its own map, with the threshold of its own validation curve
    (rec_m,) = predict_files(tcp_run, png, tmp_path / "out3", coverage=0.9, score="margin")
    assert set(model.module.val_curves) == set(FREE)
    assert rec_m["threshold"] == model.module.val_curves["margin"].threshold_at(0.9)[0]
    u_m, pred_m, _ = model.module.segment(image, score="margin")
    torch.testing.assert_close(u_m, model.module.score_maps(image)["margin"][0])
    from uaseg.errors import PredictError
    from uaseg.inference import choose_threshold

    model.module.val_curves = {}
    with pytest.raises(PredictError, match="no validation curve of the score margin"):
        choose_threshold(model, tcp_run, 0.9, None, score="margin")
    assert choose_threshold(model, tcp_run, None, 0.3, score="margin")["threshold"] == 0.3


def test_the_methods_table_shows_the_heads_cost(tcp_run):
    from uaseg.report import collect
    from uaseg.report.methods import method_rows, render_methods

    (ctx, rows), = method_rows(collect(tcp_run.parent)[0]).items()
    md, tidy = render_methods({ctx: rows})
    params = json.loads((tcp_run / "summary.json").read_text())["scores"]["tcp"]["cost"]["parameters"]
    (line,) = [ln for ln in md.splitlines() if "| tcp |" in ln]
    assert f"+{params:,} params" in line
    assert [ln for ln in md.splitlines() if "| margin |" in ln][0].count("| – |") >= 1
    assert {t["score"] for t in tidy} >= {"tcp", *FREE}


def test_every_confidence_head_key_reaches_the_fit(tmp_path, monkeypatch):
    """conf/confidence_head/tcp.yaml and its overrides -> HeadSettings -> the optimiser, the head and the hook."""
    from omegaconf import OmegaConf

    cfg = compose_cfg(["confidence_head=tcp", "confidence_head.lr=0.25", "confidence_head.hidden=3",
                       "confidence_head.epochs=2", "confidence_head.layer=output_block"], tmp_path / "r", tmp_path / "c")
    settings = HeadSettings.from_config(OmegaConf.to_container(cfg.confidence_head, resolve=True))
    assert settings == HeadSettings(epochs=2, lr=0.25, hidden=3, layer="output_block")
    lrs = []
    adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr: lrs.append(lr) or adam(params, lr=lr))
    batches = [{"image": torch.rand(1, 3, 16, 16), "label": torch.zeros(1, 1, 16, 16, dtype=torch.long)}]
    head, info = fit_confidence_head(_tiny_net(), batches, 2, settings)
    assert lrs == [0.25] and head.hidden == 3 and info["steps"] == 2 and head.layer == "output_block"
    with pytest.raises(ConfigError, match="confidence_head.layer='decoder'"):
        fit_confidence_head(_tiny_net(), batches, 2, HeadSettings(layer="decoder"))
