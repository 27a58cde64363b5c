"""Figures: risk-coverage, Dice-coverage (paper Fig. 3) and a per-case panel.

All use matplotlib's Agg backend and return the PNG path. Units as everywhere a person reads them:
Dice, risks and every AURC in %, coverage as a fraction; every axis label names its unit.  ``plot_case_panel`` shows
one row: image, label, prediction, error map, uncertainty map, referral mask
(``u > threshold``).  For 3-D volumes it shows the slice along the last axis with the
most foreground in label or prediction (the middle slice when there is none), since
the middle slice often misses small structures.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from uaseg.io import class_colour, save_figure  # noqa: E402

from .format import COVERAGE_AXIS  # noqa: E402
from .result import SelectiveResult  # noqa: E402


#: the uncertainty colour scale of the case panels and previews
UNCERTAINTY_SCALE = "uncertainty u (no unit; higher = referred first)"


def _as_list(results) -> dict[str, SelectiveResult]:
    if isinstance(results, SelectiveResult):
        return {"": results}
    return dict(results)


def plot_risk_coverage(results, path, title: str = "Risk-coverage") -> Path:
    """Dice risk (left) and voxel selective risk (right) vs coverage, both in % with their AURC in %.

    ``results``: one result or {name: result} to overlay methods.
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in _as_list(results).items():
        lab = f"{name} " if name else ""
        a.plot(r.curve.coverage, 100 * np.asarray(r.curve.risk), label=f"{lab}AURC {r.aurc_dice:.3f} %")
        b.plot(r.voxel_curve.coverage, 100 * np.asarray(r.voxel_curve.selective_risk),
               label=f"{lab}AURC {100 * r.aurc:.3f} %")
    a.set(xlabel=COVERAGE_AXIS, ylabel="risk = 1 − Dice (%)", title="Dice risk")
    b.set(xlabel=COVERAGE_AXIS, ylabel="voxel selective risk (% of kept voxels wrong)", title="Voxel selective risk")
    for ax in (a, b):
        ax.set_xlim(1.0, 0.0)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def plot_dice_coverage(results, path, title: str = "Dice-coverage", min_coverage: float = 0.6) -> Path:
    """Mean Dice (%) vs coverage, x from 1 down to ``min_coverage`` (paper Fig. 3, as the report's)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, r in _as_list(results).items():
        m = r.curve.coverage >= min_coverage
        ax.plot(r.curve.coverage[m], 100 * np.asarray(r.curve.dice)[m], label=name or None)
    ax.set(xlabel=COVERAGE_AXIS, ylabel="Dice (%)", title=title, xlim=(1.0, min_coverage))
    ax.grid(alpha=0.3)
    if any(_as_list(results)):
        ax.legend(fontsize=8)
    return _save(fig, path)


def _slice(a: np.ndarray, idx, spatial_ndim: int):
    return a[..., idx] if spatial_ndim == 3 else a


def class_colormap(num_classes: int):
    """The colours of classes 0..num_classes-1 (:func:`uaseg.io.class_colour`, as in the written
    segmentation PNGs) as a matplotlib colormap for integer label images."""
    from matplotlib.colors import ListedColormap

    return ListedColormap([np.asarray(class_colour(i)) / 255.0 for i in range(max(num_classes, 2))])


def class_legend(values, names) -> list:
    """Legend patches of the classes in ``values`` (background always) in :func:`uaseg.io.class_colour`;
    ``names``: the foreground classes 1..K (else "class k")."""
    from matplotlib.patches import Patch

    names = list(names or [])
    return [Patch(facecolor=np.asarray(class_colour(int(c))) / 255.0, edgecolor="grey",
                  label="background" if c == 0 else (names[c - 1] if c - 1 < len(names) else f"class {c}"))
            for c in sorted(set(int(v) for v in values) | {0})]


def plot_case_panel(image, label, prediction, uncertainty, threshold, path,
                    title: str = "", class_names=None) -> Path:
    """Row of image | label | prediction | error | uncertainty | referred (u > threshold), with a
    legend of the class colours (``class_names``: the foreground classes 1..K, else "class k").

    ``image`` may be (*spatial), (C, *spatial) with C in {1, 3}; spatial is 2-D or 3-D.
    """
    from .case_stats import to_numpy

    img, y, p, u = (to_numpy(a) for a in (image, label, prediction, uncertainty))
    nd = y.ndim
    if img.ndim == nd + 1:
        img = np.moveaxis(img, 0, -1) if img.shape[0] in (3, 4) else img[0]
    idx = None
    if nd == 3:
        fg = ((y > 0) | (p > 0)).sum(axis=(0, 1))
        idx = int(np.argmax(fg)) if fg.max() > 0 else y.shape[-1] // 2
        img = img[..., idx, :] if img.ndim == 4 else img[..., idx]
        y, p, u = y[..., idx], p[..., idx], u[..., idx]
    if img.ndim == 3 and img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img, dtype=float)
    names = list(class_names or [])
    k = max(int(y.max()), int(p.max()), len(names), 1)
    cmap = class_colormap(k + 1)
    panels = [("image", img, "gray", None), ("label", y, cmap, (-0.5, k + 0.5)),
              ("prediction", p, cmap, (-0.5, k + 0.5)), ("error", (p != y), "Reds", (0, 1)),
              ("uncertainty", u, "viridis", None),
              (f"referred (u > {threshold:.3g})", u > threshold, "Greys", (0, 1))]
    fig, axes = plt.subplots(1, 6, figsize=(18, 3.4))
    for ax, (name, a, cmap, lim) in zip(axes, panels):
        kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
        im = ax.imshow(a, cmap=None if (name == "image" and a.ndim == 3) else cmap,
                       interpolation="nearest", **kw)
        if name == "uncertainty":
            fig.colorbar(im, ax=ax, fraction=0.046).set_label(UNCERTAINTY_SCALE, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title + (f"  (slice {idx})" if idx is not None else ""))
    handles = class_legend(set(np.unique(y).tolist()) | set(np.unique(p).tolist()), names)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False,
               title="label / prediction colours", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return _save(fig, path, tight=False)


def _save(fig, path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    try:
        return save_figure(path, fig, dpi=100)
    finally:
        plt.close(fig)
