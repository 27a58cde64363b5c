"""The comparison as tidy rows (report.csv) and as the paper's Table 1 in markdown.

One row per (comparison, part, metric, coverage).  Parts: ``all`` (the whole test set), then,
when summaries carry ``groups`` (GlaS testA/testB), each group and ``average`` (per fold the
plain mean over groups, as the paper averages parts A and B).  One unit per kind, as everywhere
uaseg shows numbers: Dice and every AURC-type area in percent (voxel ``aurc``/``eaurc``/``augrc`` are
fractions in summary.json and converted here), achieved coverage as a fraction.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from uaseg.config.identity import LOSS_KEYS
from uaseg.io import write_text
from uaseg.selective.result import FULL_COVERAGE, SelectiveResult

from . import stats
from .grouping import describe_context, describe_loss

#: (metric, unit, per-coverage?) in table order
METRICS = (("aurc_dice", "%", False), ("dice_mean", "%", True), ("dice_std", "%", True),
           ("dice_p5", "%", True), ("achieved_coverage", "", True), ("aurc", "%", False),
           ("eaurc", "%", False), ("augrc", "%", False))
#: stored as fractions in summary.json, reported in percent
_FRACTION_AREAS = ("aurc", "eaurc", "augrc")
COLUMNS = ("comparison", "dataset", "model", "tag", "context", "setting", *LOSS_KEYS, "part",
           "metric", "coverage", "unit", "base_mean", "base_std", "base_n", "ours_mean",
           "ours_std", "ours_n", "delta", "rel_change_pct", "p_value", "test", "n_pairs",
           "p_value_cases", "test_cases", "n_case_pairs")


def metric_value(part: SelectiveResult, metric: str, cov: str | None):
    """One number of one result (or one group of it), in the report's unit; None when absent."""
    if cov is None:
        v = getattr(part, metric)
        return 100.0 * v if metric in _FRACTION_AREAS and v is not None else v
    if cov != FULL_COVERAGE and cov not in part.at_coverage:
        return None
    v = getattr(part.point(cov), metric)
    return None if v is None else (100.0 * v if metric.startswith("dice") else v)


def part_getter(part: str, metric: str, cov: str | None):
    """result -> value for ``part`` (all | a group | average over groups)."""
    def get(result: SelectiveResult):
        if part == "all":
            return metric_value(result, metric, cov)
        groups = result.groups
        if part == "average":
            vals = [metric_value(g, metric, cov) for g in groups.values()]
            ok = [v for v in vals if v is not None and math.isfinite(v)]
            return float(np.mean(ok)) if ok and len(ok) == len(vals) else None
        return metric_value(groups[part], metric, cov) if part in groups else None
    return get


def _runs(comp):
    return [r for arm in (comp.base, comp.ours) if arm for r in arm.runs]


def coverage_keys(comp) -> list[str]:
    keys = {k for r in _runs(comp) for k in r.result.at_coverage}
    return [FULL_COVERAGE] + sorted(keys, key=float, reverse=True)


def parts(comp) -> list[str]:
    groups = sorted({g for r in _runs(comp) for g in r.result.groups})
    return ["all"] + (groups + ["average"] if len(groups) > 1 else groups)


def build_rows(comparisons) -> list[dict]:
    rows = []
    for i, comp in enumerate(comparisons, 1):
        ctx = dict(comp.context)
        head = {"comparison": i, "dataset": ctx.get("dataset"), "model": ctx.get("model"),
                "tag": ctx.get("tag"), "context": describe_context(comp.context),
                "setting": describe_loss(comp.loss), **{k: dict(comp.loss).get(k) for k in LOSS_KEYS}}
        covs = coverage_keys(comp)
        for part in parts(comp):
            for metric, unit, per_cov in METRICS:
                for cov in (covs if per_cov else [None]):
                    rows.append({**head, "part": part, "metric": metric, "coverage": cov or "",
                                 "unit": unit, **_compare(comp, part, metric, cov)})
    return rows


def _compare(comp, part, metric, cov) -> dict:
    get = part_getter(part, metric, cov)
    b, o = stats.fold_values(comp.base, get), stats.fold_values(comp.ours, get)
    bm, bs, bn = stats.describe(b.values())
    om, os_, on = stats.describe(o.values())
    out = {"base_mean": bm, "base_std": bs, "base_n": bn, "ours_mean": om, "ours_std": os_,
           "ours_n": on, "delta": om - bm, "rel_change_pct": stats.relative_change(bm, om),
           "p_value": math.nan, "test": "", "n_pairs": 0,
           "p_value_cases": math.nan, "test_cases": "", "n_case_pairs": 0}
    if b and o:
        out["p_value"], out["test"], out["n_pairs"] = stats.paired_test(b, o)
    if metric == "dice_mean" and comp.base and comp.ours:
        group = None if part in ("all", "average") else part
        cb = stats.case_values(comp.base, cov, group)
        co = stats.case_values(comp.ours, cov, group)
        if cb and co:
            p, test, n = stats.paired_test(cb, co, force="wilcoxon")
            out.update(p_value_cases=p, test_cases=test, n_case_pairs=n)
    return out


def write_csv(rows, path) -> None:
    write_csv_rows(path, rows, COLUMNS)


def write_csv_rows(path, rows: list[dict], columns=None) -> None:
    """Tidy rows as CSV (NaN and None as empty cells); columns default to the first row's keys."""
    columns = list(columns or (rows[0] if rows else []))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if _nan(r.get(k)) else r.get(k)) for k in columns})
    write_text(path, buf.getvalue())


# ---------------------------------------------------------------- markdown
def one_line(text, limit: int | None = None) -> str:
    """The lines of ``text`` joined with `` ⏎ `` (shortened to ``limit`` characters)."""
    one = " ⏎ ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return one[: limit - 1] + "…" if limit is not None and len(one) > limit else one


def md_cell(text, limit: int | None = None) -> str:
    """One Markdown table cell: :func:`one_line` with ``|`` escaped, so a multi-line message (a failed
    job's error, a tag) stays in its row and its columns."""
    return one_line(text, limit).replace("|", "\\|")


def md_row(cells) -> str:
    return "| " + " | ".join(md_cell(c) for c in cells) + " |"


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _num(v, d=2) -> str:
    return "–" if _nan(v) else f"{v:.{d}f}"


def _p(p) -> str:
    return "–" if _nan(p) else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def _cell(row, side, d=2, within=None) -> str:
    """``mean±within (sd over folds, n)``; ``within`` = the across-case std row."""
    m, s, n = row[f"{side}_mean"], row[f"{side}_std"], row[f"{side}_n"]
    if n == 0:
        return "–"
    text = _num(m, d) + (f"±{_num(within[f'{side}_mean'], d)}" if within else "")
    spread = f"sd {_num(s, d)}, " if n > 1 else ""
    return f"{text} ({spread}n={n})"


def _index(rows):
    return {(r["comparison"], r["part"], r["metric"], r["coverage"]): r for r in rows}


def _part_label(part):
    return "" if part == "all" else (" · average of parts" if part == "average" else f" · {part}")


def render_table1(rows) -> str:
    """The paper's Table 1: AURC (%) then Dice mean ± std and Dice@5PCTL per coverage."""
    idx = _index(rows)
    lines = ["| Dataset | Setting | AURC (%) Baseline | AURC (%) Ours | AURC rel. Δ | Coverage | "
             "Dice (%) Baseline | Dice (%) Ours | Dice@5PCTL (%) Baseline | Dice@5PCTL (%) Ours |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for comp, part in dict.fromkeys((r["comparison"], r["part"]) for r in rows):
        a = idx[(comp, part, "aurc_dice", "")]
        covs = [k[3] for k in idx if k[:3] == (comp, part, "dice_mean")]
        for j, cov in enumerate(covs):
            dm, ds, p5 = (idx[(comp, part, m, cov)] for m in ("dice_mean", "dice_std", "dice_p5"))
            first = j == 0
            rel = "–" if _nan(a["rel_change_pct"]) else f"{a['rel_change_pct']:+.1f} %"
            lines.append(md_row([
                f"#{comp} {a['dataset']} / {a['model']}{_part_label(part)}" if first else "",
                a["setting"] if first else "",
                _cell(a, "base", 3) if first else "", _cell(a, "ours", 3) if first else "",
                rel if first else "", cov,
                _cell(dm, "base", within=ds), _cell(dm, "ours", within=ds),
                _cell(p5, "base"), _cell(p5, "ours")]))
    return "\n".join(lines)


def render_tests(rows) -> str:
    """Δ, relative change and both paired tests for AURC, Dice and Dice@5PCTL."""
    lines = ["| # | Part | Metric | Coverage | Δ (ours − base) | rel. Δ | p (folds) | test, n | "
             "p (cases) | test, n |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["metric"] not in ("aurc_dice", "dice_mean", "dice_p5") or r["base_n"] == 0 \
                or r["ours_n"] == 0:
            continue
        lines.append(md_row([
            str(r["comparison"]), r["part"], r["metric"], r["coverage"] or "–",
            _num(r["delta"], 3), "–" if _nan(r["rel_change_pct"]) else f"{r['rel_change_pct']:+.1f} %",
            _p(r["p_value"]), f"{r['test']}, n={r['n_pairs']}" if r["test"] else "–",
            _p(r["p_value_cases"]),
            f"{r['test_cases']}, n={r['n_case_pairs']}" if r["test_cases"] else "–"]))
    return "\n".join(lines)
