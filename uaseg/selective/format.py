"""Console table shaped like a row of the paper's Table 1 (values in percent).

One unit per kind wherever a number is shown (console, progress, summary table, report): **Dice and
every AURC-type area (Dice AURC, voxel AURC, E-AURC, AUGRC, case AURC) in percent**; coverage, the
Dice risk 1 - Dice, alpha, delta and thresholds as fractions in [0, 1]. What is *stored*
(``summary.json``, ``metrics.json``, ``csv/metrics.csv``) keeps the library's units: Dice and voxel
AURC / E-AURC / AUGRC as fractions, ``aurc_dice`` and ``case_level.aurc`` in percent; every display
converts with :func:`display_metric`. Figures follow the same units, and every axis label names its
unit (:data:`COVERAGE_AXIS` for coverage).
"""
from __future__ import annotations

import io
import math

from .result import FULL_COVERAGE, SelectiveResult


#: the coverage axis of every figure (the run's and the report's)
COVERAGE_AXIS = "coverage (fraction of voxels kept)"

#: stored metric names (the last ``/`` part) already in percent
_PERCENT_STORED = ("aurc_dice", "case_aurc")
#: stored fractions shown in percent: Dice and the voxel-level areas
_FRACTION_SHOWN_AS_PERCENT = ("dice", "aurc", "eaurc", "augrc")


def display_metric(name: str, value: float) -> str:
    """``value`` of the logged/stored metric ``name`` (``val/dice``, ``test/aurc_dice``,
    ``test/dice@0.90``, ``train/loss``) in its display unit: Dice and AURC-type areas as ``"88.76 %"``,
    anything else (losses, coverage, counts) as a plain number."""
    base = name.rsplit("/", 1)[-1].split("@", 1)[0]
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if base in _PERCENT_STORED:
        return f"{v:.3f} %"
    if base.startswith("dice"):
        return f"{100 * v:.2f} %"
    if base in _FRACTION_SHOWN_AS_PERCENT:
        return f"{100 * v:.3f} %"
    return f"{v:.4g}"


def _rows(result: SelectiveResult, name: str) -> list[list[str]]:
    rows = []
    first = True
    for key in (FULL_COVERAGE, *result.at_coverage):
        v = result.point(key)
        rows.append([name if first else "", f"{result.aurc_dice:.3f}" if first else "",
                     key, f"{v.achieved_coverage:.4f}",
                     f"{100 * v.dice_mean:.2f} ± {100 * v.dice_std:.2f}",
                     f"{100 * v.dice_p5:.2f}"])
        first = False
    return rows


def format_table(result: SelectiveResult, title: str = "Selective segmentation") -> str:
    """AURC (%), then per coverage: achieved coverage, Dice mean ± std (%), Dice@5PCTL (%)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # light rules only: the table is printed into piped logs and train.log as well as on a terminal
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("set", "AURC (%)", "coverage", "achieved", "Dice (%)", "Dice@5PCTL (%)"):
        table.add_column(col, justify="right")
    for row in _rows(result, "all"):
        table.add_row(*row)
    for g, res in result.groups.items():
        for row in _rows(res, g):
            table.add_row(*row)
    cl = result.case_level
    vox = (f"voxel AURC {100 * result.aurc:.3f} %  E-AURC {100 * result.eaurc:.3f} %  "
           f"AUGRC {100 * result.augrc:.3f} %  |  case AURC ({cl.aggregation}) "
           f"{cl.aurc:.2f} %  95% CI [{cl.ci95[0]:.2f}, {cl.ci95[1]:.2f}] %")
    buf = io.StringIO()
    console = Console(file=buf, width=110, force_terminal=False, color_system=None)
    console.print(table)
    console.print(vox)
    return buf.getvalue()


def _values_line(v: dict | None) -> str:
    """Every kind's realised value (``realised_values``): Dice risk, worst structure, tail, FNR."""
    if not v:
        return ""
    tail = next((k for k in v if k.startswith("tail@")), None)
    return (f"; all risks: dice {v['dice']:.4f}, worst structure {v['structure_max']:.4f}"
            + (f", {tail} {v[tail]:.3f}" if tail else "") + f", fnr {v['fnr']:.4f}")


def format_risk_control(risk_control: dict) -> str:
    """One line per calibrated (method, risk, alpha) evaluated on the test cases (``result.risk_control``)."""
    lines = ["Referral with a guarantee (calibrated on the validation cases, measured on the test cases):"]
    for method, by_alpha in risk_control.items():
        for key, r in by_alpha.items():
            t = r.get("threshold")
            kind, _, alpha = key.rpartition(":")
            where = "refers everything" if t is None or t == float("-inf") else f"threshold {t:.6g}"
            meth = method if method == "crc" else f"{method} ({r.get('pvalue') or 'hb'})"
            lines.append(f"  {meth} {kind or 'dice'} alpha={alpha}: {where}; test risk {r['test_risk']:.4f}, coverage "
                         f"{r['test_coverage']:.4f} (oracle {r['oracle_coverage']:.4f}), "
                         f"{100 * r['test_fraction_above_alpha']:.1f}% of {r.get('unit', 'case')}s above alpha"
                         + _values_line(r.get("test_values")))
            if r.get("warning"):
                lines.append(f"    warning: {r['warning']}")
    return "\n".join(lines)
