"""Files of prediction: which inputs to segment, what kind they are, and where their outputs go.

Outputs per case ``<name>`` (the file name without its extension; for a model whose channels are
separate files, nnU-Net's ``<case>``: see ``SegDataModule.prediction_cases``), on the grid of the
source file (the case's first channel file):

* NIfTI in -> NIfTI out with the source's header geometry: ``<name>_seg.nii.gz`` (uint8 classes),
  ``<name>_uncertainty.nii.gz`` (float32), ``<name>_refer.nii.gz`` (uint8, 1 = refer);
* a 2-D image in -> PNG in its pixel layout ``(height, width)``: ``<name>_seg.png`` (a palette PNG:
  the pixel values are the class indices, shown in the colours of :func:`uaseg.io.class_colour`, so
  a viewer shows the segmentation instead of a black 0/1 image), ``<name>_uncertainty.png`` (16-bit,
  ``u * 65535``) plus ``<name>_uncertainty.npy`` (float32), ``<name>_refer.png`` (0 / 255),
  ``<name>_overlay.png``: the image with the classes tinted and the referred pixels hatched in white
  (with a referral mask), and ``<name>_preview.png``: image, segmentation, uncertainty with its colour
  scale and referral in four labelled panels of at least 512 px (:mod:`uaseg.inference.preview`).

Arrays come in MONAI's layout (NIfTI voxel order; ``(width, height)`` for 2-D files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from uaseg.data.checks import natural_key
from uaseg.errors import DatasetError, PredictError, UserError
from uaseg.io import (
    load_nifti,
    read_image_header,
    read_nifti_header,
    overlay_rgb,
    save_label_png,
    save_nifti_like,
    save_npy,
    save_png,
    uncertainty_png16,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: suffixes of the files written per input (also used to skip our own outputs in an input folder)
OUTPUT_TAGS = ("_seg", "_uncertainty", "_refer", "_overlay", "_preview")
_GRAY_MODES = ("1", "L", "LA", "I", "F", "La", "I;16", "I;16B", "I;16L", "I;16N")


def file_kind(path: Path) -> str | None:
    """``"nifti"``, ``"image"`` (2-D) or ``None`` (not an input)."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def case_name(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_inputs(inputs: str | Path | Iterable[str | Path], skip_outputs_in: Path | None = None) -> tuple[list[Path], str]:
    """Files to segment and their kind (``"nifti"`` or ``"image"``). Each entry is a file or a folder
    (every NIfTI / BMP / PNG / JPG / TIF file directly inside, naturally sorted). NIfTI volumes and 2-D
    images cannot be mixed. Files in ``skip_outputs_in`` that look like our own outputs are skipped."""
    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not entries:
        raise PredictError("no input given")
    files: list[Path] = []
    for entry in entries:
        p = Path(entry).expanduser()
        if p.is_dir():
            found = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and file_kind(f)]
            if skip_outputs_in is not None and p.resolve() == skip_outputs_in.resolve():
                found = [f for f in found if not case_name(f).endswith(OUTPUT_TAGS)]
            if not found:
                raise PredictError(
                    f"input folder {p} holds no NIfTI (.nii, .nii.gz) or image (.bmp, .png, .jpg, .tif) files"
                )
            files += sorted(found, key=lambda f: natural_key(f.name))
        elif p.is_file():
            if file_kind(p) is None:
                raise PredictError(
                    f"{p}: unsupported file type; expected NIfTI (.nii, .nii.gz) or an image (.bmp, .png, .jpg, .tif)"
                )
            files.append(p)
        else:
            raise PredictError(f"input not found: {p}")
    kinds = {file_kind(f) for f in files}
    if len(kinds) > 1:
        nifti = next(f for f in files if file_kind(f) == "nifti")
        image = next(f for f in files if file_kind(f) == "image")
        raise PredictError(
            f"the inputs mix NIfTI volumes and 2-D images (e.g. {nifti} and {image}); a model segments one kind"
        )
    names: dict[str, Path] = {}
    for f in files:
        n = case_name(f)
        if n in names and names[n] != f:
            raise PredictError(f"two inputs would write the same outputs '{n}_*': {names[n]} and {f}")
        names[n] = f
    return files, kinds.pop()


def inspect_input(path: Path, kind: str) -> tuple[int, int, str]:
    """``(spatial_dims, channels, description)`` from the file's header; errors name the file."""
    try:
        if kind == "nifti":
            h = read_nifti_header(path)
            shape = h.shape
            if h.voxel_channels > 1:  # RGB24 / RGBA32 voxels
                return len(shape), h.voxel_channels, f"{len(shape)}-D volume {shape} of {h.voxel_channels}-channel voxels"
            if len(shape) == 4:
                return 3, shape[3], f"4-D volume {shape} (last axis taken as channels)"
            if len(shape) == 5 and shape[3] == 1:
                return 3, shape[4], f"5-D volume {shape} (vector axis taken as channels)"
            return len(shape), 1, f"{len(shape)}-D volume {shape}"
        size, mode = read_image_header(path)
    except DatasetError as e:
        raise PredictError(str(e)) from e
    channels = 1 if mode in _GRAY_MODES else 3  # colour modes (RGB, RGBA, P, CMYK...) are read as RGB
    return 2, channels, f"2-D {'grayscale' if channels == 1 else 'colour'} image {size[0]}x{size[1]} (mode {mode})"


def output_paths(folder: Path, name: str, kind: str, refer: bool = True) -> dict[str, Path]:
    """Where :func:`write_segmentation` writes case ``name`` (and ``json`` its record)."""
    tags = ("seg", "uncertainty", "refer") if refer else ("seg", "uncertainty")
    ext = ".nii.gz" if kind == "nifti" else ".png"
    out = {t: folder / f"{name}_{t}{ext}" for t in tags}
    if kind != "nifti":
        out["uncertainty_npy"] = folder / f"{name}_uncertainty.npy"
        if refer:
            out["overlay"] = folder / f"{name}_overlay.png"
            out["preview"] = folder / f"{name}_preview.png"
    out["json"] = folder / f"{name}.json"
    return out


def write_segmentation(
    paths: dict[str, Path],
    source: Path,
    seg: np.ndarray,
    uncertainty: np.ndarray,
    refer: np.ndarray | None = None,
    refer_note: str = "",
    class_names=None,
) -> None:
    """Write segmentation, uncertainty (and the referral mask) on the grid of ``source`` into
    ``paths`` (from :func:`output_paths`). Shapes must match the source file's grid. ``class_names``:
    the foreground classes, named in the preview's legend."""
    if file_kind(source) == "nifti":
        ref = load_nifti(source)
        if seg.shape != tuple(ref.shape[:3]):
            raise RuntimeError(f"{source}: the prediction has shape {seg.shape}, the file {ref.shape}")
        save_nifti_like(paths["seg"], seg, ref, np.uint8, "uaseg segmentation")
        save_nifti_like(paths["uncertainty"], uncertainty, ref, np.float32, "uaseg uncertainty 1-max softmax")
        if refer is not None:
            save_nifti_like(paths["refer"], refer, ref, np.uint8, f"uaseg referral {refer_note}")
        return
    (width, height), _ = read_image_header(source)
    if seg.shape != (width, height):  # MONAI reads 2-D files as (width, height)
        raise RuntimeError(f"{source}: the prediction has shape {seg.shape}, the image is {width}x{height}")
    save_label_png(paths["seg"], seg.T.astype(np.uint8))
    save_png(paths["uncertainty"], uncertainty_png16(uncertainty.T))
    save_npy(paths["uncertainty_npy"], np.ascontiguousarray(uncertainty.T, dtype=np.float32))
    if refer is not None:
        save_png(paths["refer"], refer.T.astype(np.uint8) * 255)
        if "overlay" in paths:
            from PIL import Image

            with Image.open(source) as im:
                # grey or RGB as stored (overlay_rgb stretches any range); other modes via RGB
                image = np.asarray(im if im.mode in ("RGB", "L", "I", "F", "I;16", "I;16B", "I;16L") else im.convert("RGB"))
            save_png(paths["overlay"], overlay_rgb(image, seg.T, refer.T))
        if "preview" in paths:
            from uaseg.inference.preview import write_preview

            write_preview(paths["preview"], image, seg.T, uncertainty.T, refer.T,
                          f"{source.name}: referral {refer_note}", class_names)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file that ``ckpt=<path>`` names: a file as it is, or a run folder's selected
    checkpoint, so no one has to know which epoch was best (``best-005.ckpt`` today, another next run).

    For a run folder: the checkpoint that run tested (``summary.json`` ``checkpoint``: the file of
    that name in the folder's own ``checkpoints/``, so a moved or copied folder uses its own copy; the
    recorded path itself only when it lies inside the folder), else its single
    ``checkpoints/best-*.ckpt``; several best checkpoints and no summary to choose between them, or
    none at all, are a :class:`PredictError` naming the files, never a silent pick. A summary naming a
    file outside the folder (a test-only run of another checkpoint, or a crafted folder) is never
    followed: ``uaseg calibrate`` would rewrite that file."""
    import json

    path = Path(path).expanduser()
    if path.is_file() or not path.is_dir():
        return path  # a missing path is reported by the loader, which names it
    folder = path / "checkpoints"
    summary = path / "summary.json"
    tested = None
    if summary.is_file():
        try:
            tested = json.loads(summary.read_text()).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            tested = None
        if tested and isinstance(tested, str):
            # the folder's own copy first: a copied run folder must not resolve to (and `uaseg
            # calibrate` must not rewrite) the original's file that its summary still names
            for candidate in (folder / Path(tested).name, Path(tested)):
                if candidate.is_file() and candidate.resolve().is_relative_to(path.resolve()):
                    return candidate
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: natural_key(p.name))
    if len(best) == 1:
        return best[0]
    if not best and isinstance(tested, str) and tested and not Path(tested).resolve().is_relative_to(path.resolve()):
        raise PredictError(f"{path}: its summary.json names the checkpoint {tested}, outside this folder (a test-only "
                           "run of another checkpoint?), and checkpoints/ holds no best-*.ckpt; pass the checkpoint "
                           "file itself")
    if not best:
        others = sorted(p.name for p in folder.glob("*.ckpt"))
        hint = f" (it holds {', '.join(others)}: pass one of them as the file itself)" if others else ""
        raise PredictError(f"{path}: no selected checkpoint (checkpoints/best-*.ckpt){hint}")
    raise PredictError(
        f"{path}: {len(best)} checkpoints/best-*.ckpt ({', '.join(p.name for p in best)}) and no summary.json "
        "naming the tested one; pass the checkpoint file itself"
    )


def find_best_checkpoint(run: str | Path) -> Path:
    """A run folder's selected checkpoint (:func:`uaseg.inference.files.resolve_checkpoint`: the one
    the run tested, else its single ``checkpoints/best-*.ckpt``), or ``run`` if it is a file."""
    path = resolve_checkpoint(run)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file or run folder")
    return path
