"""Put it together: collect, compare, write report.md / report.csv / figures, print.

Never overwrites: the first report of a folder is ``report.md`` + ``report.csv`` + ``figures/``;
when ``report.md`` exists the next is ``report-2.md`` + ``report-2.csv`` + ``figures-2/`` (then
``-3`` ...).  ``force=True`` rewrites ``report.md``/``report.csv``/``figures/`` in place.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from uaseg.io import write_text

from . import curves as lc
from . import figures as figs
from . import table
from .collect import collect
from .grouping import compare, describe_context, describe_loss
from .methods import method_rows, methods_figure, render_methods
from .risk import risk_section
from .shift import shift_section
from .sweep import expand, find_multirun_files
from .table import write_csv_rows

CAPTION = (
    "Every number is the **mean over folds of the per-fold metric** (a fold's value = the mean "
    "over its runs, e.g. seeds); *(sd …, n=…)* = sample standard deviation over folds and the "
    "number of folds. In *Dice (%)* cells, *mean±std* is the paper's across-case mean and std "
    "within a fold, each averaged over folds. Baseline = λ = 0 with the same dataset, model, tag "
    "and result-changing overrides; its loss keys are irrelevant (the ranking term is off). "
    "AURC rel. Δ = (ours − baseline) / baseline."
)
METHODS_NOTE = (
    "One row per training setting and test-time uncertainty score (`eval.scores`, `uaseg ensemble`); "
    "numbers are means over folds of per-fold means over runs (seeds). *Prediction* says which "
    "segmentation a row is evaluated with (multi-pass scores use the argmax of the mean, so their Dice "
    "at coverage 1 differs). Reference: λ = 0, single network, max_softmax. *p (cases)*: per-case Dice at "
    "coverage 0.90 against the reference, paired by (fold, case), Wilcoxon signed-rank. *passes* and "
    "*s / case*: forward passes per image and seconds per case measured in the run (machine-dependent). "
    "*sd (seeds)*: sample standard deviation of AURC over a fold's runs, averaged over folds (a row beats "
    "another only by more than this spread). *extra training*: a learned score's own parameters and fitting "
    "seconds (the ConfidNet head of `tcp`)."
)
TESTS_NOTE = (
    "p (folds): paired by fold; Wilcoxon signed-rank (scipy) when n ≥ 5, else paired t-test. "
    "p (cases): per-case Dice at that coverage paired by (fold, case_id), Wilcoxon signed-rank; "
    "for *average* the cases of all parts are pooled. Uncorrected for multiple comparisons."
)


@dataclass
class Report:
    """What a report run produced (paths are None when nothing was written)."""

    n_runs: int
    markdown: str
    n_problems: int = 0  # job folders without a summary (failed or incomplete)
    md_path: Path | None = None
    csv_path: Path | None = None
    figures: list[Path] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


def output_paths(out_dir: Path, force: bool) -> tuple[Path, Path, Path]:
    """(report.md, report.csv, figures/) -- or the first free ``-N`` variant."""
    if force or not (out_dir / "report.md").exists():
        return out_dir / "report.md", out_dir / "report.csv", out_dir / "figures"
    i = 2
    while (out_dir / f"report-{i}.md").exists() or (out_dir / f"report-{i}.csv").exists():
        i += 1
    return out_dir / f"report-{i}.md", out_dir / f"report-{i}.csv", out_dir / f"figures-{i}"


def _rel(p: Path, root: Path) -> str:
    try:
        return str(Path(p).relative_to(root))
    except ValueError:
        return str(p)


def _status_sections(root, runs, problems) -> list[str]:
    out = []
    if problems:
        out += ["## Jobs without a summary", "",
                "| job folder | status | error |", "|---|---|---|"]
        for p in problems:
            err = (p.error or "no failed.json and no error in a log: still running or killed")
            out.append(table.md_row([f"`{_rel(p.path, root)}`", p.status, table.one_line(err, 300)]))
        out.append("")
    for mr in find_multirun_files(root):
        try:
            grid = expand(mr, [r for r in runs + problems if mr.parent in r.path.parents])
        except Exception as e:  # an unreadable multirun.yaml must not stop the report
            out += [f"## Sweep `{_rel(mr, root)}`", "", f"could not expand: {e}", ""]
            continue
        missing = [g for g in grid if g.status != "ok"]
        out += [f"## Sweep `{_rel(mr, root)}`: {len(grid)} jobs, "
                f"{len(grid) - len(missing)} with a summary, {len(missing)} without", ""]
        if missing:
            out += ["| combination | status | folder / error |", "|---|---|---|"]
            for g in missing:
                where = _rel(g.path, root) if g.path else "–"
                err = f": {table.one_line(g.error, 300)}" if g.error else ""
                out.append(table.md_row([f"`{g.label()}`", g.status, f"`{where}`{err}"]))
            out.append("")
    return out


def _comparison_list(comparisons) -> list[str]:
    out = ["## Comparisons", ""]
    for i, c in enumerate(comparisons, 1):
        base = f"{c.base.n_folds} folds / {len(c.base.runs)} runs" if c.base else "**none found**"
        ours = f"{c.ours.n_folds} folds / {len(c.ours.runs)} runs" if c.ours else "none"
        out.append(f"{i}. {describe_context(c.context)} — ours: {describe_loss(c.loss)} "
                   f"({ours}); baseline λ=0: {base}")
    return out + [""]


def build_report(root, out_dir=None, force: bool = False, make_figures: bool = True) -> Report:
    """Collect runs below ``root`` and write the report into ``out_dir`` (default ``root``)."""
    root = Path(root)
    runs, problems = collect(root)
    comparisons = compare(runs)
    rows = table.build_rows(comparisons)
    method_groups = method_rows(runs)
    method_tidy: list[dict] = []
    md = [f"# Selective segmentation report: `{root}`", "",
          f"{len(runs)} runs with a summary, {len(problems)} job folders without one; "
          f"generated {_dt.datetime.now().isoformat(timespec='seconds')}.", ""]
    if not root.is_dir():
        md[2] = f"{root} is not a folder."
    if runs:
        md += _comparison_list(comparisons)
        md += ["## Table 1: baseline vs ours", "", CAPTION, "", table.render_table1(rows), "",
               "## Changes and paired tests", "", TESTS_NOTE, "", table.render_tests(rows), ""]
        methods_md, method_tidy = render_methods(method_groups)
        md += ["## Methods: training settings × uncertainty scores", "", METHODS_NOTE, "", methods_md]
        md += risk_section(comparisons)
        md += shift_section(comparisons)[0]
    md += _status_sections(root, runs, problems) if root.is_dir() else []
    report = Report(len(runs), "", rows=rows, n_problems=len(problems))
    if not runs:  # nothing to compare: print what we found, write nothing
        report.markdown = "\n".join(md)
        return report
    out_dir = Path(out_dir) if out_dir else root
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path, fig_dir = output_paths(out_dir, force)
    arm_curves = lc.collect_curves(comparisons)
    curves_csv = csv_path.with_name(csv_path.name.replace("report", "learning_curves"))
    curves_png = None
    if make_figures:
        fig_dir.mkdir(parents=True, exist_ok=True)
        curves_png = lc.figure(arm_curves, fig_dir / "learning_curves.png")
    md += lc.section(arm_curves, curves_csv.name, curves_png and _rel(curves_png, out_dir))
    if make_figures:
        report.figures = _figures(comparisons, fig_dir)
        report.figures += [p for i, (ctx, rs) in enumerate(method_groups.items(), 1)
                           if (p := methods_figure(ctx, rs, fig_dir / f"methods_{i:02d}.png")) is not None]
        if report.figures:
            md += ["## Figures", ""] + [f"![{p.stem}]({_rel(p, out_dir)})" for p in report.figures]
        report.figures += [curves_png] if curves_png else []
    report.markdown = "\n".join(md) + "\n"
    write_text(md_path, report.markdown)
    table.write_csv(rows, csv_path)
    write_csv_rows(csv_path.with_name(csv_path.name.replace("report", "methods")), method_tidy)
    write_csv_rows(curves_csv, lc.tidy_rows(arm_curves), lc.COLUMNS)
    report.md_path, report.csv_path = md_path, csv_path
    return report


def _figures(comparisons, fig_dir: Path) -> list[Path]:
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, c in enumerate(comparisons, 1):
        if c.ours and c.base:
            paths.append(figs.fig2(c, table.coverage_keys(c), fig_dir / f"fig2_{i:02d}.png"))
        paths.append(figs.fig3(c, fig_dir / f"fig3_{i:02d}.png"))
    paths += figs.sweep_figures(comparisons, fig_dir, table.part_getter("all", "aurc_dice", None))
    paths += shift_section(comparisons, fig_dir)[1]
    return [p for p in paths if p is not None]
