"""Selective segmentation of new, unlabelled images with a trained checkpoint (``python predict.py``).

For every input file this writes, into the output folder (``<name>`` = the file name without its
extension):

* 3-D models, NIfTI in (``.nii`` / ``.nii.gz``) -> NIfTI out, on the INPUT's grid with the input's
  header geometry (shape, qform/sform, hence ``nib.load(out).affine == nib.load(in).affine``):
  ``<name>_seg.nii.gz`` (uint8 classes), ``<name>_uncertainty.nii.gz`` (float32
  ``u = 1 - max softmax``), ``<name>_refer.nii.gz`` (uint8, 1 = refer to a radiologist, ``u > t``).
* 2-D models, BMP/PNG/JPG/TIF in -> PNG out in the input's pixel layout ``(height, width)``:
  ``<name>_seg.png`` (8-bit class values), ``<name>_uncertainty.png`` (16-bit, ``u * 65535``) plus
  ``<name>_uncertainty.npy`` (float32), ``<name>_refer.png`` (0 / 255).
* ``<name>.json``: the threshold and how it was chosen, the case's own coverage, voxel counts per
  class, the checkpoint, the output files.

How it works: the checkpoint (loaded with ``weights_only=True``) holds the network and its
sliding-window inferer (hparams), the resolved training ``dataset`` config (``uaseg_dataset``) and the
last validation's coverage -> threshold grid (``uaseg_val_curve``). The dataset module's
``predict_transforms()`` preprocess each file exactly as its validation/test images were (for MM-WHS:
reorientation, resampling to the training spacing, HU window, padding); the module's ``segment``
gives uncertainty and prediction; ``monai.transforms.Invertd`` maps them back onto the file's grid,
nearest-neighbour for the segmentation and linear for the uncertainty. The referral mask is then
``uncertainty > threshold`` ON THE ORIGINAL GRID, so the mask, the written uncertainty map and the
reported coverage (fraction of the file's voxels with ``u <= t``) always agree.

Threshold: ``threshold=t`` is used as given. ``coverage=c`` picks, among the points
``(coverage, threshold)`` of the checkpoint's validation curve, the one whose validation coverage is
NEAREST to ``c`` (a tie in distance goes to the larger coverage) -- the rule ``uaseg.selective`` uses
for its at-coverage numbers. The stored points are the nearest achievable validation coverage (and its
threshold) for every 0.1% of coverage, so ``c`` is honoured to within 0.05% plus the validation set's
tie groups; a new image's own coverage at that threshold differs from ``c`` by however much it differs
from the validation images.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from uaseg.data.checks import DatasetError, first_cause, natural_key, root_cause

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: suffixes of the files written per input (also used to skip our own outputs in an input folder)
OUTPUT_TAGS = ("_seg", "_uncertainty", "_refer")


class PredictError(ValueError):
    """A problem with the checkpoint, the inputs or the options; the message says which and why."""


# ---------------------------------------------------------------------------------------- threshold
def threshold_for_coverage(curve: dict, coverage: float) -> tuple[float, float]:
    """``(threshold, validation coverage)`` of the curve point whose coverage is nearest to
    ``coverage``; a tie in distance goes to the larger coverage. ``curve``: ``{"coverage": [...],
    "threshold": [...]}`` as stored in checkpoints (coverage descending from 1 to 0, threshold ``-inf``
    at coverage 0)."""
    cov = np.asarray(curve.get("coverage", []), dtype=np.float64)
    thr = np.asarray(curve.get("threshold", []), dtype=np.float64)
    if cov.size == 0 or cov.shape != thr.shape:
        raise PredictError(
            f"the checkpoint's validation curve is malformed ({cov.size} coverages, {thr.size} thresholds)"
        )
    dist = np.abs(cov - float(coverage))
    candidates = np.flatnonzero(dist <= dist.min() + 1e-12)
    i = int(candidates[np.argmax(cov[candidates])])
    return float(thr[i]), float(cov[i])


# ---------------------------------------------------------------------------------------- inputs
def _kind(path: Path) -> str | None:
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
            found = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and _kind(f)]
            if skip_outputs_in is not None and p.resolve() == skip_outputs_in.resolve():
                found = [f for f in found if not case_name(f).endswith(OUTPUT_TAGS)]
            if not found:
                raise PredictError(
                    f"input folder {p} holds no NIfTI (.nii, .nii.gz) or image (.bmp, .png, .jpg, .tif) files"
                )
            files += sorted(found, key=lambda f: natural_key(f.name))
        elif p.is_file():
            if _kind(p) is None:
                raise PredictError(
                    f"{p}: unsupported file type; expected NIfTI (.nii, .nii.gz) or an image (.bmp, .png, .jpg, .tif)"
                )
            files.append(p)
        else:
            raise PredictError(f"input not found: {p}")
    kinds = {_kind(f) for f in files}
    if len(kinds) > 1:
        nifti = next(f for f in files if _kind(f) == "nifti")
        image = next(f for f in files if _kind(f) == "image")
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


_GRAY_MODES = ("1", "L", "LA", "I", "F", "La") + tuple(m for m in ("I;16", "I;16B", "I;16L", "I;16N"))


def inspect_input(path: Path, kind: str) -> tuple[int, int, str]:
    """``(spatial_dims, channels, description)`` from the file's header; errors name the file."""
    if kind == "nifti":
        import nibabel as nib

        try:
            img = nib.load(str(path))
            shape = tuple(int(s) for s in img.shape)
            dtype = img.get_data_dtype()
        except Exception as e:
            raise PredictError(f"{path}: cannot read this NIfTI file ({type(e).__name__}: {e})") from e
        if dtype.names:  # RGB24 / RGBA32 voxels
            return len(shape), len(dtype.names), f"{len(shape)}-D volume {shape} of {len(dtype.names)}-channel voxels"
        if len(shape) == 4:
            return 3, shape[3], f"4-D volume {shape} (last axis taken as channels)"
        if len(shape) == 5 and shape[3] == 1:
            return 3, shape[4], f"5-D volume {shape} (vector axis taken as channels)"
        return len(shape), 1, f"{len(shape)}-D volume {shape}"
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
    except Exception as e:
        raise PredictError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from e
    channels = 1 if mode in _GRAY_MODES else 3  # colour modes (RGB, RGBA, P, CMYK...) are read as RGB
    return 2, channels, f"2-D {'grayscale' if channels == 1 else 'colour'} image {size[0]}x{size[1]} (mode {mode})"


# ---------------------------------------------------------------------------------------- model
@dataclass
class LoadedModel:
    module: Any
    datamodule: Any
    dataset_cfg: dict
    val_curve: dict | None
    spatial_dims: int
    in_channels: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)


def load_model(ckpt: str | Path, device: str | torch.device = "cpu", trust_checkpoint: bool = False) -> LoadedModel:
    """Rebuild the module from ``ckpt`` (``weights_only=True`` unless ``trust_checkpoint``) and the
    dataset module from the checkpoint's dataset config."""
    from uaseg.models import SelectiveSegModule
    from uaseg.train import build_datamodule

    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise PredictError(f"checkpoint not found: {path}")
    try:
        module = SelectiveSegModule.load_from_checkpoint(
            str(path), map_location="cpu", weights_only=not trust_checkpoint
        )
    except pickle.UnpicklingError as e:
        raise PredictError(
            f"{path}: the checkpoint holds objects that torch.load(weights_only=True) refuses to unpickle "
            f"({str(e).splitlines()[0] if str(e) else e}). If you trust this file, pass trust_checkpoint=true."
        ) from e
    except Exception as e:
        raise PredictError(f"{path}: cannot load this checkpoint ({type(e).__name__}: {e})") from e
    dataset_cfg = getattr(module, "dataset_cfg", None)
    if not dataset_cfg:
        raise PredictError(
            f"{path} holds no dataset config ('uaseg_dataset'); it was written before train.py stored it, "
            "so the preprocessing of new images is unknown. Re-save it from a current train.py run."
        )
    try:
        datamodule = build_datamodule(dataset_cfg)
        datamodule.predict_transforms()  # e.g. paper_crop models cannot segment unlabelled images
    except Exception as e:
        raise PredictError(
            f"{path}: cannot preprocess new images for this model's dataset {dataset_cfg.get('_target_')} "
            f"({root_cause(e)})"
        ) from e
    net = module.hparams["net"]
    meta = dataset_cfg.get("meta") or {}
    module.eval().to(device)
    return LoadedModel(
        module=module,
        datamodule=datamodule,
        dataset_cfg=dataset_cfg,
        val_curve=getattr(module, "val_curve", None),
        spatial_dims=int(net.get("spatial_dims", datamodule.spatial_dims)),
        in_channels=int(net.get("in_channels", datamodule.in_channels)),
        num_classes=int(net["out_channels"]),
        class_names=["background", *(meta.get("class_names") or getattr(datamodule, "class_names", ()))],
    )


def _describe_model(m: LoadedModel) -> str:
    what = "3-D volumes (NIfTI .nii/.nii.gz)" if m.spatial_dims == 3 else "2-D images (BMP/PNG/JPG/TIF)"
    ch = {1: "1 channel (e.g. CT)", 3: "3 channels (RGB)"}.get(m.in_channels, f"{m.in_channels} channels")
    ds = m.dataset_cfg.get("_target_", "?").rsplit(".", 1)[-1]
    return f"this model ({ds}) segments {what} with {ch}"


def check_compatible(path: Path, kind: str, model: LoadedModel) -> None:
    dims, channels, desc = inspect_input(path, kind)
    wanted_kind = "nifti" if model.spatial_dims == 3 else "image"
    if kind != wanted_kind or dims != model.spatial_dims:
        raise PredictError(f"{path}: a {desc}, but {_describe_model(model)}")
    if channels != model.in_channels:
        raise PredictError(
            f"{path}: a {desc} with {channels} channel{'s' if channels != 1 else ''}, but {_describe_model(model)}"
        )


# ---------------------------------------------------------------------------------------- outputs
def output_paths(output: Path, name: str, kind: str) -> dict[str, Path]:
    if kind == "nifti":
        out = {t: output / f"{name}_{t}.nii.gz" for t in ("seg", "uncertainty", "refer")}
    else:
        out = {t: output / f"{name}_{t}.png" for t in ("seg", "uncertainty", "refer")}
        out["uncertainty_npy"] = output / f"{name}_uncertainty.npy"
    out["json"] = output / f"{name}.json"
    return out


def _tmp(path: Path) -> Path:
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def save_nifti_like(array: np.ndarray, reference, path: Path, dtype, description: str) -> None:
    """``array`` on ``reference``'s grid, with its header geometry (qform/sform as stored, units)."""
    import nibabel as nib

    cls = type(reference) if isinstance(reference, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    header = reference.header.copy() if isinstance(reference.header, nib.Nifti1Header) else None
    if header is None:
        img = cls(array.astype(dtype), reference.affine)
    else:
        img = cls(array.astype(dtype), None, header=header)
        img.header.set_data_dtype(dtype)
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"] = 0
        img.header["cal_max"] = 0
        img.header["intent_code"] = 0
        img.header["descrip"] = description[:79].encode()
    tmp = _tmp(path)
    nib.save(img, str(tmp))
    tmp.replace(path)


def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = _tmp(path)
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)


def _save_npy(array: np.ndarray, path: Path) -> None:
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.save(f, array)
    tmp.replace(path)


def _json_float(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ---------------------------------------------------------------------------------------- inference
def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device={device} requested but CUDA is not available; use device=cpu")
    return dev


def segment_file(model: LoadedModel, path: Path, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """``(segmentation int64, uncertainty float32)`` on the file's own grid, in MONAI's array layout
    (NIfTI voxel order; ``(width, height)`` for 2-D images)."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    transforms = model.datamodule.predict_transforms()
    try:
        image = transforms({"image": str(path)})["image"]
    except Exception as e:
        cause = first_cause(e, DatasetError)
        raise PredictError(f"{path}: cannot preprocess this file ({cause or e})") from e
    if image.shape[0] != model.in_channels:
        raise PredictError(
            f"{path}: read as {image.shape[0]} channel(s), but {_describe_model(model)}"
        )
    uncertainty, prediction, _ = model.module.segment(image[None].to(device))
    u = MetaTensor(uncertainty[:1].detach().float().cpu())
    seg = MetaTensor(prediction[:1].detach().float().cpu())
    if isinstance(image, MetaTensor) and image.applied_operations:
        inverter = Invertd(
            keys=["seg", "u"], transform=transforms, orig_keys="image", nearest_interp=[True, False], to_tensor=True
        )
        out = inverter({"image": image, "seg": seg, "u": u})
        seg, u = out["seg"], out["u"]
    seg_np = torch.as_tensor(seg)[0].round().long().numpy()
    u_np = torch.as_tensor(u)[0].float().numpy().astype(np.float32)
    return seg_np, u_np


def predict_files(
    ckpt: str | Path,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    coverage: float | None = None,
    threshold: float | None = None,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
) -> list[dict]:
    """Segment every input file with ``ckpt`` and write segmentation, uncertainty, referral mask and a
    JSON per file into ``output`` (see the module docstring). Exactly one of ``coverage`` (in (0, 1];
    threshold from the checkpoint's validation curve) and ``threshold`` (refer ``u > threshold``).
    Refuses to overwrite existing outputs unless ``overwrite``; every check runs before any
    computation. Returns the per-file JSON records."""
    if (coverage is None) == (threshold is None):
        raise PredictError("give exactly one of coverage=<fraction in (0, 1]> and threshold=<uncertainty>")
    if coverage is not None:
        coverage = float(coverage)
        if not 0.0 < coverage <= 1.0:
            raise PredictError(f"coverage={coverage} must be in (0, 1]")
    if threshold is not None:
        threshold = float(threshold)
        if math.isnan(threshold):
            raise PredictError("threshold must be a number")
    dev = _device(device)
    ckpt_path = Path(ckpt).expanduser().resolve() if Path(ckpt).expanduser().exists() else Path(ckpt)
    output = Path(output).expanduser().absolute()
    files, kind = list_inputs(inputs, skip_outputs_in=output)

    model = load_model(ckpt_path, "cpu", trust_checkpoint=trust_checkpoint)
    val_coverage = None
    if coverage is not None:
        if not model.val_curve:
            raise PredictError(
                f"{ckpt_path} has no validation risk-coverage curve ('uaseg_val_curve'; saved only after a "
                "validation run), so coverage cannot be mapped to a threshold; pass threshold=<u> instead"
            )
        threshold, val_coverage = threshold_for_coverage(model.val_curve, coverage)
        log.info("coverage %.4g -> threshold %.6g (validation coverage %.4f)", coverage, threshold, val_coverage)
    assert threshold is not None
    for f in files:
        check_compatible(f, kind, model)

    targets = {f: output_paths(output, case_name(f), kind) for f in files}
    if not overwrite:
        existing = [p for t in targets.values() for p in t.values() if p.exists()]
        if existing:
            shown = "\n  ".join(str(p) for p in existing[:5])
            more = f"\n  ... and {len(existing) - 5} more" if len(existing) > 5 else ""
            raise FileExistsError(
                f"{len(existing)} output file(s) already exist; pass overwrite=true to replace them, or choose "
                f"another output folder:\n  {shown}{more}"
            )
    output.mkdir(parents=True, exist_ok=True)
    model.module.to(dev)

    records = []
    for f in files:
        log.info("segmenting %s", f)
        records.append(_predict_one(model, f, kind, targets[f], dev, ckpt_path, threshold, coverage, val_coverage))
    return records


def _predict_one(
    model: LoadedModel,
    path: Path,
    kind: str,
    out: dict[str, Path],
    device: torch.device,
    ckpt_path: Path,
    threshold: float,
    coverage: float | None,
    val_coverage: float | None,
) -> dict:
    seg, u = segment_file(model, path, device)
    refer = u > threshold  # -inf (validation coverage 0): refer everything
    if kind == "nifti":
        import nibabel as nib

        ref = nib.load(str(path))
        if seg.shape != tuple(ref.shape[:3]):
            raise RuntimeError(f"{path}: inverted prediction has shape {seg.shape}, the file {ref.shape}")
        save_nifti_like(seg, ref, out["seg"], np.uint8, "uaseg segmentation")
        save_nifti_like(u, ref, out["uncertainty"], np.float32, "uaseg uncertainty 1-max softmax")
        save_nifti_like(refer, ref, out["refer"], np.uint8, f"uaseg referral u>{threshold:.6g}")
    else:
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
        if seg.shape != (width, height):  # predict_transforms read 2-D files as (width, height)
            raise RuntimeError(f"{path}: prediction has shape {seg.shape}, the image is {width}x{height}")
        seg, u, refer = seg.T, u.T, refer.T
        save_png(seg.astype(np.uint8), out["seg"])
        save_png(np.round(np.clip(u, 0.0, 1.0) * 65535.0).astype(np.uint16), out["uncertainty"])
        _save_npy(np.ascontiguousarray(u, dtype=np.float32), out["uncertainty_npy"])
        save_png(refer.astype(np.uint8) * 255, out["refer"])
    n = int(refer.size)
    counts = np.bincount(seg.ravel(), minlength=model.num_classes)
    counts_covered = np.bincount(seg[~refer].ravel(), minlength=model.num_classes)
    names = model.class_names if len(model.class_names) == model.num_classes else [str(i) for i in range(model.num_classes)]
    record = {
        "input": str(path.resolve()),
        "checkpoint": str(ckpt_path),
        "dataset": model.dataset_cfg.get("_target_"),
        "threshold": _json_float(threshold),
        "threshold_source": "coverage" if coverage is not None else "explicit",
        "threshold_rule": (
            "validation curve point with coverage nearest to the requested one (ties: larger coverage); "
            "refer voxels with u > threshold"
            if coverage is not None
            else "given by the user; refer voxels with u > threshold"
        ),
        "requested_coverage": coverage,
        "validation_coverage": val_coverage,
        "coverage": float(1.0 - refer.sum() / n),
        "voxels": n,
        "referred_voxels": int(refer.sum()),
        "shape": list(seg.shape),
        "voxel_counts": {names[i]: int(c) for i, c in enumerate(counts)},
        "voxel_counts_covered": {names[i]: int(c) for i, c in enumerate(counts_covered)},
        "uncertainty": {"mean": float(u.mean()), "max": float(u.max())},
        "outputs": {k: str(p) for k, p in out.items() if k != "json"},
    }
    if threshold == -math.inf:
        record["note"] = "threshold -inf: the nearest validation coverage was 0, every voxel is referred"
    tmp = _tmp(out["json"])
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False))
    tmp.replace(out["json"])
    log.info("%s: coverage %.4f at threshold %.6g -> %s", path.name, record["coverage"], threshold, out["seg"])
    return record


def main(cfg: Any) -> list[dict]:
    """Entry point of ``python predict.py`` (a Hydra ``DictConfig`` with the keys of conf/predict.yaml)."""
    from omegaconf import OmegaConf

    missing = [k for k in ("ckpt", "input", "output") if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise PredictError(
            f"missing {', '.join(f'{k}=' for k in missing)}; usage: python predict.py ckpt=<checkpoint> "
            "input=<file or folder> output=<folder> coverage=<0..1> (or threshold=<u>)"
        )
    inputs = OmegaConf.to_container(cfg.input) if OmegaConf.is_config(cfg.input) else cfg.input
    return predict_files(
        cfg.ckpt,
        inputs,
        cfg.output,
        coverage=cfg.get("coverage"),
        threshold=cfg.get("threshold"),
        overwrite=bool(cfg.get("overwrite", False)),
        device=cfg.get("device", "cpu"),
        trust_checkpoint=bool(cfg.get("trust_checkpoint", False)),
    )
