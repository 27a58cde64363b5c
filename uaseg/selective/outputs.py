"""Files a run leaves behind: ``summary.json``, ``curves.csv``, per-case ``.npz``.

``summary.json`` = the caller's identity dict (dataset, fold, seed, lambda, ...)
merged with every JSON-serialisable key of the result (curve arrays left out; NaN and
inf written as null).  ``curves.csv`` holds the Dice curve downsampled for plotting
(<= ``max_rows`` rows, endpoints always kept); AURC in the summary is from the exact
curve.  Files are written to a temporary name and renamed, so a reader never sees a
half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .format import format_table  # noqa: F401  (re-exported for convenience)

ARRAY_KEYS = ("curve", "dice_coverage", "voxel_curve", "threshold_grid")


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items() if k not in ARRAY_KEYS}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if np.isfinite(x) else None
    return x


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def downsample_indices(n: int, max_rows: int) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_rows).round().astype(np.int64))


def write_outputs(result: dict, out_dir, identity: dict | None = None,
                  max_rows: int = 2000) -> dict:
    """Write ``summary.json`` and ``curves.csv`` into ``out_dir``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**_clean(identity or {}), **_clean(result)}
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    cur = result["curve"]
    keep = downsample_indices(len(cur["coverage"]), max_rows)
    lines = ["coverage,risk,threshold"]
    for c, r, t in zip(cur["coverage"][keep], cur["risk"][keep], cur["threshold"][keep]):
        lines.append(f"{float(c):.10g},{float(r):.10g},{float(t):.10g}")
    _atomic_write(out / "curves.csv", "\n".join(lines) + "\n")
    return summary


def save_case_arrays(out_dir, case_id, uncertainty, prediction, label) -> Path:
    """``predictions/<case_id>.npz`` with arrays uncertainty, prediction, label."""
    from .case_stats import to_numpy

    d = Path(out_dir) / "predictions"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{case_id}.npz"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{case_id}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, uncertainty=to_numpy(uncertainty),
                            prediction=to_numpy(prediction), label=to_numpy(label))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
