"""Referral with a guarantee in the report: one row per (comparison, arm, method, alpha) from the runs'
``summary.json`` ``risk_control`` sections (``eval.risk_control``). Numbers are means over folds of
each run's test-set values, as everywhere in the report."""
from __future__ import annotations

import math

from . import stats
from .grouping import describe_loss

NOTE = (
    "Each run calibrates its selected checkpoint's referral threshold on its validation cases and "
    "measures it on its test cases. crc bounds the *expected* Dice risk (over calibration and test "
    "draws, so one fold may exceed α); ltt bounds P(risk > α) ≤ δ. Both bound the mean over cases, "
    "not every case: *cases > α* is the mean fraction of test cases above α. *Oracle* = the coverage "
    "the test cases themselves would have allowed at risk α (no guarantee); *lost* = oracle − achieved. "
    "The validation cases also selected the checkpoint, which makes calibration slightly optimistic in "
    "principle."
)
FIELDS = ("n_calibration", "test_risk", "test_coverage", "oracle_coverage", "coverage_lost",
          "test_fraction_above_alpha")


def _get(method: str, alpha: str, name: str):
    def get(result):
        v = ((result.risk_control or {}).get(method) or {}).get(alpha, {}).get(name)
        return None if v is None else float(v)
    return get


def _keys(arm) -> list[tuple[str, str]]:
    found = {(m, a) for r in arm.runs for m, by in (r.result.risk_control or {}).items() for a in by}
    return sorted(found, key=lambda k: (k[0], float(k[1])))


def _num(v, d=4) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def risk_rows(comparisons) -> list[dict]:
    rows = []
    for i, comp in enumerate(comparisons, 1):
        for label, arm in (("baseline λ=0", comp.base), (describe_loss(comp.loss), comp.ours)):
            if arm is None:
                continue
            for method, alpha in _keys(arm):
                row = {"comparison": i, "arm": label, "method": method, "alpha": alpha}
                for name in FIELDS:
                    row[name], row[f"{name}_std"], row["n_folds"] = stats.describe(
                        stats.fold_values(arm, _get(method, alpha, name)).values())
                risks = stats.fold_values(arm, _get(method, alpha, "test_risk"))
                row["folds_above_alpha"] = sum(v > float(alpha) for v in risks.values())
                deltas = {_get(method, alpha, "delta")(r.result) for r in arm.runs} - {None}
                row["delta"] = ", ".join(f"{d:g}" for d in sorted(deltas)) or "–"
                rows.append(row)
    return rows


def render_risk_table(rows) -> str:
    lines = ["| # | Arm | Method | α | δ | n cal | Test risk | Test coverage | Oracle coverage | "
             "Coverage lost | Cases > α | Folds with risk > α |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            f"#{r['comparison']}", r["arm"], r["method"], r["alpha"], r["delta"], _num(r["n_calibration"], 0),
            _num(r["test_risk"]) + (f" (sd {_num(r['test_risk_std'])})" if r["n_folds"] > 1 else ""),
            _num(r["test_coverage"]), _num(r["oracle_coverage"]), _num(r["coverage_lost"]),
            _num(r["test_fraction_above_alpha"], 3), f"{r['folds_above_alpha']}/{r['n_folds']}"]) + " |")
    return "\n".join(lines)


def risk_section(comparisons) -> list[str]:
    """Markdown lines of the section (none when no run has risk control)."""
    rows = risk_rows(comparisons)
    if not rows:
        return []
    return ["## Referral with a guarantee (risk control)", "", NOTE, "", render_risk_table(rows), ""]
