"""Check the risk-control guarantees on saved case arrays (``predictions/<case>.npz`` of runs with
``eval.save_arrays=true``): random calibration/test splits, calibrate on one part, measure on the
other, for every risk kind and both LTT p-values (see :mod:`uaseg.selective.risk_check` for what each
column proves).

    python scripts/check_risk_control.py outputs/train/multiruns/<date_time>
    python scripts/check_risk_control.py <folder> --alpha 0.05 0.1 0.2 --delta 0.1 --splits 1000 --by all
    python scripts/check_risk_control.py <folder> --risk structure tail@0.15 --pvalue hb wsr binom --units patients.json

``--units``: a JSON file ``{case file stem: patient id}``; the split is then over patients (a patient's
loss is the mean over its images). ``binom`` applies to ``tail@`` kinds only (0/1 losses).

``--by run`` (default): one check per run folder (one model, its test cases); ``--by all``: every
case found under the folder in one pool (a random split keeps the cases exchangeable, so the check
is valid for a pool of several models too, though each calibration then mixes models).
Exit status 1 when a guarantee is violated beyond Monte-Carlo error.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from uaseg.selective.case_losses import risk_losses
from uaseg.selective.case_stats import make_case_stats
from uaseg.selective.risk_check import check_splits, format_rows
from uaseg.selective.risk_kinds import parse_kind


def find_cases(folder: Path, by: str) -> dict[str, list[Path]]:
    """group name -> its ``.npz`` case files (a run folder holds them in ``predictions/``)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in sorted(folder.rglob("*.npz")):
        run = f.parent.parent if f.parent.name == "predictions" else f.parent
        name = "all" if by == "all" else (str(run.relative_to(folder)) if run != folder else ".")
        groups[name].append(f)
    return dict(groups)


def load_stats(files: list[Path]):
    arrays = []
    for f in files:
        with np.load(f) as z:
            if not {"uncertainty", "prediction", "label"} <= set(z.files):
                raise SystemExit(f"{f}: needs arrays uncertainty, prediction, label (eval.save_arrays=true)")
            arrays.append((f.stem, z["uncertainty"], z["prediction"], z["label"]))
    k = max(2, 1 + max(int(max(p.max(), y.max())) for _, _, p, y in arrays))
    return [make_case_stats(u, p, y, num_classes=k, case_id=cid, aggregations=()) for cid, u, p, y in arrays]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--method", nargs="+", default=["crc", "ltt"], choices=["crc", "ltt"])
    ap.add_argument("--risk", nargs="+", default=["dice", "structure", "tail@0.2", "fnr"],
                    help="risk kinds: dice, structure, tail@<beta>, fnr")
    ap.add_argument("--pvalue", nargs="+", default=["hb", "wsr"], choices=["hb", "wsr", "binom"],
                    help="LTT p-values (binom: tail@ kinds only)")
    ap.add_argument("--units", type=Path, default=None, help="JSON {case file stem: patient id}")
    ap.add_argument("--splits", type=int, default=500, help="random splits (R >= 500 recommended)")
    ap.add_argument("--cal-fraction", type=float, default=0.5)
    ap.add_argument("--by", choices=["run", "all"], default="run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        kinds = [parse_kind(k) for k in args.risk]
    except ValueError as e:
        ap.error(str(e))
    import json
    units = json.loads(args.units.read_text()) if args.units else None
    groups = find_cases(args.folder, args.by)
    if not groups:
        print(f"no .npz case arrays under {args.folder} (train with eval.save_arrays=true)", file=sys.stderr)
        return 2
    ok = True
    for name, files in groups.items():
        t0 = time.perf_counter()
        stats = load_stats(files)
        rows = []
        for kind in kinds:
            losses = risk_losses(stats, kind, units)
            n_cal = int(round(args.cal_fraction * losses.n_units))
            full = max(c.loss_at(np.inf).mean() for c in losses.components)
            if kind == kinds[0]:
                print(f"\n## {name}: {len(stats)} cases ({losses.n_units} units), {sum(s.n for s in stats)} voxels")
            print(f"{kind.key}: mean risk at full coverage {full:.4f}" + (" (worst structure)" if len(losses.components) > 1 else ""))
            if not 1 <= n_cal < losses.n_units:
                print(f"skipped: {losses.n_units} units cannot be split with --cal-fraction {args.cal_fraction}")
                continue
            pvalues = [p for p in args.pvalue if p != "binom" or kind.binary]
            rows += check_splits(losses, args.alpha, args.method, args.delta, n_cal, args.splits, args.seed, pvalues)
        if not rows:
            continue
        print(format_rows(rows))
        for r in rows:
            if r["n_cal"] < r["n_min"]:
                print(f"note: {r['kind']} {r['method']}{'-' + r['pvalue'] if r['pvalue'] else ''} alpha={r['alpha']:g} needs >= {r['n_min']} calibration units; "
                      f"with {r['n_cal']} every split refers everything")
        print(f"({args.splits} splits in {time.perf_counter() - t0:.1f} s)")
        ok &= all(r["holds"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
