"""The shift testbed in ``uaseg report``: per comparison, ours and its λ = 0 baseline side by side for
every condition (clean, kind:severity) and test group, from the runs' ``summary.json`` ``shift``
blocks (``eval.shift``). Numbers are means over the arm's runs (seeds and folds alike: a corrupted
test set is one draw per run); *holds* counts the runs whose realised risk is at most α."""

from __future__ import annotations

import math
from pathlib import Path

from uaseg.shift.report import REMEDIES, REMEDY_LABELS

from .grouping import describe_loss

NOTE = (
    "Each run tests its selected checkpoint on the clean test split and on every corruption of `eval.shift` "
    "(docs/shift.md). *Dice* (at coverage 1) and *AURC* in %; *fail AUROC*: the case score (mean "
    "uncertainty) against case Dice below `eval.shift.fail_dice`; *drift %*: test cases outside the "
    "validation range of the case score; *referred %*: cases the case referral refers whole. Risk columns: "
    "the mean realised risk of the calibrated threshold over the runs, and in brackets the runs where it "
    "is at most α, then @ the mean coverage (CRC promises that in expectation, LTT with probability 1 − δ, both only for test "
    "cases exchangeable with the calibration cases): as calibrated, with the case referral, with the "
    "drift referral, and recalibrated on validation cases of the same condition or group."
)


def _mean(values) -> float | None:
    v = [x for x in values if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
    return sum(v) / len(v) if v else None


def _rows_of(run) -> list[dict]:
    return ((run.summary.get("shift") or {}).get("rows")) or []


def _arms(comp):
    return [(label, arm) for label, arm in (("baseline λ=0", comp.base), (describe_loss(comp.loss), comp.ours))
            if arm is not None and any(_rows_of(r) for r in arm.runs)]


def shift_rows(comparisons) -> list[dict]:
    """One tidy row per (comparison, condition, group, calibration, arm)."""
    out = []
    for i, comp in enumerate(comparisons, 1):
        arms = _arms(comp)
        keys = []   # (condition, group, method, key) in the order the runs list them
        for _, arm in arms:
            for r in arm.runs:
                for row in _rows_of(r):
                    for e in row["risk"] or [{"method": None, "key": None}]:
                        k = (row["condition"], row["group"], e["method"], e["key"])
                        if k not in keys:
                            keys.append(k)
        for cond, group, method, key in keys:
            for label, arm in arms:
                found = [(row, next((e for e in row["risk"] if (e["method"], e["key"]) == (method, key)), None))
                         for r in arm.runs for row in _rows_of(r) if (row["condition"], row["group"]) == (cond, group)]
                if not found:
                    continue
                rows = [f[0] for f in found]
                entry = {"comparison": i, "arm": label, "condition": cond, "group": group, "runs": len(rows),
                         "calibration": None if method is None else f"{method} α={found[0][1]['alpha']:g}"
                         + ("" if found[0][1]["kind"] == "dice" else f" ({found[0][1]['kind']})"),
                         "alpha": None if method is None else found[0][1]["alpha"],
                         "dice": _mean(r["dice"] for r in rows), "aurc_dice": _mean(r["aurc_dice"] for r in rows),
                         "failure_auroc": _mean(r["failure_auroc"] for r in rows),
                         "drift_flagged": _mean(r.get("drift_flagged") for r in rows),
                         "referred": _mean((r.get("case_referral") or {}).get("referred") for r in rows)}
                for remedy in REMEDIES:
                    got = [e.get(remedy) for _, e in found if e is not None and e.get(remedy) is not None]
                    entry[remedy] = _mean(g["risk"] for g in got) if got else None
                    entry[f"{remedy}_coverage"] = _mean(g["coverage"] for g in got) if got else None
                    entry[f"{remedy}_holds"] = f"{sum(g['holds'] for g in got)}/{len(got)}" if got else None
                out.append(entry)
    return out


def _f(v, scale: float = 1.0, d: int = 2) -> str:
    return "–" if v is None else f"{scale * v:.{d}f}"


def render(rows: list[dict]) -> str:
    remedies = [r for r in REMEDIES if any(row.get(r) is not None for row in rows)]
    head = ["#", "condition", "group", "arm", "runs", "Dice", "AURC", "fail AUROC", "drift %", "referred %",
            "threshold"] + [f"risk: {REMEDY_LABELS[r]}" for r in remedies]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        risks = ["–" if r[m] is None else f"{r[m]:.3f} ({r[m + '_holds']}) @{r[m + '_coverage']:.2f}" for m in remedies]
        lines.append("| " + " | ".join([f"#{r['comparison']}", r["condition"], r["group"], r["arm"], str(r["runs"]),
                                        _f(r["dice"], 100), _f(r["aurc_dice"], 1, 3), _f(r["failure_auroc"], 1, 3),
                                        _f(r["drift_flagged"], 100, 1), _f(r["referred"], 100, 1),
                                        r["calibration"] or "–"] + risks) + " |")
    return "\n".join(lines)


def figure(rows: list[dict], comparison: int, path: Path, max_thresholds: int = 3) -> Path | None:
    """Per kind (columns) and calibrated threshold (rows): the mean realised risk against severity, as
    calibrated (solid), with the case referral (dotted) and recalibrated (dashed), each arm a colour;
    alpha dashed in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uaseg.io import save_figure

    mine = [r for r in rows if r["comparison"] == comparison and r["group"] == "all" and r["calibration"]]
    cals = list(dict.fromkeys(r["calibration"] for r in mine))[:max_thresholds]
    kinds = list(dict.fromkeys(r["condition"].split(":")[0] for r in mine if r["condition"] != "clean"))
    if not cals or not kinds:
        return None
    arms = list(dict.fromkeys(r["arm"] for r in mine))
    fig, axes = plt.subplots(len(cals), len(kinds), figsize=(2.4 * len(kinds), 2.5 * len(cals)), squeeze=False,
                             sharey="row")
    for i, cal in enumerate(cals):
        these = [r for r in mine if r["calibration"] == cal]
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            for colour, arm in zip(("tab:grey", "tab:blue", "tab:green", "tab:orange"), arms):
                pts = sorted(((0 if r["condition"] == "clean" else int(r["condition"].split(":")[1]), r) for r in these
                              if r["arm"] == arm and (r["condition"] == "clean" or r["condition"].startswith(kind + ":"))),
                             key=lambda p: p[0])
                for remedy, style in (("none", "o-"), ("case_referral", "s:"), ("recalibrated", "^--")):
                    ys = [p[1][remedy] for p in pts]
                    if any(y is not None for y in ys):
                        ax.plot([p[0] for p in pts], [math.nan if y is None else y for y in ys], style, color=colour,
                                label=f"{arm[:18]}, {REMEDY_LABELS[remedy]}", ms=3)
            ax.axhline(these[0]["alpha"], color="r", lw=0.8, ls="--")
            ax.set_title(kind, fontsize=9)
            if i == len(cals) - 1:
                ax.set_xlabel("severity")
        axes[i, 0].set_ylabel(f"realised risk\n{cal}")
    axes[0, -1].legend(fontsize=5)
    fig.tight_layout()
    try:
        return save_figure(path, fig, dpi=90)
    finally:
        plt.close(fig)


def shift_section(comparisons, fig_dir: Path | None = None) -> tuple[list[str], list[Path]]:
    """Markdown lines of the section and its figures (none when no run measured shift)."""
    rows = shift_rows(comparisons)
    if not rows:
        return [], []
    figs = []
    if fig_dir is not None:
        for i in sorted({r["comparison"] for r in rows}):
            p = figure(rows, i, Path(fig_dir) / f"shift_{i:02d}.png")
            if p is not None:
                figs.append(p)
    return ["## Referral under shift", "", NOTE, "", render(rows), ""], figs
