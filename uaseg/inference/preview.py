"""``<name>_preview.png``: a labelled picture of one predicted 2-D image, large enough to read.

The native-size outputs (``_seg``, ``_uncertainty``, ``_refer``, ``_overlay``) keep the input's pixel
grid for programs; at 128 px they are too small for a person to see the hatching, and the 16-bit
``_uncertainty.png`` has no scale. The preview shows four panels of at least 512 px each, upscaled
without smoothing: the image, the segmentation in the class colours (legend), the uncertainty with a
labelled colour scale, and the referred pixels hatched over the tinted image (as ``_overlay.png``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uaseg.io import overlay_rgb, save_figure

#: each panel's side in pixels (at least)
PANEL_PX = 512


def write_preview(path: Path, image: np.ndarray, seg: np.ndarray, uncertainty: np.ndarray, refer: np.ndarray,
                  title: str, class_names=None) -> Path:
    """``image`` ``(height, width[, channels])``, ``seg`` / ``uncertainty`` / ``refer`` ``(height, width)``
    as written; ``class_names``: the foreground classes 1..K."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from uaseg.selective.plots import UNCERTAINTY_SCALE, class_colormap, class_legend

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    img = img[..., :3]
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    k = max(int(seg.max()), len(class_names or []), 1)
    dpi = 100
    side = PANEL_PX / dpi * 1.15  # room for the axes' margins inside each panel
    fig = Figure(figsize=(2 * side + 1.2, 2 * side + 1.6), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    shown = [("image", img, "gray" if img.ndim == 2 else None, None),
             ("segmentation (class colours)", seg, class_colormap(k + 1), (-0.5, k + 0.5)),
             ("uncertainty", uncertainty, "viridis", None),
             (f"referred: {100 * float(np.mean(refer)):.1f} % of the pixels (hatched white)",
              overlay_rgb(image, seg, refer), None, None)]
    for ax, (name, a, cmap, lim) in zip(axes.ravel(), shown):
        kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
        im = ax.imshow(a, cmap=cmap, interpolation="nearest", **kw)
        if name == "uncertainty":
            fig.colorbar(im, ax=ax, fraction=0.046).set_label(UNCERTAINTY_SCALE, fontsize=9)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    handles = class_legend(np.unique(seg).tolist(), class_names)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9, frameon=False,
               title="segmentation colours", title_fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return save_figure(path, fig, dpi=dpi)


__all__ = ["write_preview", "PANEL_PX"]
