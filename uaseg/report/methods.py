"""The Methods table: every (training setting, uncertainty score) of a dataset next to the plain
baseline, with what each costs at test time.

A row is one training setting (λ = 0 or a ranking-loss setting; single networks or ``uaseg
ensemble`` ensembles) evaluated with one score. Numbers are, as in Table 1, the mean over folds of
the per-fold mean over runs (seeds). The reference of a table is (λ = 0, single network,
``max_softmax``) in the same context (dataset, model, tag, result-changing overrides): the relative
AURC change is against it, and the paired test compares per-case Dice at coverage 0.90, paired by
(fold, case), with the Wilcoxon signed-rank test. The ensemble's pairwise-Dice disagreement is a
case-level score only: its row fills the case-level column alone.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uaseg.io import save_figure
from uaseg.selective.format import COVERAGE_AXIS

from . import stats
from .figures import _figure, read_curve
from .grouping import context_of, describe_context, describe_loss, is_baseline, loss_of

REFERENCE = ("single", (), "max_softmax")
PAIRWISE = "pairwise_dice"
COV = "0.90"


@dataclass
class MethodRow:
    context: tuple  # without the method
    method: str
    loss: tuple  # () for λ = 0
    score: str
    runs: list = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.method, self.loss, self.score)

    def setting(self) -> str:
        base = "λ=0 (baseline)" if not self.loss else describe_loss(self.loss)
        return base + (" + ensemble" if self.method == "ensemble" else "")

    def fold_mean(self, value) -> float:
        """Mean over folds of the per-fold mean over runs of ``value(run)`` (None/NaN left out)."""
        per_fold = []
        for fold in sorted({r.fold for r in self.runs}, key=str):
            vals = [v for v in (value(r) for r in self.runs if r.fold == fold) if stats._finite(v)]
            if vals:
                per_fold.append(float(np.mean(vals)))
        return float(np.mean(per_fold)) if per_fold else math.nan

    def fold_sd(self, value) -> float:
        """Mean over folds of the per-fold sample standard deviation over runs (seeds) of ``value(run)``:
        the seed spread a row must beat (NaN with fewer than two runs per fold)."""
        per_fold = []
        for fold in sorted({r.fold for r in self.runs}, key=str):
            vals = [v for v in (value(r) for r in self.runs if r.fold == fold) if stats._finite(v)]
            if len(vals) > 1:
                per_fold.append(float(np.std(vals, ddof=1)))
        return float(np.mean(per_fold)) if per_fold else math.nan

    def metric(self, fn) -> float:
        if self.score == PAIRWISE:
            return math.nan
        return self.fold_mean(lambda r: fn(r.scores[self.score]))

    def case_dice(self, cov: str = COV) -> dict:
        """(fold, case_id) -> Dice at ``cov`` (mean over the fold's runs)."""
        acc: dict = {}
        if self.score == PAIRWISE:
            return acc
        for r in self.runs:
            for c in r.scores[self.score].cases or []:
                point = c.at_coverage.get(cov)
                if point is not None and stats._finite(point.dice):
                    acc.setdefault((r.fold, c.case_id), []).append(point.dice)
        return {k: float(np.mean(v)) for k, v in acc.items()}


def _without_method(ctx: tuple) -> tuple:
    return tuple((k, v) for k, v in ctx if k != "method")


def method_rows(runs) -> "OrderedDict[tuple, list[MethodRow]]":
    """context -> its rows (one per setting and score), the reference first."""
    rows: OrderedDict = OrderedDict()
    for r in runs:
        ctx = context_of(r)
        method = dict(ctx).get("method") or "single"
        loss = () if is_baseline(r) else loss_of(r)
        names = list(r.scores) + ([PAIRWISE] if r.summary.get("case_level_pairwise_dice") else [])
        for score in names:
            key = (_without_method(ctx), method, loss, score)
            rows.setdefault(key, MethodRow(key[0], method, loss, score)).runs.append(r)
    out: OrderedDict = OrderedDict()
    for row in rows.values():
        out.setdefault(row.context, []).append(row)
    for rs in out.values():
        rs.sort(key=_order)
    return out


def _order(row: MethodRow) -> tuple:
    """The reference first, then single networks before ensembles, settings, scores as listed."""
    names = list(row.runs[0].scores) + [PAIRWISE]
    return (row.key != REFERENCE, row.method != "single", bool(row.loss), str(row.loss),
            names.index(row.score) if row.score in names else len(names))


def curve_file(run, score: str) -> str:
    return "curves.csv" if score == next(iter(run.scores)) else f"curves_{score}.csv"


def methods_figure(ctx: tuple, rows: list[MethodRow], path) -> Path | None:
    """Every row's Dice risk-coverage curve (mean over its runs) in one figure."""
    grid = np.linspace(1.0, 0.0, 201)
    fig = _figure(11.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    scores = list(dict.fromkeys(r.score for r in rows))
    settings = list(dict.fromkeys((r.method, r.loss) for r in rows))
    styles = ["-", "--", ":", "-."]
    drawn = 0
    for row in rows:
        if row.score == PAIRWISE:
            continue
        curves = [c for c in (read_curve(r.path, curve_file(r, row.score)) for r in row.runs) if c is not None]
        if not curves:
            continue
        risk = 1.0 - np.mean([np.interp(grid, c[0], c[1]) for c in curves], axis=0)
        ax.plot(grid, 100 * risk, lw=1.2, color=f"C{scores.index(row.score) % 10}",
                ls=styles[settings.index((row.method, row.loss)) % len(styles)],
                label=f"{row.setting()} · {row.score} ({row.metric(lambda s: s.aurc_dice):.2f} %)")
        drawn += 1
    if not drawn:
        return None
    ax.set_xlim(1.0, 0.0)
    ax.set_xlabel(COVERAGE_AXIS)
    ax.set_ylabel("risk = 1 − Dice (%)")
    ax.set_title(describe_context(ctx)[:90], fontsize=7, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="setting · score (AURC)",
              title_fontsize=7)
    fig.subplots_adjust(left=0.07, right=0.52, bottom=0.12, top=0.92)
    return save_figure(Path(path), fig)


def _cost(row: MethodRow, field_: str) -> float:
    if row.score == PAIRWISE:
        return math.nan
    return row.fold_mean(lambda r: (r.score_info(row.score)["cost"] or {}).get(field_))


def row_values(row: MethodRow, ref: MethodRow | None) -> dict:
    """Every column of one row (fractions converted to the table's units)."""
    v = {
        "aurc_dice": row.metric(lambda s: s.aurc_dice),
        "aurc_sd": (math.nan if row.score == PAIRWISE
                    else row.fold_sd(lambda r: r.scores[row.score].aurc_dice)),
        "eaurc": 100 * row.metric(lambda s: s.eaurc),
        "augrc": 100 * row.metric(lambda s: s.augrc),
        "dice_full": 100 * row.metric(lambda s: s.dice_full.mean),
        "dice_90": 100 * row.metric(lambda s: s.at_coverage[COV].dice_mean if COV in s.at_coverage else None),
        "dice_p5_90": 100 * row.metric(lambda s: s.at_coverage[COV].dice_p5 if COV in s.at_coverage else None),
        "case_aurc": (row.fold_mean(lambda r: (r.summary.get("case_level_pairwise_dice") or {}).get("aurc"))
                      if row.score == PAIRWISE else row.metric(lambda s: s.case_level.aurc)),
        "passes": _cost(row, "passes"),
        "seconds_per_case": _cost(row, "seconds_per_case"),
        # a learned score's own cost (ConfidNet's head): parameters and training seconds beyond the segmenter's
        "extra_parameters": _cost(row, "parameters"),
        "extra_train_seconds": _cost(row, "train_seconds"),
        "prediction": (row.runs[0].score_info(row.score)["prediction"] or "") if row.score != PAIRWISE else "",
        "n_runs": len(row.runs),
        "n_folds": len({r.fold for r in row.runs}),
    }
    v["rel_aurc_pct"], v["p_cases"], v["n_pairs"] = math.nan, math.nan, 0
    if ref is not None and row is not ref and row.score != PAIRWISE:
        v["rel_aurc_pct"] = stats.relative_change(ref.metric(lambda s: s.aurc_dice), v["aurc_dice"])
        v["p_cases"], _, v["n_pairs"] = stats.paired_test(ref.case_dice(), row.case_dice(), force="wilcoxon")
    return v


def _extra(v: dict) -> str:
    """The extra-training column: ``+N params, S s`` for a learned score, else ``–``."""
    if math.isnan(v["extra_parameters"]):
        return "–"
    return f"+{v['extra_parameters']:,.0f} params, {_fmt(v['extra_train_seconds'], 1)} s"


def _fmt(x, d=2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def render_methods(groups) -> tuple[str, list[dict]]:
    """Markdown tables (one per context) and tidy rows for methods.csv."""
    lines, tidy = [], []
    for ctx, rows in groups.items():
        ref = next((r for r in rows if r.key == REFERENCE), None)
        lines += [f"### {describe_context(ctx)}", "",
                  "| Setting | Score | Prediction | AURC (%) | sd (seeds) | rel. Δ AURC | E-AURC (%) | AUGRC (%) | "
                  "Dice@1.00 (%) | Dice@0.90 (%) | Dice@5PCTL@0.90 (%) | case AURC (%) | passes | s / case | "
                  "extra training | p (cases, Dice@0.90) | runs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            v = row_values(row, ref)
            rel = "reference" if row is ref else ("–" if math.isnan(v["rel_aurc_pct"])
                                                  else f"{v['rel_aurc_pct'] + 0.0:+.1f} %".replace("-0.0", "±0.0").replace("+0.0", "±0.0"))
            p = "–" if math.isnan(v["p_cases"]) else f"{v['p_cases']:.2g} (n={v['n_pairs']})"
            lines.append("| " + " | ".join([
                row.setting(), row.score, v["prediction"], _fmt(v["aurc_dice"], 3), _fmt(v["aurc_sd"], 3), rel, _fmt(v["eaurc"]),
                _fmt(v["augrc"]), _fmt(v["dice_full"]), _fmt(v["dice_90"]), _fmt(v["dice_p5_90"]),
                _fmt(v["case_aurc"]), _fmt(v["passes"], 0), _fmt(v["seconds_per_case"], 3), _extra(v), p,
                f"{v['n_runs']} ({v['n_folds']} fold{'s' if v['n_folds'] != 1 else ''})"]) + " |")
            tidy.append({"context": describe_context(ctx), "setting": row.setting(), "method": row.method,
                         "score": row.score, **v})
        if ref is None:
            lines.append("")
            lines.append("*No (λ = 0, single network, max_softmax) runs in this context: no reference.*")
        lines.append("")
    return "\n".join(lines), tidy
