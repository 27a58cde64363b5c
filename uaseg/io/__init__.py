"""Every file uaseg writes or whose header it reads goes through here (nnU-Net keeps its image I/O in
one package too): atomic writes, JSON without NaN, NIfTI on a reference header, 8/16-bit PNG, NPY/NPZ,
torch checkpoints.

Atomic: each writer writes ``.tmp-<pid>-<token>-<name>`` beside the target and renames it over the
target, so a reader (``resume=``, the report) never sees a cut-off file and a failed write leaves the
old file intact. The temporary keeps the target's suffixes (``nibabel`` and Pillow pick the format
from them) and is created like any file, so permissions follow the umask (0644 usually). A failed
write raises ``OSError`` naming the file and the reason (e.g. no space left on device).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from uaseg.errors import CheckpointError, DatasetError, describe


# ---------------------------------------------------------------------------------------- atomic writes
class WriteError(OSError):
    """A file could not be written; the message names it and the reason (e.g. no space left)."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(3)}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        if isinstance(e, WriteError):
            raise
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def json_safe(x: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, tuples to lists, NaN and +-inf to null."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def write_json(path: str | Path, obj: Any, indent: int = 1) -> Path:
    """``obj`` as JSON (see :func:`json_safe`; other objects, e.g. paths, written as strings)."""
    return write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=str))


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array))
    return Path(path)


def save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` (a checkpoint, or one rewritten with added entries): never a half-written file.
    Serialised in memory first: torch.save's own write errors lose errno (no space left on device...)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
    return Path(path)


def save_figure(path: str | Path, fig, dpi: float | None = None) -> Path:
    """A matplotlib figure as PNG (format from the suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi if dpi is not None else "figure", format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def update_checkpoint(path: str | Path, entries: dict[str, Any]) -> Path:
    """Add or replace top-level ``entries`` (plain Python values, so ``weights_only`` loading keeps
    working) in a torch checkpoint file, keeping everything else in it."""
    import torch

    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    ckpt.update(entries)
    return save_torch(path, ckpt)


# ---------------------------------------------------------------------------------------- images
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


# ---------------------------------------------------------------------------------------- checkpoints
def check_checkpoint_file(path: str | Path, what: str | None = None) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a complete ``torch.save`` archive.

    ``torch.save`` writes a zip archive; a truncated or overwritten file loses its central directory
    or fails a member's CRC. Checking that reads the file once, without unpickling anything, so a bad
    ``ckpt_path`` / ``resume`` fails in a second, not after the data is loaded."""
    import zipfile

    path = Path(path)
    label = f"{what}: {path}" if what else str(path)
    hint = "the file is truncated or corrupted (e.g. a copy or a write that did not finish); use another checkpoint"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:1] == b"\x80":  # torch's legacy (pre-1.6) pickle format: no archive to verify
            return
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise CheckpointError(f"{label}: not a readable checkpoint: {hint} ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{label}: cannot read this checkpoint ({e.strerror or e})") from None
    if broken is not None:
        raise CheckpointError(f"{label}: not a readable checkpoint: {hint} (entry {broken} fails its checksum)")


# ---------------------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class NiftiHeader:
    shape: tuple[int, ...]
    affine: np.ndarray
    zooms: tuple[float, ...]
    #: channels per voxel of structured dtypes (RGB24: 3), else 1
    voxel_channels: int = 1


def load_nifti(path: str | Path):
    """``nibabel`` image (header read, voxels lazy); an unreadable file is a :class:`DatasetError`."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises several types for a bad/truncated header
        raise DatasetError(f"{path}: cannot read the NIfTI header ({describe(e)})") from e


def affine_problem(affine: Any, spatial_axes: int = 3) -> str | None:
    """What makes a voxel-to-world matrix unusable (NaN/infinite entries, an axis of zero spacing),
    or None. Such a header breaks orientation, resampling and the grid comparison of image and label."""
    a = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(a).all():
        return "its affine (voxel-to-world matrix) holds NaN or infinite values"
    n = min(spatial_axes, a.shape[0] - 1, a.shape[1] - 1)
    zero = [i for i in range(n) if not np.linalg.norm(a[:n, i]) > 0]
    if zero:
        return (f"its affine (voxel-to-world matrix) gives axis {', '.join(map(str, zero))} a zero voxel spacing "
                "(pixdim / sform column of zeros)")
    return None


def read_nifti_header(path: str | Path) -> NiftiHeader:
    """Shape, affine and spacing from the header only (voxels are not read); a header whose affine
    is unusable (:func:`affine_problem`) is a :class:`DatasetError` naming the file."""
    img = load_nifti(path)
    try:
        shape = tuple(int(s) for s in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms()[: len(shape)])
        names = img.get_data_dtype().names
        header = NiftiHeader(shape, np.asarray(img.affine, dtype=np.float64), zooms, len(names) if names else 1)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read the NIfTI header ({describe(e)})") from e
    problem = affine_problem(header.affine, len(shape))
    if problem:
        raise DatasetError(f"{path}: bad NIfTI header: {problem}; fix the header (e.g. with nibabel or 3D Slicer)")
    return header


def read_image_header(path: str | Path) -> tuple[tuple[int, int], str]:
    """``((width, height), PIL mode)`` of a 2-D image file, without decoding its pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except Exception as e:
        raise DatasetError(f"{path}: cannot read this image ({describe(e)})") from e
