"""What a user sees (issue 29): a run says where and what before it works and keeps a piped log alive,
third-party chatter stays off the console, no progress bar in piped output, epochs counted from 1,
every figure's axes name their units, and the commands answer for users (``--help`` without torch,
``uaseg predict``, ``uaseg --version``, a short ``uaseg report``, the end of a multirun)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from uaseg.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
#: the chatter of issue 29: Hydra/alembic plugin lines, Lightning's tips, torch's _pytree deprecation,
#: Lightning's logging-interval warning
NOISE = ("setup plugin", "litlogger", "litmodels", "💡", "LeafSpec", "log_every_n_steps")
#: Rich's bar and heavy table glyphs
BAR_GLYPHS = ("━", "╸", "╺", "┏", "┃", "━━")


# ------------------------------------------------------------------ the start block and the heartbeat
def test_start_block_says_where_and_what_before_any_work(make_cfg):
    from uaseg.data import build_datamodule
    from uaseg.runs.start_block import start_block

    cfg = make_cfg("demo2d", "loss.lambda=2")
    out = Path(cfg.paths.output_dir)
    text = start_block(cfg, out)
    dm = build_datamodule(cfg.dataset)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert str(out) in text.splitlines()[0]
    assert f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test" in text  # as the datamodule splits
    # composed without Hydra's runtime the dataset is named by its class (the piped run below: demo2d)
    assert "dataset: Demo2DDataModule" in text and "10 cases of 48x48 px" in text and "fold 0 of 5" in text
    assert "filters [16, 32, 64, 128]" in text and "λ = 2" in text and "epochs:  1" in text and "device:  cpu" in text


def test_heartbeat_reports_steps_rate_and_eta(caplog):
    from uaseg.callbacks import Heartbeat

    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, progress_bar_callback=None,
                              global_step=0, estimated_stepping_batches=10, max_epochs=2, current_epoch=0,
                              num_val_batches=[4], num_test_batches=[3])
    beat = Heartbeat(every_s=0)
    beat.on_train_start(trainer, None)
    trainer.global_step = 3
    with caplog.at_level(logging.INFO, logger="uaseg.progress"):
        beat.on_train_batch_end(trainer, None, None, None, 0)
        beat.on_test_start(trainer, None)
        beat.on_test_batch_end(trainer, None, None, None, 1)
    lines = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"training: epoch 1/2, step 3/10, [\d.]+ steps/s, ETA .+", lines[0].split(" (")[0]), lines
    assert re.match(r"testing: batch 2/3, [\d.]+ batches/s, ETA ", lines[1]), lines
    caplog.clear()
    quiet = Heartbeat(every_s=3600)  # not due yet: nothing
    quiet.on_train_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="uaseg.progress"):
        quiet.on_train_batch_end(trainer, None, None, None, 0)
    assert not caplog.records


def test_no_bar_when_piped_and_epochs_counted_from_one():
    from uaseg.callbacks import PercentRichProgressBar
    from uaseg.callbacks.progress import no_bar_drawn

    bar = PercentRichProgressBar()  # pytest captures stdout: not a terminal
    assert bar.is_disabled
    assert no_bar_drawn(SimpleNamespace(progress_bar_callback=bar))
    bar._trainer = SimpleNamespace(max_epochs=6)
    assert bar._get_train_description(0).strip() == "Epoch 1/6"


def test_third_party_chatter_is_dropped_and_real_warnings_kept(caplog):
    from uaseg.runs.quiet import RANK_ZERO_LOGGER, quiet_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
        warnings.warn_explicit(leaf, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(leaf, FutureWarning, "mine.py", 1, module="my.code")  # not Lightning's: shown
        warnings.warn_explicit("something else", FutureWarning, "_pytree.py", 30,
                               module="lightning.pytorch.utilities._pytree")
    assert [str(w.message) for w in caught] == [leaf, "something else"]
    lightning = logging.getLogger(RANK_ZERO_LOGGER)
    propagate = lightning.propagate
    lightning.propagate = True  # an earlier Trainer in this process may have set it off: caplog listens at the root
    try:
        with caplog.at_level(logging.INFO, logger=RANK_ZERO_LOGGER):
            lightning.info("💡 Tip: For seamless cloud logging ... litlogger")
            lightning.info("TPU available: False, using: 0 TPU cores")
            lightning.info("GPU available: True (cuda), used: False")
            lightning.warning("💡 Tip: a warning is never dropped")
    finally:
        lightning.propagate = propagate
    assert [r.getMessage() for r in caplog.records] == ["GPU available: True (cuda), used: False",
                                                        "💡 Tip: a warning is never dropped"]


@pytest.mark.slow
def test_piped_debug_fast_run_first_screen(tmp_path):
    """The issue's own command, piped: the first 20 lines name the run folder and what it runs, none of the
    chatter anywhere, no bar glyphs, heartbeat lines, epochs from 1, and a "next:" with the run's data keys."""
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", "debug=fast", f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path}/cache",
           "trainer.accelerator=cpu", "model=unet_small", "callbacks.heartbeat.every_s=0.1"]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    first = "\n".join(out.splitlines()[:20])
    assert f"Starting run: {run}" in first, first
    for key in ("dataset: demo2d", "10 cases", "model:   unet_small", "loss:    uncertainty_aware", "epochs:  1",
                "device:"):
        assert key in first, (key, first)
    for noise in NOISE + BAR_GLYPHS:
        assert noise not in out, (noise, out[-3000:])
    assert re.search(r"training: epoch 1/1, step \d/2, [\d.]+ steps/s, ETA", out), out[-3000:]
    assert "epoch 1/1 done" in out and "Epoch 0" not in out
    assert "next: uaseg export-demo outputs/demo_input num_cases=10 image_size=64;" in out, out[-1500:]
    assert list((run / "figures").glob("test_case_*.png"))  # no "case" twice in the panel's name


# ------------------------------------------------------------------ units in figures
def _unit_problems(fig) -> list[str]:
    """Every axis with ticks must have a label ending in a unit in parentheses."""
    bad = []
    for ax in fig.axes:
        if not ax.axison:
            continue
        for name, axis, label in (("x", ax.xaxis, ax.get_xlabel()), ("y", ax.yaxis, ax.get_ylabel())):
            if axis.get_visible() and len(axis.get_majorticklocs()) and not re.search(r"\(.+\)\s*$", label):
                bad.append(f"{ax.get_title() or fig._suptitle and fig._suptitle.get_text()!r}: {name} label {label!r}")
    return bad


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved while the test runs."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def record(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return saved


def _result(seed: int = 0):
    from uaseg.selective import SelectiveAccumulator

    rng = np.random.default_rng(seed)
    acc = SelectiveAccumulator(num_classes=2, coverages=(0.9,), bootstrap=5)
    for i in range(4):
        y = rng.integers(0, 2, (16, 16))
        wrong = rng.random(y.shape) < 0.2
        acc.add_case((rng.random(y.shape) * 0.5 + 0.4 * wrong).astype(np.float32), np.where(wrong, 1 - y, y), y,
                     case_id=f"c{i}")
    return acc.compute()


def test_every_figure_labels_its_axes_with_units(tmp_path, saved_figures):
    from test_report import sweep
    from test_report_curves import make_multirun

    from uaseg.inference.preview import write_preview
    from uaseg.report import build_report
    from uaseg.report.curves import run_figure
    from uaseg.selective import plot_case_panel, plot_dice_coverage, plot_risk_coverage

    result = _result()
    plot_risk_coverage(result, tmp_path / "rc.png")
    plot_dice_coverage(result, tmp_path / "dc.png")
    u = np.random.default_rng(0).random((16, 16))
    seg = (u > 0.5).astype(int)
    plot_case_panel(np.random.default_rng(1).random((3, 16, 16)), seg, seg, u, 0.7, tmp_path / "panel.png")
    write_preview(tmp_path / "preview.png", np.zeros((16, 16, 3), np.uint8), seg, u, u > 0.7, "t", ["gland"])
    run = tmp_path / "one_run"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.csv").write_text("epoch,step,train/seg,val/dice,val/aurc_dice\n0,1,0.9,,\n0,1,,0.5,20\n"
                                             "1,3,0.7,,\n1,3,,0.6,15\n")
    run_figure(run, tmp_path / "lc.png", {"dataset": "demo2d"})
    make_multirun(tmp_path / "curves")
    build_report(tmp_path / "curves")
    sweep(tmp_path / "sweep", range(2), (0.0, 1.0, 2.0))
    build_report(tmp_path / "sweep")
    titles = [f._suptitle.get_text() if f._suptitle else f.axes[0].get_title() for f in saved_figures]
    assert len(saved_figures) >= 12, titles  # run: 5; report: fig2, fig3, methods, curves; the sweep plot
    problems = [p for f in saved_figures for p in _unit_problems(f)]
    assert not problems, problems

    # one unit per kind: the run's figures draw Dice and both risks in % (like their AURC labels)
    rc, dc = saved_figures[0], saved_figures[1]
    assert np.allclose(rc.axes[0].lines[0].get_ydata(), 100 * result.curve.risk)
    assert np.allclose(rc.axes[1].lines[0].get_ydata(), 100 * result.voxel_curve.selective_risk)
    assert f"AURC {100 * result.aurc:.3f} %" in rc.axes[1].get_legend().get_texts()[0].get_text()
    assert dc.axes[0].lines[0].get_ydata().max() > 1.0 and "(%)" in dc.axes[0].get_ylabel()
    # a 2-epoch run: one tick per epoch, counted from 1, and no empty half of the canvas
    lc = next(f for f in saved_figures if f._suptitle and f._suptitle.get_text().startswith("Learning curves of this"))
    drawn = [ax for ax in lc.axes if ax.axison]
    assert list(drawn[0].get_xticks()) == [1, 2] and len(lc.axes) == len(drawn) == 3
    preview = next(f for f in saved_figures if f._suptitle and f._suptitle.get_text() == "t")
    assert min(preview.get_size_inches() * preview.dpi) >= 2 * 512


# ------------------------------------------------------------------ commands
def test_check_dataset_help_imports_no_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "scripts" / "check_dataset.py"), "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0 and "--dataset" in proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "uaseg" in imported and not {"torch", "monai", "lightning"} & imported


def test_predict_help_lists_predict_options_not_training_groups():
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    assert proc.returncode == 0
    for key in ("ckpt=???", "input=???", "output=???", "coverage=null", "risk=null", "score=max_softmax",
                "uaseg predict -m"):
        assert key in proc.stdout, key
    assert "== Config groups ==" not in proc.stdout and "loss:" not in proc.stdout and "model:" not in proc.stdout


def test_uaseg_version_and_help_for_users(capsys):
    from uaseg import __version__
    from uaseg.cli import COMMANDS

    with pytest.raises(SystemExit) as e:
        cli(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"uaseg {__version__}"
    with pytest.raises(SystemExit):
        cli(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "uaseg predict -m" in text
    for name in ("predict", "export-demo", "report", "calibrate", "ensemble"):
        assert name in COMMANDS and re.search(rf"^\s+{name}\s", text, re.M), name


def test_uaseg_predict_is_predict_py(tmp_path, capsys):
    """``uaseg predict -i -o -m`` fills predict.py's config and calls the same code: same outputs; a bad
    option is one line and exit 2."""
    from test_predict import SYNTH_CURVE, _cfg, _module, _png, _save

    from uaseg.inference import predict_files

    ckpt = _save(_module(_cfg(tmp_path, "demo2d")), tmp_path / "m.ckpt", SYNTH_CURVE)
    (tmp_path / "in").mkdir()
    src = _png(tmp_path / "in" / "tile.png")
    assert cli(["predict", "-i", str(src), "-o", str(tmp_path / "a"), "-m", str(ckpt), "--coverage", "0.9"]) == 0
    assert "1 case(s) written" in capsys.readouterr().out
    (rec,) = predict_files(ckpt, src, tmp_path / "b", coverage=0.9)
    a = json.loads((tmp_path / "a" / "tile.json").read_text())
    assert {k: v for k, v in a.items() if k != "outputs"} == {k: v for k, v in rec.items() if k != "outputs"}
    assert (tmp_path / "a" / "tile_seg.png").read_bytes() == Path(rec["outputs"]["seg"]).read_bytes()
    from PIL import Image

    with Image.open(rec["outputs"]["preview"]) as im:  # the labelled preview, large enough to see the hatching
        assert min(im.size) >= 2 * 512
    assert cli(["predict", "-i", str(src), "-o", str(tmp_path / "c"), "-m", str(ckpt), "--coverage", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uaseg predict: error: coverage=2") and "\n" not in err


def test_uaseg_report_prints_a_short_summary(tmp_path, capsys):
    from test_report import sweep

    sweep(tmp_path, range(2), (0.0, 2.0))
    assert cli(["report", str(tmp_path), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 6, out
    assert "4 runs with a summary, 0 job folders without one" in out and "| #1" not in out
    assert re.search(r"1\. .*AURC [\d.]+ % vs baseline [\d.]+ % \(Δ -?[\d.]+, p [\d.e-]+, 2 vs 2 folds\)", out), out
    assert f"Report: {tmp_path / 'report.md'}" in out


def test_a_multirun_ends_with_jobs_done_failed_and_the_report_command(tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from test_report import sweep

    from uaseg.runs.sweep_end import SweepSummary

    sweep(tmp_path, range(1), (0.0, 2.0))
    failed = tmp_path / "2_loss.lambda=4"
    (failed / ".hydra").mkdir(parents=True)
    (failed / "failed.json").write_text(json.dumps({"error": "NonFiniteLossError: loss is nan\nat step 3"}))
    (tmp_path / "3_loss.lambda=8" / ".hydra").mkdir(parents=True)  # killed: no result
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"Multirun finished: 4 jobs in {tmp_path}: 2 done, 1 failed, 1 without a result "
                      "(killed or still running)")
    assert out[1] == "  failed: 2_loss.lambda=4: NonFiniteLossError: loss is nan at step 3"
    assert out[2].startswith(f"Next: uaseg report {tmp_path} ")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    assert cfg.hydra.callbacks.sweep_summary._target_ == "uaseg.runs.sweep_end.SweepSummary"


def test_next_hint_exports_the_runs_own_test_cases(make_cfg, tmp_path, capsys):
    """After a run on non-default demo data, the "next:" export command writes exactly its test cases."""
    from uaseg.data import build_datamodule
    from uaseg.runs.start_block import next_commands

    cache_dir = tmp_path / "cache"  # the demo cache keeps one splits_final.json per generated dataset
    cfg = make_cfg("demo2d", "dataset.num_folds=3", "dataset.fold=1", f"dataset.cache_dir={cache_dir}")
    hint = next_commands(cfg, tmp_path / "run")
    export = hint.split(";")[0].split()
    assert export[:3] == ["uaseg", "export-demo", "outputs/demo_input"]
    assert set(export[3:]) == {"num_cases=10", "image_size=48", "num_folds=3", "fold=1"}
    assert cli(["export-demo", str(tmp_path / "x"), *export[3:], "--cache-dir", str(cache_dir)]) == 0
    dm = build_datamodule(cfg.dataset)
    dm.setup()
    assert sorted(p.stem for p in (tmp_path / "x").glob("*.png")) == sorted(c["case_id"] for c in dm.splits["test"])
    assert next_commands(make_cfg("demo3d"), tmp_path).startswith("uaseg export-demo outputs/demo_input --dataset demo3d ")


def test_export_demo_nnunet_layout_is_a_dataset_check_dataset_accepts(tmp_path, cache_dir, capsys):
    import importlib.util

    from uaseg.data.formats.nnunet import NnUNetDataModule

    root = tmp_path / "Dataset001_demo"
    assert cli(["export-demo", str(root), "--layout", "nnunet", "num_cases=10", "image_size=48",
                "--cache-dir", str(cache_dir)]) == 0
    info = NnUNetDataModule.read_info(root)
    assert info.spatial_dims == 2 and list(info.class_names) == ["gland"] and len(info.channel_names) == 3
    assert len(NnUNetDataModule.discover(root, info)) == 8 and len(list((root / "imagesTs").glob("*_0000.png"))) == 2
    spec = importlib.util.spec_from_file_location("check_dataset", ROOT / "scripts" / "check_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--dataset", "nnunet", "--root", str(root)]) == 0
    assert cli(["export-demo", str(tmp_path / "y"), "--layout", "nnunet", "--split", "val"]) == 2
    assert "leave out --split" in capsys.readouterr().err


def test_case_panel_names_say_case_once():
    from uaseg.callbacks.report_writer import panel_name

    assert panel_name("test", "case_002") == "test_case_002"
    assert panel_name("testA", "testA_1") == "testA_1"
