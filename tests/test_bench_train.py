"""Smoke test of scripts/bench_train.py: it runs end to end and prints a ratio (never asserted on:
a benchmark is not a timed unit test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"


def test_bench_train_prints_a_ratio(cache_dir, capsys):
    mod = _load()
    result = mod.main([
        "--size", "16", "--steps", "1", "--warmup", "1", "--rounds", "1", "--prewarm", "0",
        "--model", "unet_small", "--cache-dir", str(cache_dir),
        "--override", "dataset.num_cases=10", "--override", "dataset.image_size=32",
    ])
    out = capsys.readouterr().out
    assert "runner (Lightning Trainer)" in out and "bare PyTorch loop" in out
    assert "ratio to bare" in out and "target: runner <= 1.10x" in out
    assert result["ratio"] > 0 and result["bare_median_s"] > 0


def test_bench_train_losses_prints_one_line_per_loss(cache_dir, capsys):
    """--losses: one ``loss NAME median_step S ratio R`` line per preset; every arm starts from the
    same weights and trains on the same batches, so the first step's segmentation loss is the same."""
    import re

    import pytest

    mod = _load()
    names = ["baseline", "uncertainty_aware", "one_pass", "multiclass"]
    result = mod.main([
        "--losses", ",".join(names), "--size", "16", "--steps", "1", "--warmup", "1", "--head-repeats", "1",
        "--model", "unet_small", "--cache-dir", str(cache_dir),
        "--override", "dataset.num_cases=10", "--override", "dataset.image_size=32",
    ])
    out = capsys.readouterr().out
    lines = re.findall(r"^loss (\S+) median_step ([0-9.]+) ratio ([0-9.]+)$", out, flags=re.M)
    assert [n for n, _, _ in lines] == names and float(lines[0][2]) == 1.0
    first = {n: r["first_seg"] for n, r in result["losses"].items()}
    assert len(set(first.values())) == 1, first
    with pytest.raises(SystemExit):
        mod.main(["--losses", "baseline,nosuch"])
    assert "nosuch" in capsys.readouterr().err


def _load():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
