"""Referral with a guarantee in the report: one row per (comparison, arm, method, risk, alpha) from the
runs' ``summary.json`` ``risk_control`` sections (``eval.risk_control``), with every risk kind's realised
test value (what controlling one does to the others). Numbers are means over folds of each run's
test-set values, as everywhere in the report."""
from __future__ import annotations

import math

from . import stats
from .grouping import describe_loss

NOTE = (
    "Each run calibrates its selected checkpoint's referral threshold on its validation cases and "
    "measures it on its test cases, for the risk named in *Risk* (dice: 1 − Dice, class mean; structure: "
    "each class's 1 − Dice, the worst shown; tail@β: fraction of cases with 1 − Dice > β; fnr: missed "
    "foreground fraction). crc bounds the *expected* risk (over calibration and test "
    "draws, so one fold may exceed α); ltt bounds P(risk > α) ≤ δ. Both bound the mean over cases "
    "(patients when the dataset names them), not every case: *cases > α* is the mean fraction of test "
    "cases above α; *threshold* = the mean over folds of the calibrated u threshold (– when every fold "
    "refers everything); *all risks* = the realised test values of every kind at that threshold "
    "(Dice risk / worst structure / tail / FNR). *Oracle* = the coverage "
    "the test cases themselves would have allowed at risk α (no guarantee); *lost* = oracle − achieved. "
    "The validation cases also selected the checkpoint, which makes calibration slightly optimistic in "
    "principle."
)
FIELDS = ("n_calibration", "threshold", "test_risk", "test_coverage", "oracle_coverage", "coverage_lost",
          "test_fraction_above_alpha", "values.dice", "values.structure_max", "values.tail", "values.fnr")


def _get(method: str, alpha: str, name: str):
    def get(result):
        r = ((result.risk_control or {}).get(method) or {}).get(alpha, {})
        v = r.get(name)
        if v is None and name.startswith("values."):       # test_values.<kind>
            v = (r.get("test_values") or {}).get(name[7:])
            if name[7:] == "tail":
                v = next((x for k, x in (r.get("test_values") or {}).items() if k.startswith("tail@")), None)
        return None if v is None or isinstance(v, dict) else float(v)
    return get


def _keys(arm) -> list[tuple[str, str]]:
    found = {(m, a) for r in arm.runs for m, by in (r.result.risk_control or {}).items() for a in by}
    return sorted(found, key=lambda k: (k[0], k[1].rpartition(":")[0], float(k[1].rpartition(":")[2])))


def _num(v, d=4) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def risk_rows(comparisons) -> list[dict]:
    rows = []
    for i, comp in enumerate(comparisons, 1):
        for label, arm in (("baseline λ=0", comp.base), (describe_loss(comp.loss), comp.ours)):
            if arm is None:
                continue
            for method, key in _keys(arm):
                kind, _, alpha = key.rpartition(":")
                pvalues = {((r.result.risk_control or {}).get(method) or {}).get(key, {}).get("pvalue") for r in arm.runs} - {None}
                row = {"comparison": i, "arm": label, "method": method + (f" ({', '.join(sorted(pvalues))})" if pvalues else ""),
                       "risk": kind or "dice", "alpha": alpha}
                tails = {k for r in arm.runs for k in (((r.result.risk_control or {}).get(method) or {})
                                                       .get(key, {}).get("test_values") or {}) if k.startswith("tail@")}
                row["tail_name"] = ", ".join(sorted(tails)) or "tail"
                for name in FIELDS:
                    row[name], row[f"{name}_std"], n = stats.describe(
                        stats.fold_values(arm, _get(method, key, name)).values())
                    if name == "test_risk":
                        row["n_folds"] = n
                row["statement"] = next((((r.result.risk_control or {}).get(method) or {}).get(key, {}).get("statement")
                                         for r in arm.runs if ((r.result.risk_control or {}).get(method) or {}).get(key)), None)
                risks = stats.fold_values(arm, _get(method, key, "test_risk"))
                row["folds_above_alpha"] = sum(v > float(alpha) for v in risks.values())
                deltas = {_get(method, key, "delta")(r.result) for r in arm.runs} - {None}
                row["delta"] = ", ".join(f"{d:g}" for d in sorted(deltas)) or "–"
                rows.append(row)
    return rows


def render_risk_table(rows) -> str:
    lines = ["| # | Arm | Risk | Method | α | δ | n cal | Threshold | Test risk | Test coverage | Oracle coverage | "
             "Coverage lost | Cases > α | Folds with risk > α | All risks (dice / worst structure / tail / fnr) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        every = " / ".join([_num(r["values.dice"]), _num(r["values.structure_max"]),
                            f"{_num(r['values.tail'], 3)} ({r['tail_name']})", _num(r["values.fnr"])])
        lines.append("| " + " | ".join([
            f"#{r['comparison']}", r["arm"], r["risk"], r["method"], r["alpha"], r["delta"], _num(r["n_calibration"], 0),
            _num(r["threshold"]),
            _num(r["test_risk"]) + (f" (sd {_num(r['test_risk_std'])})" if r["n_folds"] > 1 else ""),
            _num(r["test_coverage"]), _num(r["oracle_coverage"]), _num(r["coverage_lost"]),
            _num(r["test_fraction_above_alpha"], 3), f"{r['folds_above_alpha']}/{r['n_folds']}", every]) + " |")
    return "\n".join(lines)


def risk_section(comparisons) -> list[str]:
    """Markdown lines of the section (none when no run has risk control)."""
    rows = risk_rows(comparisons)
    if not rows:
        return []
    said, guarantees = set(), []
    for r in rows:   # one sentence per (risk, method, alpha): the first run's (n and threshold differ per fold)
        k = (r["risk"], r["method"], r["alpha"])
        if r.get("statement") and k not in said:
            said.add(k)
            guarantees.append(f"- {r['risk']} {r['method']} α={r['alpha']}: {r['statement']}")
    extra = ["", "Guarantees as stated by the first run of each row (n and threshold differ per fold):", "",
             *guarantees] if guarantees else []
    return ["## Referral with a guarantee (risk control)", "", NOTE, "", render_risk_table(rows), *extra, ""]
