"""Images uaseg writes: 8/16-bit PNG, palette PNG of class indices, overlays, NIfTI (on a reference
header when there is one), each through :func:`uaseg.io.atomic.atomic_path`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uaseg.io.atomic import atomic_path


def uncertainty_png16(u: np.ndarray) -> np.ndarray:
    """Uncertainty in [0, 1] as 16-bit PNG values (``u * 65535``, rounded)."""
    return np.round(np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """``(height, width)`` uint8/uint16 or ``(height, width, 3)`` uint8 array as PNG."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    return Path(path)


#: RGB colour of class index i (0 = background, black), shared by label PNGs, overlays and the case
#: panels' legend: matplotlib's tab10 from class 1 on, repeated past 10 classes
_TAB10 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def class_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour of class ``index`` in every image uaseg writes (0: black)."""
    return (0, 0, 0) if index == 0 else _TAB10[(index - 1) % len(_TAB10)]


def save_label_png(path: str | Path, labels: np.ndarray) -> Path:
    """``(height, width)`` class indices (0..255) as a palette PNG (mode ``P``): the pixel values are
    the class labels unchanged (``np.asarray(Image.open(path))`` gives them back), and every viewer
    shows them in the colours of :func:`class_colour` instead of a black 0/1 image."""
    from PIL import Image

    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"{path}: class labels must be in 0..255 for a palette PNG")
    arr = np.ascontiguousarray(labels.astype(np.uint8))
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    img.putpalette([v for i in range(256) for v in class_colour(i)])
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def overlay_rgb(image: np.ndarray, labels: np.ndarray, refer: np.ndarray | None = None,
                alpha: float = 0.45) -> np.ndarray:
    """An RGB preview ``(height, width, 3)`` uint8: ``image`` (grey or RGB, any range) with each
    foreground class tinted in its :func:`class_colour` and the referred pixels (``refer``) hatched
    in white, so a person sees at a glance what was segmented and what goes to a radiologist."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(img)
    labels = np.asarray(labels)
    out = img.copy()
    for c in np.unique(labels):
        if c == 0:
            continue
        m = labels == c
        out[m] = (1 - alpha) * img[m] + alpha * np.asarray(class_colour(int(c)), dtype=np.float64)
    if refer is not None:
        r = np.asarray(refer, dtype=bool)
        yy, xx = np.indices(r.shape)
        hatch = r & (((yy + xx) % 4) < 2)
        out[hatch] = 255.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """``array`` as a NIfTI file with ``affine`` (identity: 1 mm voxels), units mm."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def save_nifti_like(path: str | Path, array: np.ndarray, reference, dtype, description: str) -> Path:
    """``array`` on ``reference``'s grid with its header geometry (qform/sform as stored, units), so
    3D Slicer / ITK-SNAP overlay it on the reference image."""
    import nibabel as nib

    cls = type(reference) if isinstance(reference, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    if isinstance(reference.header, nib.Nifti1Header):
        img = cls(np.asarray(array).astype(dtype), None, header=reference.header.copy())
        img.header.set_data_dtype(dtype)
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"] = 0
        img.header["cal_max"] = 0
        img.header["intent_code"] = 0
        img.header["descrip"] = description[:79].encode()
    else:
        img = cls(np.asarray(array).astype(dtype), reference.affine)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
