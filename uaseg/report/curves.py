"""Learning curves per arm from the runs' ``csv/metrics.csv`` (Lightning's CSVLogger output).

What is drawn, per arm (the report's arms: runs sharing everything except fold and seed):

* ``val/dice`` (validation Dice at coverage 1, logged as a fraction, shown in %) and
  ``val/aurc_dice`` (validation Dice-AURC, logged in %), one value per validated epoch;
* ``train/seg`` (the segmentation loss), ``train/rank_weighted`` (the ranking term as it enters the
  total loss, as logged; runs older than that column: ``train/rank`` × λ × scale, λ and scale from
  the run's ``.hydra/config.yaml``, else from its summary.json) and ``train/grad_ratio`` (ranking / segmentation gradient norm at the
  logits, when the run logged it; log axis). Step rows are averaged per epoch first (mean over the
  logged steps of the epoch).

A run's ``metrics.csv`` can hold rows of several attempts (``resume=`` appends to it). An attempt is
the ``attempt`` column when present, else a new one starts where ``step`` goes back. For each
(metric, epoch) only the last attempt that logged it counts, and within it the last row per step.

Across runs (seeds and folds pooled): mean, sample sd (ddof = 1; empty for n = 1) and n = the runs
that have the metric at that epoch, so runs of different lengths give a smaller n at late epochs.
A run without a readable ``csv/metrics.csv`` holding these metrics is left out and counted.
"""
from __future__ import annotations

import csv
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uaseg.io import save_figure

from .grouping import describe_context, describe_loss
from .table import md_row

METRICS_CSV = Path("csv") / "metrics.csv"


@dataclass(frozen=True)
class Curve:
    """One panel: ``column`` of metrics.csv × ``factor`` (``"weight"``: the run's λ × scale)."""

    name: str  # metric name in learning_curves.csv
    column: str
    label: str
    unit: str
    factor: float | str = 1.0
    log: bool = False
    axis: str = "value"  # the y axis label, before its unit

    @property
    def ylabel(self) -> str:
        return f"{self.axis} ({self.unit or 'no unit'})"


CURVES = (
    Curve("val/dice", "val/dice", "validation Dice (%)", "%", 100.0, axis="Dice"),
    Curve("val/aurc_dice", "val/aurc_dice", "validation AURC (%)", "%", axis="AURC"),
    Curve("train/seg", "train/seg", "training segmentation loss", "", axis="loss"),
    Curve("train/rank_weighted", "train/rank", "training ranking term, as weighted in the loss", "", "weight",
          axis="loss term"),
    Curve("train/grad_ratio", "train/grad_ratio", "gradient-norm ratio rank / seg at the logits", "", 1.0, True,
          axis="ratio"),
)
#: epochs are shown counted from 1, as the per-epoch log line counts them (metrics.csv logs Lightning's
#: 0-based counter: epoch 0 there is epoch 1 here)
EPOCH_AXIS = "epoch (1 = first)"
COLUMNS = ("arm", "epoch", "metric", "unit", "mean", "sd", "n")
NOTE = (
    "Per arm, mean ± sample sd (ddof = 1) over runs — seeds and folds pooled, unlike Table 1's sd over "
    "folds — at each epoch (counted from 1, as the run's per-epoch lines; `csv/metrics.csv` logs it from 0); n = runs with that metric at that epoch (`n` in "
    "`{csv}`). Validation Dice (at coverage 1) and validation AURC (Dice risk) are in %, as in Table 1. "
    "Training curves average the logged steps of each epoch first; the ranking term is as it enters the "
    "loss (`train/rank_weighted`; for older runs `train/rank` × λ × scale); the gradient ratio (ranking / segmentation gradient norm at the "
    "logits) is on a log axis, its band clipped at the axis. A resumed run's rows of a killed attempt "
    "are replaced by the last attempt's."
)


# ------------------------------------------------------------------ one run
def _float(s) -> float | None:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def attempts(rows: list[dict]) -> list[tuple]:
    """A sortable attempt key per row: (``attempt`` column or -1, inferred attempt)."""
    out, inferred, last = [], 0, -math.inf
    for r in rows:
        step = _float(r.get("step"))
        if step is not None:
            if step < last:
                inferred += 1
            last = step
        explicit = _float(r.get("attempt"))
        out.append((-1.0 if explicit is None else explicit, inferred))
    return out


def epoch_values(rows: list[dict], column: str, keys: list[tuple] | None = None) -> dict[int, list[float]]:
    """epoch -> the column's values, one per step, of the last attempt that logged that epoch."""
    keys = attempts(rows) if keys is None else keys  # ``keys``: attempts(rows), computed once per file
    best: dict[int, tuple] = {}
    picked: dict[int, dict] = {}
    for r, key in zip(rows, keys):
        v, e = _float(r.get(column)), _float(r.get("epoch"))
        if v is None or e is None:
            continue
        e = int(e)
        if e not in best or key > best[e]:
            best[e], picked[e] = key, {}
        if key == best[e]:
            picked[e][r.get("step")] = v  # a later row of the same step replaces an earlier one
    return {e: list(steps.values()) for e, steps in sorted(picked.items())}


def ranking_weight(run) -> float | None:
    """λ × scale of a run: its ``.hydra/config.yaml``, else its summary.json identity."""
    lam = scale = None
    cfg_path = Path(run.path) / ".hydra" / "config.yaml"
    if cfg_path.exists():
        from omegaconf import OmegaConf

        try:
            loss = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False).get("loss") or {}  # never resolved
            lam, scale = _float(loss.get("lambda")), _float(loss.get("scale"))  # text (an interpolation): unknown
        except Exception:  # a damaged config must not stop the report
            pass
    ident = run.identity
    lam = _float(ident.get("lambda") if lam is None else lam)
    scale = _float(ident.get("scale") if scale is None else scale)
    return None if lam is None or scale is None else lam * scale


def run_curves(run) -> dict[str, dict[int, float]] | None:
    """metric -> epoch -> the run's value (mean over the epoch's steps); None without a readable
    metrics.csv holding any of the metrics."""
    path = Path(run.path) / METRICS_CSV
    if not path.is_file():
        return None
    try:
        rows = read_rows(path)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    out = {}
    keys = attempts(rows)
    logged_weighted = any(_float(r.get("train/rank_weighted")) is not None for r in rows)
    for c in CURVES:
        column, factor = c.column, c.factor
        if factor == "weight":  # the logged product when there is one (warm-up, balance vary the weight)
            column, factor = ("train/rank_weighted", 1.0) if logged_weighted else (column, ranking_weight(run))
        if factor is None:
            continue
        per_epoch = {e: factor * float(np.mean(v)) for e, v in epoch_values(rows, column, keys).items()}
        if per_epoch:
            out[c.name] = per_epoch
    return out or None


# ------------------------------------------------------------------ arms
@dataclass
class ArmCurves:
    name: str
    runs: int  # runs of the arm
    curves: list[dict] = field(default_factory=list)  # run_curves of the runs that have curves

    def stats(self, metric: str) -> list[tuple[int, float, float, int]]:
        """(epoch counted from 1, mean, sd, n) over the runs that have ``metric`` at that epoch."""
        by_epoch: dict[int, list[float]] = {}
        for c in self.curves:
            for e, v in c.get(metric, {}).items():
                by_epoch.setdefault(e, []).append(v)
        out = []
        for e in sorted(by_epoch):
            v = np.asarray(by_epoch[e])
            out.append((e + 1, float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)))
        return out


def arms_of(comparisons) -> list[tuple[str, object]]:
    """(name, Arm) for every distinct arm of the comparisons, in report order; the name is the
    setting as the report writes it, prefixed with the context when there are several."""
    contexts = {c.context for c in comparisons}
    out, seen = [], set()
    for c in comparisons:
        for arm, setting in ((c.base, "λ=0 (baseline)"), (c.ours, describe_loss(c.loss))):
            if arm is None or id(arm) in seen:
                continue
            seen.add(id(arm))
            name = setting if len(contexts) == 1 else f"{describe_context(c.context)}; {setting}"
            out.append((name, arm))
    return out


def collect_curves(comparisons) -> list[ArmCurves]:
    out = []
    for name, arm in arms_of(comparisons):
        curves = [c for c in (run_curves(r) for r in arm.runs) if c is not None]
        out.append(ArmCurves(name, len(arm.runs), curves))
    return out


def tidy_rows(arms: list[ArmCurves]) -> list[dict]:
    return [{"arm": a.name, "epoch": e, "metric": c.name, "unit": c.unit, "mean": m, "sd": s, "n": n}
            for a in arms for c in CURVES for e, m, s, n in a.stats(c.name)]


# ------------------------------------------------------------------ figure
def present(arms: list[ArmCurves]) -> list[Curve]:
    """The panels to draw: metrics some run logged (no grad-ratio panel when no run has it)."""
    return [c for c in CURVES if any(a.stats(c.name) for a in arms)]


def figure(arms: list[ArmCurves], path, title: str | None = None) -> Path | None:
    """One panel per metric present in some run, one line (mean) and band (± sd) per arm; a legend
    panel when there are several arms (one arm is named in the title). Panels fill the canvas (no empty
    row), and a short run gets one tick per epoch."""
    import math as _math

    from .figures import _figure

    arms = [a for a in arms if a.curves]  # e.g. ensembles (no training) have no metrics.csv
    panels = present(arms)
    if not panels:
        return None
    legend = len(arms) > 1
    n = len(panels) + legend
    cols = min(3, n)
    rows = _math.ceil(n / cols)
    fig = _figure(4.5 * cols, 3.5 * rows + 0.6)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    epochs = [e for a in arms for c in panels for e, *_ in a.stats(c.name)]
    for ax, c in zip(axes, panels):
        _panel(ax, c, arms)
        _epoch_axis(ax, min(epochs), max(epochs))
    if legend:
        legend_ax = axes[-1]
        handles = [legend_ax.plot([], [], color=f"C{i % 10}", marker="o", ms=3)[0] for i in range(len(arms))]
        labels = [textwrap.fill(f"{a.name} ({len(a.curves)} of {a.runs} runs)", 48) for a in arms]
        legend_ax.axis("off")
        legend_ax.legend(handles, labels, loc="upper left", fontsize=7, title="arm (runs with curves)",
                         title_fontsize=7, frameon=False)
    heading = title or "Learning curves: mean ± sd over runs (seeds, folds) per epoch"
    if not legend:
        heading += "\n" + textwrap.fill(arms[0].name, 110)
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)
    return Path(path)


def _panel(ax, c: Curve, arms: list[ArmCurves]) -> None:
    floor = None
    if c.log:
        pos = [m for a in arms for _, m, _, _ in a.stats(c.name) if m > 0]
        floor = 0.5 * min(pos) if pos else None
    for i, a in enumerate(arms):
        st = a.stats(c.name)
        if not st:
            continue
        e, m, s, _ = (np.array(x, dtype=float) for x in zip(*st))
        ax.plot(e, m, marker="o", ms=3, lw=1.2, color=f"C{i % 10}")
        lo, hi = m - np.nan_to_num(s), m + np.nan_to_num(s)
        if floor is not None:
            lo = np.maximum(lo, floor)
        ax.fill_between(e, lo, hi, color=f"C{i % 10}", alpha=0.18, lw=0)
    if c.log and floor is not None:
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", ls="--", lw=0.8)  # above: the ranking term's gradient dominates
    ax.set_title(c.label, fontsize=9)
    ax.set_ylabel(c.ylabel, fontsize=8)
    ax.grid(alpha=0.3)


def _epoch_axis(ax, first: int, last: int) -> None:
    """One epoch axis for all panels: a tick per epoch for up to 12 epochs, else integer ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(EPOCH_AXIS, fontsize=8)
    if last - first <= 11:
        ax.set_xticks(range(first, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    pad = max(0.5, 0.03 * (last - first))
    ax.set_xlim(first - pad, last + pad)


def run_title(identity: dict) -> str:
    """A one-run figure's title: dataset, model, loss setting, seed, fold."""
    from uaseg.config.identity import LOSS_KEYS

    loss = {k: identity.get(k) for k in LOSS_KEYS}
    if loss.get("sampling") == "exact":
        loss["n_wrong"] = loss["n_correct"] = None
    setting = "λ=0 (baseline)" if not loss.get("lambda") else describe_loss(tuple(loss.items()))
    return ", ".join(str(x) for x in (identity.get("dataset"), identity.get("model"), setting,
                                      f"seed {identity.get('seed')}", f"fold {identity.get('fold')}"))


def run_figure(run_dir, path, identity: dict | None = None, title: str | None = None) -> Path | None:
    """The learning curves of one run folder (its own ``figures/learning_curves.png``), None when its
    metrics.csv holds none of the metrics."""
    from types import SimpleNamespace

    curves = run_curves(SimpleNamespace(path=Path(run_dir), identity=identity or {}))
    if not curves:
        return None
    return figure([ArmCurves(title or run_title(identity or {}), 1, [curves])], path, "Learning curves of this run")


def section(arms: list[ArmCurves], csv_name: str, fig_rel: str | None) -> list[str]:
    """The report's "Learning curves" markdown: note, per-arm counts, the figure."""
    if not any(a.curves for a in arms):
        return ["## Learning curves", "", "No run has these metrics in `csv/metrics.csv` (`logger=csv`): no curves.", ""]
    note = NOTE.format(csv=csv_name)
    if not any(a.stats("train/grad_ratio") for a in arms):
        note += " No run logged `train/grad_ratio`: no gradient-ratio panel."
    out = ["## Learning curves", "", note, "",
           "| arm | runs with curves | epochs per run | validation Dice (%), last epoch of all its runs |",
           "|---|---|---|---|"]
    for a in arms:
        lens = sorted(len(set().union(*(v.keys() for v in c.values()))) for c in a.curves)
        span = "–" if not lens else (str(lens[0]) if lens[0] == lens[-1] else f"{lens[0]}–{lens[-1]}")
        st = a.stats("val/dice")
        full = [x for x in st if x[3] == max(n for *_, n in st)]  # epochs every run reached
        end = "–" if not full else (f"{full[-1][1]:.2f} (epoch {full[-1][0]}, n={full[-1][3]}"
                                    + ("" if math.isnan(full[-1][2]) else f", sd {full[-1][2]:.2f}") + ")")
        out.append(md_row([a.name, f"{len(a.curves)} of {a.runs}", span, end]))
    out.append("")
    if fig_rel:
        out += [f"![learning curves]({fig_rel})", ""]
    return out
