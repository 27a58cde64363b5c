"""Files of a selective evaluation: ``summary.json``, ``curves.csv``, per-case ``.npz``.

``summary.json`` = the caller's identity dict (dataset, fold, seed, lambda, ...) merged with
:meth:`SelectiveResult.to_summary` (curve arrays left out; NaN and inf written as null).
``curves.csv`` holds the Dice curve downsampled for plotting (<= ``max_rows`` rows, endpoints
always kept); AURC in the summary is from the exact curve. Written atomically (``uaseg.io``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from uaseg.io import json_safe, save_npz, write_json, write_text

from .case_stats import to_numpy
from .result import SelectiveResult


def downsample_indices(n: int, max_rows: int) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_rows).round().astype(np.int64))


def write_outputs(result: SelectiveResult, out_dir, identity: dict | None = None,
                  max_rows: int = 2000) -> dict:
    """Write ``summary.json`` and ``curves.csv`` into ``out_dir``; return the summary."""
    out = Path(out_dir)
    summary = {**(identity or {}), **result.to_summary()}
    write_json(out / "summary.json", summary, indent=2)
    cur = result.curve
    keep = downsample_indices(len(cur.coverage), max_rows)
    lines = ["coverage,risk,threshold"]
    for c, r, t in zip(cur.coverage[keep], cur.risk[keep], cur.threshold[keep]):
        lines.append(f"{float(c):.10g},{float(r):.10g},{float(t):.10g}")
    write_text(out / "curves.csv", "\n".join(lines) + "\n")
    return json_safe(summary)


def save_case_arrays(out_dir, case_id, uncertainty, prediction, label, **extra) -> Path:
    """``predictions/<case_id>.npz`` with arrays uncertainty, prediction, label (and ``extra``)."""
    arrays = {"uncertainty": uncertainty, "prediction": prediction, "label": label, **extra}
    return save_npz(Path(out_dir) / "predictions" / f"{case_id}.npz",
                    **{k: to_numpy(v) for k, v in arrays.items()})
