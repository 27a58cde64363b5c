"""The shift block of one run for people: a table (console, run folder ``shift.md``) and a figure
(``figures/shift.png``). ``uaseg report`` puts the runs of a sweep side by side (:mod:`uaseg.report.shift`).

Units as everywhere: Dice and AURC in %, risks, alphas and fractions of cases as fractions."""

from __future__ import annotations

from pathlib import Path

REMEDIES = ("none", "case_referral", "drift_referral", "recalibrated")
REMEDY_LABELS = {"none": "as calibrated", "case_referral": "case referral", "drift_referral": "drift referral",
                 "recalibrated": "recalibrated per condition/group"}


def _pct(v, d: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{d}f}"


def _risk(entry: dict | None) -> str:
    if not entry:
        return "–"
    return f"{entry['risk']:.3f} {'✓' if entry['holds'] else '✗'} ({entry['coverage']:.2f})"


def _label(e: dict) -> str:
    kind = "" if e["kind"] == "dice" else f"{e['kind']} "
    return f"{e['method']} {kind}α={e['alpha']:g}"


def markdown_table(block: dict) -> str:
    """One line per (condition, group, calibrated threshold): the selective metrics, failure detection,
    and the realised risk as calibrated and under each remedy (✓: at most alpha; coverage in brackets)."""
    remedies = [r for r in REMEDIES if any(r in e for row in block["rows"] for e in row["risk"])]
    cov = sorted({k for row in block["rows"] for k in row["dice_at"]}, reverse=True)
    head = (["condition", "group", "n", "Dice", "AURC"] + [f"Dice@{k}" for k in cov]
            + ["fail %", "fail AUROC", "drift %", "cases referred %", "case-referral risk"]
            + (["calibrated threshold"] if remedies else []) + [f"risk: {REMEDY_LABELS[r]}" for r in remedies])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in block["rows"]:
        ref = row.get("case_referral") or {}
        base = [row["condition"], row["group"], str(row["n_cases"]), _pct(row["dice"], 2), f"{row['aurc_dice']:.3f}"]
        base += [_pct(row["dice_at"].get(k), 2) for k in cov]
        base += [_pct(row["failure_rate"]), "–" if row["failure_auroc"] is None else f"{row['failure_auroc']:.3f}",
                 _pct(row.get("drift_flagged")), _pct(ref.get("referred")),
                 "–" if not ref else f"{ref.get('risk', ref['silent_failures']):.3f} {'✓' if ref['holds'] else '✗'}"]
        for e in row["risk"] or [None]:
            if e is None:
                lines.append("| " + " | ".join(base + (["–"] * (len(remedies) + 1) if remedies else [])) + " |")
                continue
            lines.append("| " + " | ".join(base + [_label(e)] + [_risk(e.get(r)) for r in remedies]) + " |")
            base = [""] * len(base)
    return "\n".join(lines)


def summary_lines(block: dict) -> list[str]:
    """What the case referral promises, and whether each remedy held at every severity <= 3."""
    from .measure import holds_everywhere

    out = []
    ref = block.get("case_referral")
    if ref:
        out.append(f"case referral (a case fails below Dice {block['settings']['fail_dice']:g}): "
                   + ref["statement"])
    if block.get("case_referral_note"):
        out.append(block["case_referral_note"])
    for remedy in REMEDIES:
        held = holds_everywhere(block, remedy)
        if held is not None:
            out.append(f"{REMEDY_LABELS[remedy]}: realised risk <= alpha in every row up to severity 3: "
                       f"{'yes' if held else 'no'}")
    return out


def format_shift(block: dict) -> str:
    return "\n".join(["Shift testbed (Dice, AURC in %; risk as a fraction, coverage in brackets; ✓ = risk <= α)",
                      markdown_table(block), *summary_lines(block)])


def console_text(block: dict, table_path: str | Path, max_rows: int = 12) -> str:
    """What the run prints: the table when it is short, else the summary and where the table is."""
    if len(block["rows"]) <= max_rows:
        return format_shift(block)
    return "\n".join([f"Shift testbed: {len(block['rows'])} rows (condition x group), the table in {table_path}",
                      *summary_lines(block)])


def plot_shift(block: dict, path: str | Path, max_thresholds: int = 3) -> Path | None:
    """Per kind (columns): Dice at coverage 1, then per calibrated threshold (rows, at most
    ``max_thresholds``) its realised risk as calibrated and under each remedy against severity, alpha
    dashed. None when there is no corruption to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in block["rows"] if r["group"] == "all"]
    clean = next((r for r in rows if r["kind"] == "clean"), None)
    kinds = list(dict.fromkeys(r["kind"] for r in rows if r["kind"] != "clean"))
    if not kinds or clean is None:
        return None
    cals = [(e["method"], e["key"], e["alpha"], _label(e)) for e in clean["risk"]][:max_thresholds]
    fig, axes = plt.subplots(1 + len(cals), len(kinds), figsize=(2.3 * len(kinds), 2.4 * (1 + len(cals))),
                             squeeze=False, sharey="row")
    for j, kind in enumerate(kinds):
        pts = [clean] + sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["severity"])
        sev = [r["severity"] for r in pts]
        axes[0, j].plot(sev, [100 * r["dice"] for r in pts], "o-", color="k")
        axes[0, j].set_title(kind, fontsize=9)
        for i, (method, key, alpha, _) in enumerate(cals, 1):
            ax = axes[i, j]
            for remedy, style in zip(REMEDIES, ("o-", "s--", "^:", "d-.")):
                ys = [next(((e.get(remedy) or {}).get("risk") for e in r["risk"] if (e["method"], e["key"]) == (method, key)),
                           None) for r in pts]
                if any(y is not None for y in ys):
                    ax.plot(sev, [float("nan") if y is None else y for y in ys], style, ms=3, label=REMEDY_LABELS[remedy])
            ax.axhline(alpha, color="r", lw=0.8, ls="--")
        for ax in axes[:, j]:
            ax.set_xticks(sev)
        axes[-1, j].set_xlabel("severity (0 = clean)")
    axes[0, 0].set_ylabel("Dice at coverage 1 (%)")
    for i, (*_, label) in enumerate(cals, 1):
        axes[i, 0].set_ylabel(f"realised risk\n{label}")
    if cals:
        axes[1, -1].legend(fontsize=6)
    fig.tight_layout()
    from uaseg.io import save_figure  # written whole or not at all, as every figure

    try:
        return save_figure(path, fig, dpi=90)
    finally:
        plt.close(fig)
