"""The paper's figures from a multirun: Fig. 2 (per-case Δ), Fig. 3 (Dice–coverage), sweeps.

Drawn on ``matplotlib.figure.Figure`` with the Agg canvas, so no display and no global pyplot
state are touched.  Every function returns the PNG paths it wrote.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

from uaseg.io import save_figure
from uaseg.selective.format import COVERAGE_AXIS

from . import stats
from .grouping import describe_context, describe_loss

#: common coverage grid of Fig. 3 (the paper shows 1.0 -> ~0.6; curves converge below)
GRID = np.linspace(1.0, 0.6, 81)
SWEEP_AXES = ("lambda", "margin", "sample size", "start_epoch")
#: x axis label (with its unit) of each swept key
SWEEP_LABELS = {"lambda": "λ (loss weight, no unit)", "margin": "margin (in units of u, no unit)",
                "sample size": "n_wrong × n_correct (voxels sampled per step)",
                "start_epoch": "loss.start_epoch (epochs of segmentation loss alone)"}



def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def quadrants(dx, dy) -> dict[str, float]:
    """Percent of points strictly inside each quadrant (points on an axis are in none)."""
    dx, dy = np.asarray(dx), np.asarray(dy)
    n = max(len(dx), 1)
    return {"I": 100 * np.sum((dx > 0) & (dy > 0)) / n, "II": 100 * np.sum((dx < 0) & (dy > 0)) / n,
            "III": 100 * np.sum((dx < 0) & (dy < 0)) / n, "IV": 100 * np.sum((dx > 0) & (dy < 0)) / n}


def figure_title(comp, width: int = 70) -> str:
    """Which data and setting a comparison figure shows: the context (dataset, model, tag,
    overrides) on the first line(s), the loss setting of the ours arm after it."""
    import textwrap

    context = describe_context(comp.context) or "(no context recorded)"
    return "\n".join(textwrap.wrap(context, width)[:2] + [describe_loss(comp.loss)])


def fig2(comp, covs, path) -> Path | None:
    """Per-case (coverage, Dice) of ours − baseline, paired by (fold, case_id), one panel per
    coverage, quadrant percentages printed in the quadrants."""
    covs = [c for c in covs if c != "1.00"]
    if not (comp.base and comp.ours and covs):
        return None
    fig = _figure(3.2 * len(covs), 3.2)
    for i, cov in enumerate(covs):
        ax = fig.add_subplot(1, len(covs), i + 1)
        db, do = stats.case_values(comp.base, cov), stats.case_values(comp.ours, cov)
        cb, co = stats.case_coverages(comp.base, cov), stats.case_coverages(comp.ours, cov)
        keys = [k for k in do if k in db and k in cb and k in co]
        dx = np.array([co[k] - cb[k] for k in keys])
        dy = np.array([100 * (do[k] - db[k]) for k in keys])
        ax.scatter(dx, dy, s=10, alpha=0.7)
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(0, color="k", lw=0.8)
        lim_x = max(np.abs(dx).max() if len(dx) else 0, 1e-3) * 1.15
        lim_y = max(np.abs(dy).max() if len(dy) else 0, 1e-1) * 1.15
        ax.set_xlim(-lim_x, lim_x)
        ax.set_ylim(-lim_y, lim_y)
        q = quadrants(dx, dy)
        for name, (x, y) in {"I": (0.75, 0.9), "II": (0.25, 0.9), "III": (0.25, 0.1),
                             "IV": (0.75, 0.1)}.items():
            ax.text(x, y, f"{q[name]:.1f}%", transform=ax.transAxes, ha="center", va="center",
                    fontsize=10, color="C3")
        on_axis = 100 - sum(q.values()) if len(keys) else 0.0
        ax.set_title(f"c = {float(cov):.2f} ({len(keys)} cases"
                     + (f", {on_axis:.0f}% on an axis)" if on_axis > 0.05 else ")"), fontsize=9)
        ax.locator_params(axis="x", nbins=4)
        ax.set_xlabel("coverage difference c₂ − c₁ (fraction)")
        ax.set_ylabel("Dice difference d₂ − d₁ (%)")
    fig.suptitle(f"Per-case comparison, ours − baseline: {figure_title(comp)}", fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)
    return Path(path)


def read_curve(run_dir, name: str = "curves.csv") -> tuple[np.ndarray, np.ndarray] | None:
    """(coverage, Dice) from a run's curves.csv (or another score's ``curves_<score>.csv``), sorted
    by increasing coverage."""
    path = Path(run_dir) / name
    if not path.exists():
        return None
    data = np.genfromtxt(path, delimiter=",", names=True)
    if data.size < 2:
        return None
    order = np.argsort(data["coverage"], kind="stable")
    return data["coverage"][order], 1.0 - data["risk"][order]


def curve_band(arm, grid=GRID):
    """(mean, std, n folds) over folds of each fold's Dice on ``grid`` (runs of a fold averaged)."""
    per_fold = []
    for runs in (arm.by_fold().values() if arm else []):
        curves = [c for c in (read_curve(r.path) for r in runs) if c is not None]
        if curves:
            per_fold.append(np.mean([np.interp(grid, c[0], c[1]) for c in curves], axis=0))
    if not per_fold:
        return None
    a = np.array(per_fold)
    return a.mean(0), (a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])), len(a)


def fig3(comp, path) -> Path | None:
    """Dice–coverage curves of baseline and ours: mean over folds, shaded ± std over folds."""
    bands = [(name, curve_band(arm)) for name, arm in (("baseline", comp.base), ("ours", comp.ours))]
    bands = [(n, b) for n, b in bands if b is not None]
    if not bands:
        return None
    fig = _figure(4.8, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for name, (m, s, n) in bands:
        ax.plot(GRID, 100 * m, label=f"{name} (n={n} folds)")
        ax.fill_between(GRID, 100 * (m - s), 100 * (m + s), alpha=0.2)
    ax.set_xlim(GRID[0], GRID[-1])
    ax.set_xlabel(COVERAGE_AXIS)
    ax.set_ylabel("Dice (%)")
    ax.set_title(figure_title(comp), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(path, fig)
    return Path(path)


def _axis_value(loss: dict, axis: str):
    if axis == "sample size":
        if loss.get("n_wrong") is None:
            return None
        return (loss["n_wrong"] * loss["n_correct"], f"{loss['n_wrong']}×{loss['n_correct']}")
    v = loss.get(axis)
    return None if v is None else (float(v), f"{v:g}" if isinstance(v, float) else str(v))


def _rest(loss: dict, axis: str) -> tuple:
    drop = {"n_wrong", "n_correct"} if axis == "sample size" else {axis}
    return tuple((k, v) for k, v in loss.items() if k not in drop)


def sweep_figures(comparisons, out_dir, aurc_of) -> list[Path]:
    """Appendix-D plots: AURC (%) vs a swept loss key (mean ± std over folds), one figure per
    (context, axis) with one line per combination of the other keys; the baseline is drawn as a
    reference band, and as the λ = 0 point on the λ axis."""
    by_ctx: OrderedDict = OrderedDict()
    for c in comparisons:
        if c.ours:
            by_ctx.setdefault(c.context, []).append(c)
    paths = []
    for ci, (ctx, comps) in enumerate(by_ctx.items(), 1):
        for axis in SWEEP_AXES:
            lines: OrderedDict = OrderedDict()
            for c in comps:
                loss = dict(c.loss)
                xv = _axis_value(loss, axis)
                if xv is not None:
                    lines.setdefault(_rest(loss, axis), []).append((xv, c))
            lines = {k: v for k, v in lines.items() if len({x[0][0] for x in v}) > 1}
            if not lines:
                continue
            paths.append(_sweep_plot(ctx, axis, lines, comps[0].base, aurc_of,
                                     Path(out_dir) / f"sweep_{ci:02d}_{axis.replace(' ', '_')}.png"))
    return paths


def _sweep_plot(ctx, axis, lines, base, aurc_of, path) -> Path:
    fig = _figure(4.8, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    bm, bs, bn = stats.describe(stats.fold_values(base, aurc_of).values())
    categorical = axis == "sample size"
    ticks = {}
    for rest, pts in lines.items():
        pts = sorted(pts, key=lambda p: p[0][0])
        xs, ms, ss = [], [], []
        if axis == "lambda" and bn:
            xs.append(0.0), ms.append(bm), ss.append(0.0 if math.isnan(bs) else bs)
        for (x, lab), c in pts:
            m, s, _ = stats.describe(stats.fold_values(c.ours, aurc_of).values())
            ticks[x] = lab
            xs.append(x), ms.append(m), ss.append(0.0 if math.isnan(s) else s)
        pos = [sorted(ticks).index(x) for x in xs] if categorical else xs
        label = (", ".join(f"{k}={v}" for k, v in rest if v is not None)
                 if len(lines) > 1 else "ours")
        ax.errorbar(pos, ms, yerr=ss, marker="o", capsize=3, label=label)
    if bn:
        ax.axhline(bm, color="k", ls="--", lw=1, label=f"baseline λ=0 (n={bn})")
        if not math.isnan(bs):
            ax.axhspan(bm - bs, bm + bs, color="k", alpha=0.08)
    if categorical:
        ax.set_xticks(range(len(ticks)), [ticks[x] for x in sorted(ticks)])
    ax.set_xlabel(SWEEP_LABELS[axis])
    ax.set_ylabel("AURC (%)  (mean ± std over folds)")
    ax.set_title(describe_context(ctx)[:90], fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(path, fig)
    return Path(path)
