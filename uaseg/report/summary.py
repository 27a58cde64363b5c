"""What ``uaseg report`` prints: a few lines (runs found, per comparison its main numbers, where the
report is), not the whole ``report.md``. Units as in the report: Dice and AURC in %."""

from __future__ import annotations

import math
from pathlib import Path

#: at most this many comparisons are listed (the rest: report.md)
MAX_LISTED = 8


def _fmt(v, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _row(rows: list[dict], comparison: int, metric: str, coverage: str = "") -> dict | None:
    return next((r for r in rows if r["comparison"] == comparison and r["part"] == "all"
                 and r["metric"] == metric and r["coverage"] == coverage), None)


def comparison_line(rows: list[dict], comparison: int) -> str | None:
    """``<context>: <setting>: AURC ours vs baseline (Δ, p, folds); Dice at coverage 1 and 0.90``."""
    aurc = _row(rows, comparison, "aurc_dice")
    if aurc is None:
        return None
    dice = _row(rows, comparison, "dice_mean", "1.00")
    dice90 = _row(rows, comparison, "dice_mean", "0.90")
    has_base = bool(aurc["base_n"])
    has_ours = bool(aurc["ours_n"])
    head = f"  {comparison}. {aurc['context'] or '(no context)'}; {aurc['setting']}"
    if has_ours and has_base:
        p = aurc["p_value"]
        line = (f"{head}: AURC {_fmt(aurc['ours_mean'], 3)} % vs baseline {_fmt(aurc['base_mean'], 3)} % "
                f"(Δ {_fmt(aurc['delta'], 3)}{'' if p is None or math.isnan(p) else f', p {p:.3g}'}, "
                f"{aurc['ours_n']} vs {aurc['base_n']} folds)")
        side = "ours_mean"
    else:
        side = "ours_mean" if has_ours else "base_mean"
        line = f"{head}: AURC {_fmt(aurc[side], 3)} % ({'no baseline' if has_ours else 'baseline only'})"
    extra = [f"Dice {_fmt(r[side])} %{at}" for r, at in ((dice, ""), (dice90, " at coverage 0.90")) if r]
    return line + ("; " + ", ".join(extra) if extra else "")


def console_summary(report, root) -> str:
    """The lines ``uaseg report`` prints for ``report`` (a :class:`uaseg.report.build.Report`)."""
    lines = [f"{report.n_runs} runs with a summary, {report.n_problems} job folders without one, under {root}"]
    comparisons = sorted({r["comparison"] for r in report.rows})
    if comparisons:
        lines.append("Comparisons (ours vs the λ = 0 baseline, mean over folds; Dice and AURC in %, lower AURC is better):")
        lines += [line for c in comparisons[:MAX_LISTED] if (line := comparison_line(report.rows, c))]
        if len(comparisons) > MAX_LISTED:
            lines.append(f"  ... and {len(comparisons) - MAX_LISTED} more comparisons")
    if report.md_path is not None:
        figures = f", {len(report.figures)} figures in {Path(report.figures[0]).parent}" if report.figures else ""
        lines.append(f"Report: {report.md_path} (Table 1, paired tests, methods, learning curves), "
                     f"{report.csv_path}{figures}")
    return "\n".join(lines)
