"""Referral with a guarantee end to end: a run calibrates its selected checkpoint on the validation
cases, the test report evaluates it (checked against the saved arrays), ``uaseg calibrate`` adds a
calibration and keeps the rest of the checkpoint, ``predict.py risk=`` uses it, and the report shows it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, TINY, compose_cfg, stage_seconds
from PIL import Image

from uaseg.cli import main as cli_main
from uaseg.errors import ConfigError, PredictError
from uaseg.inference import predict_files
from uaseg.stages.validation import validation_stats
from uaseg.models import SelectiveSegModule
from uaseg.models.module import RISK_CONTROL_KEY
from uaseg.report import build_report
from uaseg.selective.risk_control import calibrate
from uaseg.train import build_datamodule, train

ROOT = Path(__file__).resolve().parents[2]
RISK = ["eval.risk_control.alpha=[0.3,0.5]", "eval.risk_control.method=[crc,ltt]", "eval.risk_control.delta=0.2"]


def _cfg(tmp: Path, *extra: str):
    return compose_cfg(["dataset=demo2d", *TINY["demo2d"], *FAST, "dataset.num_cases=20", "dataset.val_fraction=0.5",
                        "trainer.limit_test_batches=null", "eval.figures=false", *extra], tmp / "run", tmp / "cache")


def bf_loss(u, p, y, t):
    """1 - case Dice with u > t referred, from scratch (binary demo2d: one foreground class)."""
    q = np.where(u > t, y, p)
    den = (q == 1).sum() + (y == 1).sum()
    return 0.0 if den == 0 else 1.0 - 2.0 * ((q == 1) & (y == 1)).sum() / den


def same(a, b) -> bool:
    """Deep equality of checkpoint contents (tensors compared by value)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def risk_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("risk")
    cfg = _cfg(tmp, "eval.save_arrays=true", *RISK)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    return run, next((run / "checkpoints").glob("best-*.ckpt")), cfg


def test_run_calibrates_on_validation_and_reports_on_test(risk_run):
    run, best, cfg = risk_run
    record = torch.load(best, map_location="cpu", weights_only=True)[RISK_CONTROL_KEY]
    dm = build_datamodule(cfg.dataset)
    dm.setup()
    assert record["case_ids"] == [c["case_id"] for c in dm.splits["val"]] and record["n_calibration"] == 8
    # the stored thresholds = calibrating the selected weights on the validation cases
    module = SelectiveSegModule.load_from_checkpoint(best, weights_only=True, map_location="cpu")
    assert module.risk_calibration == record
    stats = validation_stats(module, dm)
    for method in ("crc", "ltt"):
        for a in ("0.3", "0.5"):
            stored = record["calibrations"][method][a]
            assert stored["threshold"] == calibrate(stats, float(a), method, 0.2).threshold
            assert stored["n_calibration"] == 8 and ("at most " + a) in stored["statement"]
    # the test report, against brute force on the saved test arrays
    summary = json.loads((run / "summary.json").read_text())
    arrays = [np.load(f) for f in sorted((run / "predictions").glob("*.npz"))]
    assert len(arrays) == summary["n_cases"] == len(dm.splits["test"])
    for method in ("crc", "ltt"):
        for a in ("0.3", "0.5"):
            r = summary["risk_control"][method][a]
            t = record["calibrations"][method][a]["threshold"]
            assert r["threshold"] == (None if t == -np.inf else t)
            loss = np.array([bf_loss(z["uncertainty"], z["prediction"], z["label"], t) for z in arrays])
            assert r["test_risk"] == pytest.approx(loss.mean(), abs=1e-9)
            assert r["test_fraction_above_alpha"] == pytest.approx(np.mean(loss > float(a)))
            allu = np.concatenate([z["uncertainty"].ravel() for z in arrays])
            assert r["test_coverage"] == pytest.approx(np.mean(allu <= t))
            assert r["n_test"] == len(arrays) and r["n_calibration"] == 8
            assert {"calibration_risk", "calibration_coverage", "oracle_coverage", "coverage_lost",
                    "test_case_risk", "statement"} <= set(r)
    # the report: one row per (method, alpha)
    md = build_report(run, make_figures=False).markdown
    section = md.split("## Referral with a guarantee")[1]
    assert sum(line.startswith("| #1 ") for line in section.splitlines()) == 4


def test_summary_times_training_risk_calibration_and_test(risk_run):
    """Issue #28: the stages after training are timed in summary.json, only those that ran (no
    temperature, head or curves here), with risk calibration's calibrations (and their leave-one-out)
    as a part of it."""
    seconds = stage_seconds(risk_run[0], "risk_calibration", "risk_calibration/calibrate_with_leave_one_out", "test")
    assert seconds["risk_calibration/calibrate_with_leave_one_out"] <= seconds["risk_calibration"]


def test_uaseg_calibrate_adds_and_keeps_everything_else(risk_run, tmp_path, capsys):
    run, best, _ = risk_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = copy / "checkpoints" / best.name
    before = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert cli_main(["calibrate", str(copy), "alpha=0.4", "method=ltt", "delta=0.2"]) == 0
    assert "added ltt alpha=0.4" in capsys.readouterr().out
    after = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(after) == set(before)
    for k in before:
        if k != RISK_CONTROL_KEY:
            assert same(after[k], before[k]), k
    cals = after[RISK_CONTROL_KEY]["calibrations"]
    assert set(cals["ltt"]) == {"0.3", "0.5", "0.4"} and cals["crc"] == before[RISK_CONTROL_KEY]["calibrations"]["crc"]
    # the same again is refused; overwrite=true replaces and says so
    assert cli_main(["calibrate", str(copy), "alpha=0.4", "method=ltt", "delta=0.2"]) == 2
    assert "overwrite=true" in capsys.readouterr().err
    assert cli_main(["calibrate", str(ckpt), "alpha=0.4", "method=ltt", "delta=0.2", "overwrite=true"]) == 0
    assert "replaced ltt alpha=0.4" in capsys.readouterr().out
    # too few validation cases for alpha: a clear error, the file untouched
    stamp = ckpt.stat().st_mtime_ns
    assert cli_main(["calibrate", str(copy), "alpha=0.01"]) == 2
    assert "8 validation cases are too few (crc alpha=0.01 needs >= 99)" in capsys.readouterr().err
    assert ckpt.stat().st_mtime_ns == stamp


def test_predict_with_risk(risk_run, tmp_path, monkeypatch):
    _, best, _ = risk_run
    rng = np.random.default_rng(0)
    png = tmp_path / "tile.png"
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(png)
    stored = torch.load(best, map_location="cpu", weights_only=True)[RISK_CONTROL_KEY]["calibrations"]
    (rec,) = predict_files(best, png, tmp_path / "a", risk=0.3, risk_method="ltt")
    rc = rec["risk_control"]
    assert rec["threshold_source"] == "risk" and rec["threshold"] == stored["ltt"]["0.3"]["threshold"]
    assert (rc["method"], rc["alpha"], rc["delta"], rc["n_calibration"]) == ("ltt", 0.3, 0.2, 8)
    assert "probability at least 0.8" in rc["guarantee"]
    with pytest.raises(PredictError, match="risk_method=crc|ltt"):
        predict_files(best, png, tmp_path / "b", risk=0.3)
    with pytest.raises(PredictError, match=r"no risk calibration for risk=0.25 .*uaseg calibrate .* alpha=0.25"):
        predict_files(best, png, tmp_path / "b", risk=0.25)
    with pytest.raises(PredictError, match="exactly one of"):
        predict_files(best, png, tmp_path / "b", risk=0.3, coverage=0.9)
    # the command (conf/predict.yaml keys risk, risk_method), as Hydra runs it, in-process
    import importlib.util

    from hydra.core.global_hydra import GlobalHydra

    spec = importlib.util.spec_from_file_location("predict_cli", ROOT / "predict.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    monkeypatch.setattr(cli.main.__wrapped__, "__module__", "__main__")
    out = tmp_path / "cli"
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["predict.py", f"ckpt={best}", f"input={png}", f"output={out}", "risk=0.5",
                                      "risk_method=crc"])
    cli.main()
    GlobalHydra.instance().clear()
    rec = json.loads((out / "tile.json").read_text())
    assert rec["risk_control"]["alpha"] == 0.5 and "Conformal risk control" in rec["risk_control"]["guarantee"]


def test_risk_control_refusals_before_training(tmp_path):
    for i, (extra, match) in enumerate([(["eval.risk_control.alpha=0.01"], "needs >= 99"),
                         (["eval.risk_control.alpha=0.3", "eval.risk_control.method=ltt", "eval.risk_control.delta=0.01"],
                          r"ltt alpha=0.3 delta=0.01 needs >= 13"),
                         (["eval.risk_control.alpha=0.3", "eval.quantize_bits=16"], "quantize_bits=null"),
                         (["eval.risk_control.alpha=0.3", "train=false"], "uaseg calibrate"),
                         (["eval.risk_control.alpha=1.5"], r"alpha=1.5: expected"),
                         (["eval.risk_control.alpha=0.3", "eval.risk_control.method=ctt"], "choose from"),
                         (["eval.risk_control.alpha=0.3", "eval.risk_control.risk=tail@2"], r"eval.risk_control.risk='?tail@2'?: expected"),
                         (["eval.risk_control.alpha=0.3", "eval.risk_control.pvalue=bh"], r"eval.risk_control.pvalue='?bh'?: expected"),
                         (["eval.risk_control.alpha=0.3", "eval.risk_control.unit=image"], r"eval.risk_control.unit='?image'?: expected"),
                         (["eval.risk_control.alpha=0.2", "eval.risk_control.risk=fnr", "eval.risk_control.method=ltt",
                           "eval.risk_control.pvalue=wsr"], r"fnr ltt alpha=0.2 delta=0.1 needs >= "),
                         (["eval.risk_control.alpha=0.3", "callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false"],
                          "no checkpoint is saved")]):
        cfg = _cfg(tmp_path / str(i), *extra)
        with pytest.raises(ConfigError, match=match):
            train(cfg)
        assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.mark.parametrize("extra,message", [
    (["eval.risk_control.alpha=[0.1,0.2,0.1]"],
     "eval.risk_control.alpha=[0.1,0.2,0.1]: 0.1 is listed more than once; give each value once"),
    (["eval.risk_control.alpha=0.3", "eval.risk_control.method=[ltt,crc,ltt]"],
     "eval.risk_control.method=[ltt,crc,ltt]: ltt is listed more than once; give each value once"),
    (["eval.risk_control.alpha=0.3", "eval.risk_control.risk=[dice,tail@0.1]", "eval.risk_control.method=[crc,ltt]",
      "eval.risk_control.pvalue=binom"],
     "eval.risk_control.pvalue=binom is valid only for 0/1 losses: every risk must be tail@<beta>, not dice (use hb or "
     "wsr for those, or calibrate them in another run)"),
])
def test_risk_control_settings_refused_by_the_config_check(tmp_path, capsys, extra, message):
    """Checked as a whole with the other config values (before any run folder, and for every job of a
    multirun before the first starts), not after the set-up (binom with dice: after training); the
    same rules in uaseg calibrate."""
    from uaseg.config.check import check_config

    with pytest.raises(ConfigError) as err:
        check_config(_cfg(tmp_path, *extra))
    assert str(err.value) == message
    options = [o.replace("eval.risk_control.", "") for o in extra]
    assert cli_main(["calibrate", str(tmp_path / "no_run"), *options]) == 2
    assert capsys.readouterr().err == f"uaseg calibrate: error: {message.replace('eval.risk_control', 'uaseg calibrate')}\n"
    kinds_ok = [o.replace("[dice,tail@0.1]", "[tail@0.1,tail@0.2]") for o in extra]
    if kinds_ok != extra:  # binom with 0/1 risks only is fine
        check_config(_cfg(tmp_path, *kinds_ok))


def test_uaseg_calibrate_on_a_truncated_checkpoint_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "best-000.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:-200])  # a copy cut off
    assert cli_main(["calibrate", str(ckpt), "alpha=0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"uaseg calibrate: error: {ckpt}: not a readable checkpoint: the file is truncated or corrupted")
    assert err.count("\n") == 1 and "PytorchStreamReader" not in err


def test_report_rows_are_means_over_folds(tmp_path):
    """Synthetic summaries (no training): per arm and alpha, the mean over folds and the folds above alpha;
    the eval.risk_control override does not split the baseline from its runs."""
    from test_report import make_summary, write_run

    rng = np.random.default_rng(0)
    risks = {(0, 0): 0.04, (1, 0): 0.07, (0, 2): 0.03, (1, 2): 0.045}
    for num, ((fold, lam), risk) in enumerate(risks.items()):
        s = make_summary(rng, fold=fold, lam=lam)
        s["risk_control"] = {"crc": {"0.05": {"n_calibration": 30, "delta": None, "test_risk": risk,
                                              "test_coverage": 0.8 + risk, "oracle_coverage": 0.9,
                                              "coverage_lost": 0.1 - risk, "test_fraction_above_alpha": 0.25}}}
        ov = [f"dataset.fold={fold}", f"loss.lambda={lam}", "eval.risk_control.alpha=0.05"] + \
            (["eval.risk_control.method=crc"] if lam else [])
        write_run(tmp_path / f"{num}_{lam}_{fold}", s, ov)
    md = build_report(tmp_path, make_figures=False).markdown
    rows = [line for line in md.split("## Referral with a guarantee")[1].splitlines() if line.startswith("| #1 ")]
    assert len(rows) == 2   # one comparison: baseline and ours, one alpha
    base, ours = ([c.strip() for c in r.split("|")[1:-1]] for r in rows)
    assert base[1] == "baseline λ=0" and base[2:6] == ["dice", "crc", "0.05", "–"] and base[6] == "30"
    assert base[7] == "–"                                 # these summaries carry no threshold
    assert base[8].startswith(f"{(0.04 + 0.07) / 2:.4f}") and base[-2] == "1/2"
    assert ours[8].startswith(f"{(0.03 + 0.045) / 2:.4f}") and ours[-2] == "0/2"
    assert ours[10] == "0.9000" and ours[12] == "0.250"
    assert base[-1] == "– / – / – (tail) / –"          # summaries written before every kind was measured


def test_risk_kinds_pvalue_and_patients_reach_calibration_prediction_and_summary(risk_run, tmp_path, capsys):
    """uaseg calibrate risk=/pvalue= store one calibration per kind, equal to calibrating the validation
    stats directly; predict.py risk_kind= uses it and writes the kind, the guarantee and every kind's
    value; a datamodule naming patients makes n count patients; the run's summary carries every kind's
    realised test value (FNR against brute force on the saved arrays)."""
    run, best, cfg = risk_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = copy / "checkpoints" / best.name
    assert cli_main(["calibrate", str(copy), "alpha=0.3", "risk=[structure,tail@0.4,fnr]", "method=ltt",
                     "delta=0.2", "pvalue=wsr"]) == 0
    out = capsys.readouterr().out
    assert "added ltt tail@0.4 alpha=0.3" in out and "Waudby-Smith-Ramdas" in out
    cals = torch.load(ckpt, map_location="cpu", weights_only=True)[RISK_CONTROL_KEY]["calibrations"]["ltt"]
    assert {"structure:0.3", "tail@0.4:0.3", "fnr:0.3"} <= set(cals)
    module = SelectiveSegModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu")
    dm = build_datamodule(cfg.dataset)
    stats = validation_stats(module, dm)
    for kind in ("structure", "tail@0.4", "fnr"):
        stored = cals[f"{kind}:0.3"]
        assert stored["threshold"] == calibrate(stats, 0.3, "ltt", 0.2, kind=kind, pvalue="wsr").threshold
        assert stored["kind"] == kind and stored["pvalue"] == "wsr" and stored["unit"] == "case"
        tail = "tail@0.4" if kind.startswith("tail") else "tail@0.3"    # its own beta, else alpha
        assert set(stored["values"]) == {"dice", "structure", "structure_max", tail, "fnr"}
        assert "close to the minimum" in stored["warning"]
    png = tmp_path / "tile.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(png)
    (rec,) = predict_files(ckpt, png, tmp_path / "p", risk=0.3, risk_kind="tail@0.4")
    rc = rec["risk_control"]
    assert rec["threshold"] == cals["tail@0.4:0.3"]["threshold"] and rc["risk"] == "tail@0.4"
    assert "below Dice 0.6" in rc["guarantee"] and rc["calibration_values"]["fnr"] == cals["tail@0.4:0.3"]["values"]["fnr"]
    with pytest.raises(PredictError, match="risk_kind=structure"):
        predict_files(ckpt, png, tmp_path / "q", risk=0.5, risk_kind="structure")
    with pytest.raises(PredictError, match="risk_kind"):
        predict_files(ckpt, png, tmp_path / "q", risk=0.3, risk_kind="dise")
    assert cli_main(["calibrate", str(copy), "alpha=0.3", "risk=dice", "method=ltt", "pvalue=binom"]) == 2
    assert "binom is valid only for 0/1 losses" in capsys.readouterr().err
    # patients: the hook on the datamodule (default none), then a dataset that names two images per patient
    assert dm.case_units("val") is None
    for split in dm.splits.values():
        for i, c in enumerate(split):
            c["patient"] = f"{c['case_id'][:-1]}"        # case_010..019 -> patient case_01
    units = dm.case_units("val")
    assert len(set(units.values())) < len(units) == 8
    from uaseg.selective.risk_settings import RiskControlSettings
    from uaseg.stages.risk_calibration import calibrate_checkpoint
    settings = RiskControlSettings.from_config({"alpha": 0.4, "risk": "dice"})
    record, _ = calibrate_checkpoint(ckpt, settings, dm, write=False, overwrite=True)
    got = record["calibrations"]["crc"]["0.4"]
    assert got["unit"] == "patient" and got["n_calibration"] == len(set(units.values())) and got["n_images"] == 8
    assert got["threshold"] == calibrate(stats, 0.4, "crc", units=units).threshold
    assert record["units"] == units
    assert RiskControlSettings.from_config({"alpha": 0.4, "unit": "case"}).units(dm) is None   # unit=case: per image
    # the run's summary: every kind's realised test value
    summary = json.loads((run / "summary.json").read_text())
    arrays = [np.load(f) for f in sorted((run / "predictions").glob("*.npz"))]
    r = summary["risk_control"]["crc"]["0.3"]
    t = -np.inf if r["threshold"] is None else r["threshold"]
    fnr = [np.sum((z["label"] > 0) & (np.where(z["uncertainty"] > t, z["label"], z["prediction"]) != z["label"]))
           / max(1, np.sum(z["label"] > 0)) for z in arrays]
    assert r["test_values"]["fnr"] == pytest.approx(np.mean(fnr), abs=1e-9)
    assert r["test_values"]["tail@0.3"] == pytest.approx(r["test_fraction_above_alpha"])
    assert r["test_values"]["dice"] == pytest.approx(r["test_risk"])
