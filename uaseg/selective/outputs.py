"""Files of a selective evaluation: ``summary.json``, ``curves.csv`` (``curves_<score>.csv``), per-case ``.npz``.

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
                  max_rows: int = 2000, extra: dict | None = None) -> dict:
    """Write ``summary.json`` (identity, the result, then ``extra``) and ``curves.csv`` into
    ``out_dir``; return the summary."""
    out = Path(out_dir)
    summary = {**(identity or {}), **result.to_summary(), **(extra or {})}
    write_json(out / "summary.json", summary, indent=2)
    write_curve(result, out / "curves.csv", max_rows)
    return json_safe(summary)


def write_curve(result: SelectiveResult, path, max_rows: int = 2000) -> None:
    """The Dice risk-coverage curve, downsampled to at most ``max_rows`` rows (endpoints kept)."""
    cur = result.curve
    keep = downsample_indices(len(cur.coverage), max_rows)
    lines = ["coverage,risk,threshold"]
    for c, r, t in zip(cur.coverage[keep], cur.risk[keep], cur.threshold[keep]):
        lines.append(f"{float(c):.10g},{float(r):.10g},{float(t):.10g}")
    write_text(path, "\n".join(lines) + "\n")


def write_score_outputs(results: dict[str, SelectiveResult], out_dir, identity: dict, costs: dict,
                        predictions: dict[str, str], extra: dict | None = None) -> dict:
    """A run evaluated with several uncertainty scores: the first (main) score's report at the top
    of ``summary.json`` and in ``curves.csv``; every score's full report, its cost (forward passes,
    seconds per case) and the prediction it is evaluated with under ``scores.<name>``; the other
    scores' curves in ``curves_<name>.csv``."""
    out = Path(out_dir)
    names = list(results)
    scores = {n: {**results[n].to_summary(), "cost": costs.get(n), "prediction": predictions.get(n)} for n in names}
    summary = write_outputs(results[names[0]], out, identity, extra={**(extra or {}), "scores": scores})
    for n in names[1:]:
        write_curve(results[n], out / f"curves_{n}.csv")
    return summary


def save_case_arrays(out_dir, case_id, uncertainty, prediction, label, **extra) -> Path:
    """``predictions/<case_id>.npz`` with arrays uncertainty, prediction, label (and ``extra``)."""
    arrays = {"uncertainty": uncertainty, "prediction": prediction, "label": label, **extra}
    return save_npz(Path(out_dir) / "predictions" / f"{case_id}.npz",
                    **{k: to_numpy(v) for k, v in arrays.items()})
