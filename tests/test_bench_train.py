"""Smoke test of scripts/bench_train.py: it runs end to end and prints a ratio (never asserted on:
a benchmark is not a timed unit test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"


def test_bench_train_prints_a_ratio(cache_dir, capsys):
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.main([
        "--size", "16", "--steps", "1", "--warmup", "1", "--rounds", "1", "--prewarm", "0",
        "--model", "unet_small", "--cache-dir", str(cache_dir),
        "--override", "dataset.num_cases=10", "--override", "dataset.image_size=32",
    ])
    out = capsys.readouterr().out
    assert "runner (Lightning Trainer)" in out and "bare PyTorch loop" in out
    assert "ratio to bare" in out and "target: runner <= 1.10x" in out
    assert result["ratio"] > 0 and result["bare_median_s"] > 0
