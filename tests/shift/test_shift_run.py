"""The shift testbed end to end on a debug-sized run (1 kind x 1 severity): the ``shift`` block in
summary.json and what it must agree with, corrupted demo inputs for predict, the drift warning and its
stored record, and groups.csv (natural shift) for the nnU-Net layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, TINY, compose_cfg
from layoutfiles import make_nnunet_2d
from PIL import Image

from uaseg.cli import main as cli_main
from uaseg.data.datasets.export_demo import demo_datamodule, export_demo
from uaseg.errors import ConfigError, DatasetError, PredictError
from uaseg.inference import predict_files
from uaseg.models.module import CASE_SCORES_KEY
from uaseg.shift.corruptions import corrupt
from uaseg.shift.groups import read_groups
from uaseg.train import build_datamodule, train

SHIFT = ["eval.shift.kinds=[noise]", "eval.shift.severities=[3]", "eval.shift.case_referral.alpha=0.3",
         "eval.risk_control.alpha=[0.3]"]


@pytest.fixture(scope="module")
def shift_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shift")
    cfg = compose_cfg(["dataset=demo2d", *TINY["demo2d"], *FAST, "dataset.num_cases=20", "dataset.val_fraction=0.5",
                       "trainer.limit_test_batches=null", "trainer.limit_val_batches=null", *SHIFT],
                      tmp / "run", tmp / "cache")
    train(cfg)
    return Path(cfg.paths.output_dir), tmp / "cache"


def test_the_shift_block(shift_run):
    run, _ = shift_run
    summary = json.loads((run / "summary.json").read_text())
    block = summary["shift"]
    assert [r["condition"] for r in block["rows"]] == ["clean", "noise:3"]
    clean, noisy = block["rows"]
    # the clean row is the run's own test: same cases, same Dice and AURC
    assert clean["n_cases"] == summary["n_cases"] == noisy["n_cases"]
    assert clean["dice"] == pytest.approx(summary["dice_full"]["mean"])
    assert clean["aurc_dice"] == pytest.approx(summary["aurc_dice"])
    assert noisy["dice"] != clean["dice"]
    # every calibrated threshold, its realised risk against alpha, as the run's own risk_control says
    (entry,) = clean["risk"]
    own = summary["risk_control"]["crc"]["0.3"]
    assert (entry["method"], entry["key"], entry["alpha"]) == ("crc", "0.3", 0.3)
    assert entry["none"]["risk"] == pytest.approx(own["test_risk"])
    assert entry["none"]["holds"] == (own["test_risk"] <= 0.3)
    # recalibrated on the same (clean) validation cases: the stored threshold again
    assert entry["recalibrated"]["threshold"] == pytest.approx(own["threshold"])
    # a case referred whole costs no risk: never more risk than without referral
    for row in block["rows"]:
        for e in row["risk"]:
            assert e["case_referral"]["risk"] <= e["none"]["risk"] + 1e-12
            assert set(e) >= {"none", "case_referral", "drift_referral", "recalibrated"}
        assert 0 <= row["case_referral"]["silent_failures"] <= row["failure_rate"]
    assert block["case_referral"]["alpha"] == 0.3 and block["n_validation"] == 8
    assert block["drift_range"]["n"] == 8
    text = (run / "shift.md").read_text()
    assert "| noise:3 | all |" in text and "crc α=0.3" in text
    assert (run / "figures" / "shift.png").stat().st_size > 0


def test_the_run_corrupts_what_export_demo_writes(shift_run, tmp_path):
    """The corrupted test cases are reproducible: export-demo --shift writes the cases the testbed saw."""
    run, cache = shift_run
    over = TINY["demo2d"][:2] + ["num_cases=20", "val_fraction=0.5"]
    files = export_demo(tmp_path / "noisy", "demo2d", "test", over, cache, shift="noise:3")
    dm = demo_datamodule("demo2d", over, cache)
    dm.setup()
    case = dm.splits["test"][0]
    want = corrupt(np.asarray(case["image"], np.float32), "noise", 3, 0, case["case_id"], 2)
    got = np.asarray(Image.open(files[0]), dtype=np.float32).transpose(1, 0, 2) / 255.0
    assert files[0].stem == case["case_id"]
    np.testing.assert_allclose(np.moveaxis(got, -1, 0), want, atol=0.5 / 255 + 1e-6)   # up to 8-bit rounding
    record = json.loads((tmp_path / "noisy" / "export-demo.json").read_text())
    assert record["shift"] == "noise:3" and record["shift_seed"] == 0
    assert cli_main(["export-demo", str(tmp_path / "bad"), "--shift", "fog:2"]) == 2


def test_drift_warning_in_predict(shift_run, tmp_path, caplog):
    run, cache = shift_run
    over = TINY["demo2d"][:2] + ["num_cases=20", "val_fraction=0.5"]
    export_demo(tmp_path / "in", "demo2d", "test", over, cache)
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)[CASE_SCORES_KEY]
    assert stored["n"] == 8 and stored["scores"] == sorted(stored["scores"])
    with caplog.at_level(logging.WARNING, logger="uaseg.inference.predict"):
        records = predict_files(ckpt, tmp_path / "in", tmp_path / "out", coverage=0.9)
    assert all(r["drift"]["n_validation"] == 8 and 0 < r["drift"]["p_value"] <= 1 for r in records)
    assert sum("drift warning" in m for m in caplog.messages) == sum(r["drift"]["outside"] for r in records)
    caplog.clear()
    # a checkpoint whose validation range is narrowed to one value: every other input is outside
    narrowed = tmp_path / "narrow.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    v = stored["scores"][0]
    state[CASE_SCORES_KEY] = {**stored, "n": 1, "min": v, "max": v, "scores": [v]}
    torch.save(state, narrowed)
    with caplog.at_level(logging.WARNING, logger="uaseg.inference.predict"):
        records = predict_files(narrowed, tmp_path / "in", tmp_path / "out2", coverage=0.9)
    assert all(r["drift"]["outside"] for r in records)
    assert sum("drift warning" in m for m in caplog.messages) == len(records)
    assert records[0]["drift"]["false_alarm_rate"] == pytest.approx(1.0)
    # a damaged record: one line naming the file and the key
    state[CASE_SCORES_KEY] = {**stored, "scores": [float("nan")]}
    torch.save(state, narrowed)
    with pytest.raises(PredictError, match=r"narrow\.ckpt: uaseg_case_scores: scores must be"):
        predict_files(narrowed, tmp_path / "in", tmp_path / "out3", coverage=0.9)


def test_shift_settings_refused_before_any_work(tmp_path):
    cfg = compose_cfg(["dataset=demo3d", *TINY["demo3d"], *FAST, "eval.shift.kinds=[stain]"], tmp_path / "run", tmp_path / "c")
    with pytest.raises(ConfigError, match="stain is for 2-D RGB images"):
        train(cfg)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- groups.csv
def _groups(root: Path, text: str) -> Path:
    (root / "groups.csv").write_text(text)
    return root / "groups.csv"


def test_groups_csv_trains_on_one_group_and_tests_on_another(tmp_path, make_cfg):
    root = make_nnunet_2d(tmp_path / "Dataset009_Sites", n_cases=8)
    _groups(root, "case,group\n" + "".join(f"img_{i:03d},{'siteA' if i < 5 else 'siteB'}\n" for i in range(8)))
    cfg = make_cfg("nnunet", f"dataset.root={root}", "dataset.num_workers=0", "dataset.train_groups=[siteA]",
                   "dataset.test_groups=[siteB]")
    dm = build_datamodule(cfg.dataset)
    dm.setup()
    assert {c["group"] for c in dm.splits["test"]} == {"siteB"} and len(dm.splits["test"]) == 3
    assert {c["group"] for s in ("train", "val") for c in dm.splits[s]} == {"siteA"}
    assert sum(len(dm.splits[s]) for s in ("train", "val")) == 5
    cfg = make_cfg("nnunet", f"dataset.root={root}", "dataset.num_workers=0", "dataset.test_groups=[siteC]")
    with pytest.raises(DatasetError, match="dataset.test_groups: 'siteC' not in .*groups.csv .its groups: siteA, siteB"):
        build_datamodule(cfg.dataset).setup()


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("case;group\nimg_000;a\n", "line 1: expected a header with the columns 'case' and 'group'"),
    ("case,group\nimg_000,a\nimg_000,b\n", "line 3: case 'img_000' is listed twice"),
    ("case,group\nimg_000,\n", "line 2: empty case or group"),
    ("case,group\nimg_099,a\n", "line 2: case 'img_099' is not a labelled case"),
    ("case,group\nimg_000,a\n", "2 case.s. have no group, e.g. img_001, img_002"),
    ("case,group\nimg_000\n", "line 2: expected 2 columns, got 1"),
])
def test_bad_groups_csv_is_one_line_naming_the_file(tmp_path, text, message):
    path = _groups(tmp_path, text)
    with pytest.raises(DatasetError) as e:
        read_groups(path, ["img_000", "img_001", "img_002"])
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert __import__("re").search(message, str(e.value)), str(e.value)


def test_uaseg_report_has_the_shift_section(shift_run, tmp_path):
    from uaseg.report import build_report

    run, _ = shift_run
    rep = build_report(run, out_dir=tmp_path / "rep")
    section = rep.markdown[rep.markdown.index("## Referral under shift"):]
    assert "| #1 | noise:3 | all | λ=2" in section and "crc α=0.3" in section
    assert (tmp_path / "rep" / "figures" / "shift_01.png").is_file()
