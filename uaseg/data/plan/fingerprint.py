"""The dataset fingerprint and the preprocessing plan derived from it (as nnU-Net plans from its
``dataset_fingerprint.json``), for datasets in the nnU-Net or Decathlon layout.

**Fingerprint** (``fingerprint.json``, next to ``splits_final.json``; computed once from every
labelled case, written atomically and never overwritten): per case the voxel spacing (column norms
of the affine), the shape, the shape after cropping to the non-zero region (voxels non-zero in any
channel, as nnU-Net crops) and the orientation codes of the file; the median over cases of the
cropped / original size ratio and, from it, whether z-score normalisation uses the non-zero mask
(ratio < 3/4, nnU-Net's rule); per channel statistics of the *foreground* intensities (voxels with
label > 0, on the file's own grid) pooled over the cases: mean, std, min, max, median and the
0.5 / 99.5 percentiles (``numpy.percentile``, linear). A case contributes all its foreground voxels
up to ``FOREGROUND_SAMPLES / n_cases`` (beyond that a seeded random subset, like nnU-Net). The file
also records the size and modification time of every file it was computed from (``dataset.json``
included): when any of them changes, or a case is added or removed, loading it is an error naming
the files, so a stale fingerprint is never used silently. A fingerprint of an older uaseg (version 1,
without the cropped shapes) over unchanged files is recomputed once, the old file kept beside it as
``fingerprint.v1.json``, with a warning. Like nnU-Net's, one fingerprint serves every fold.

**Plan** (a plain dict: it travels in the resolved dataset config, hence in every checkpoint, so
prediction needs neither ``dataset.root`` nor the fingerprint file). nnU-Net's rules
(:mod:`uaseg.data.plan.planner`, :mod:`uaseg.data.plan.resample`) on the cropped shapes:

* ``crop_to_nonzero``: cases are cropped to their non-zero region first (``CropForegroundd``);
* ``target_spacing`` (3-D): ``dataset.spacing`` if given, else the median spacing per axis -- on strongly
  anisotropic data the coarse axis takes the 10th percentile of its spacings
  (:func:`uaseg.data.plan.planner.target_spacing`); axes in ``dataset.orientation`` (each case's spacing
  permuted from its file's axis codes); 2-D: none;
* ``resampling``: ``"nnunet"`` (:class:`uaseg.data.plan.resample.ResampleToSpacingd`: images third-order
  spline, labels per class, the out-of-plane axis of anisotropic data separately);
* ``normalization`` per channel, from its name (``channel_names`` / ``modality``; case-insensitive,
  nnU-Net's names): ``CT`` -> clip to the foreground 0.5 / 99.5 percentiles, then z-score with the
  foreground mean and std; ``noNorm`` -> unchanged; ``rescale_to_0_1`` -> per-case min-max;
  ``rgb_to_0_1`` -> ``x / 255``; anything else -> per-case z-score (``zscore``), within the non-zero
  mask (``use_nonzero_mask``, outside set to 0) when the fingerprint says so;
* ``patch_size``: :func:`uaseg.data.plan.planner.plan_patch` from the median shape after cropping and
  resampling, the network's total stride (``network_stride``, from ``model.net.strides``) and the
  per-axis cap ``dataset.max_patch_size_3d`` / ``_2d`` (whose product is the voxel budget);
* ``meta``: spatial dims, channels, classes and class names (what the model config reads).

Plans made by older versions (in checkpoints) lack ``crop_to_nonzero`` / ``resampling``: they keep
the preprocessing they were trained with (no crop, ``Spacingd`` bilinear).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from uaseg.errors import DatasetError, first_cause, root_cause
from uaseg.config.interpolation import refuse_interpolations
from uaseg.io import read_image_header, read_nifti_header, write_json

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 2
FINGERPRINT_FILE = "fingerprint.json"
#: foreground voxels kept per channel for the intensity statistics, over all cases (nnU-Net: 1e8)
FOREGROUND_SAMPLES = 10_000_000
#: nnU-Net normalises z-score channels within the non-zero mask when cropping to it leaves less than
#: this share of the median case (``median_relative_size_after_cropping < 3/4``)
CROP_SHARE_FOR_MASK = 0.75
#: channel name (casefolded) -> normalisation scheme; any other name is ``zscore``
SCHEMES = {"ct": "ct", "nonorm": "none", "zscore": "zscore", "rescale_to_0_1": "rescale_to_0_1",
           "rgb_to_0_1": "rgb_to_0_1"}
_PAIRS = {"L": "LR", "R": "LR", "P": "PA", "A": "PA", "I": "IS", "S": "IS"}


def file_stamps(root: Path, files: Sequence[str | Path]) -> dict[str, list[int]]:
    """``relative path -> [size, mtime_ns]`` of every file."""
    out = {}
    for f in files:
        st = os.stat(f)
        out[os.path.relpath(f, root)] = [int(st.st_size), int(st.st_mtime_ns)]
    return dict(sorted(out.items()))


def case_geometry(image: str, spatial_dims: int) -> dict[str, Any]:
    """``{shape, spacing, axcodes}`` of a case from the header of its (first) image file."""
    if spatial_dims == 2:
        size, _ = read_image_header(image)
        return {"shape": list(size), "spacing": [1.0, 1.0], "axcodes": None}
    import nibabel as nib

    h = read_nifti_header(image)
    spacing = np.linalg.norm(h.affine[:3, :3], axis=0)
    return {"shape": list(h.shape[:3]), "spacing": [float(s) for s in spacing],
            "axcodes": "".join(nib.aff2axcodes(h.affine))}


def foreground_values(case: dict, spatial_dims: int, n_channels: int, n_classes: int, cap: int,
                      seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Per channel the image intensities at the case's foreground voxels (label > 0), read as in
    training (MONAI loaders, the same checks: channels, grid, label values in ``0..n_classes-1``); at
    most ``cap`` per channel (a seeded random subset beyond). Also the shape of the case cropped to
    its non-zero region (:func:`nonzero_shape`)."""
    from monai.transforms import Compose, EnsureChannelFirstd

    from uaseg.data.checks import CheckChannelsd, CheckLabelValuesd, CheckSameGeometryd, LoadImageNamedd

    reader = {"reader": "PILReader"} if spatial_dims == 2 else {}
    load = Compose([
        LoadImageNamedd(keys=["image", "label"], image_only=True, **reader),
        EnsureChannelFirstd(keys=["image", "label"]),
        CheckChannelsd(keys="image", n=n_channels, what="image"),
        CheckSameGeometryd("image", "label", check_affine=spatial_dims == 3),
        CheckLabelValuesd(keys="label", allowed=range(n_classes)),
    ])
    try:
        d = load({"image": case["image"], "label": case["label"]})
    except Exception as e:  # MONAI wraps our errors in RuntimeError('applying transform ...')
        cause = first_cause(e, DatasetError)
        if cause is None:
            raise DatasetError(f"case {case['case_id']}: cannot read its files ({root_cause(e)})") from e
        raise DatasetError(f"case {case['case_id']}: {cause}") from e
    image = np.asarray(d["image"], dtype=np.float64)
    fg = np.asarray(d["label"])[0] > 0
    values = [image[c][fg] for c in range(n_channels)]
    if fg.sum() > cap:
        keep = np.random.default_rng(seed).choice(int(fg.sum()), cap, replace=False)
        values = [v[keep] for v in values]
    return values, nonzero_shape(image)


def nonzero_shape(image: np.ndarray) -> list[int]:
    """Spatial shape of the bounding box of the voxels non-zero in any channel of ``(C, *spatial)``
    (nnU-Net's ``crop_to_nonzero``; an all-zero image keeps its shape)."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return [int(n) for n in mask.shape]
    return [int(np.ptp(np.flatnonzero(mask.any(axis=tuple(j for j in range(mask.ndim) if j != i)))) + 1)
            for i in range(mask.ndim)]


def intensity_stats(values: np.ndarray) -> dict[str, float | int]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n_voxels": 0}
    return {"n_voxels": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "median": float(np.median(v)), "percentile_00_5": float(np.percentile(v, 0.5)),
            "percentile_99_5": float(np.percentile(v, 99.5))}


def compute_fingerprint(cases: list[dict], spatial_dims: int, channel_names: Sequence[str], n_classes: int,
                        stamps: dict[str, list[int]]) -> dict[str, Any]:
    """Read every case (see the module docstring)."""
    cap = max(1, FOREGROUND_SAMPLES // max(1, len(cases)))
    pooled: list[list[np.ndarray]] = [[] for _ in channel_names]
    per_case = {}
    for i, case in enumerate(cases):
        first = case["image"][0] if isinstance(case["image"], list) else case["image"]
        geom = case_geometry(first, spatial_dims)
        values, cropped = foreground_values(case, spatial_dims, len(channel_names), n_classes, cap, seed=1234 + i)
        geom["shape_after_crop"] = cropped
        geom["foreground_voxels"] = int(values[0].size)
        per_case[case["case_id"]] = geom
        for c, v in enumerate(values):
            pooled[c].append(v)
    share = float(np.median([np.prod(g["shape_after_crop"]) / np.prod(g["shape"]) for g in per_case.values()]))
    return {
        "version": FINGERPRINT_VERSION,
        "spatial_dims": spatial_dims,
        "median_relative_size_after_cropping": share,
        "use_nonzero_mask_for_norm": share < CROP_SHARE_FOR_MASK,
        "channels": [{"name": n, **intensity_stats(np.concatenate(pooled[c]) if pooled[c] else np.zeros(0))}
                     for c, n in enumerate(channel_names)],
        "cases": per_case,
        "files": stamps,
    }


def load_or_compute_fingerprint(path: Path, root: Path, cases: list[dict], files: Sequence[str | Path],
                                spatial_dims: int, channel_names: Sequence[str], n_classes: int,
                                check: Callable[[dict], None]) -> dict[str, Any]:
    """The fingerprint stored at ``path`` if it was computed from exactly these files, else (no file
    yet) compute it -- ``check`` runs on every case first -- and store it."""
    stamps = file_stamps(root, files)
    if path.exists():
        try:
            fp = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read the dataset fingerprint ({e}); delete it to recompute") from e
        refuse_interpolations(fp.get("channels"), path, error=DatasetError, what="a fingerprint", hint="delete it to "
                              "recompute", path="channels")  # channel names reach the plan
        if fp.get("files") == stamps and fp.get("version") == 1:  # same files, older content: upgrade once
            old = path.with_name(path.stem + ".v1.json")
            log.warning("%s was written by an older uaseg (fingerprint version 1, without the non-zero crop); "
                        "recomputing it from the same files (the old one is kept as %s; checkpoints keep the "
                        "plan they were trained with)", path, old.name)
            for case in cases:
                check(case)
            fp = compute_fingerprint(cases, spatial_dims, channel_names, n_classes, stamps)
            if not old.exists():
                write_json(old, json.loads(path.read_text()))
            write_json(path, fp)
            return fp
        if fp.get("version") != FINGERPRINT_VERSION or fp.get("files") != stamps:
            why = (_stale(fp.get("files") or {}, stamps) if fp.get("files") != stamps else
                   f"it is fingerprint version {fp.get('version')!r}, this uaseg reads version {FINGERPRINT_VERSION}")
            raise DatasetError(f"{path}: {why}. Delete this file to recompute the "
                               "fingerprint (it is never overwritten; checkpoints keep the plan they were trained with)")
        return fp
    for case in cases:
        check(case)
    fp = compute_fingerprint(cases, spatial_dims, channel_names, n_classes, stamps)
    if not path.exists():  # written once: a parallel job may have written the same numbers meanwhile
        write_json(path, fp)
    return fp


def _stale(old: dict, new: dict) -> str:
    if not old:
        return "the fingerprint was computed by another uaseg version"
    parts = []
    for what, names in (("changed", [f for f in new if f in old and old[f] != new[f]]),
                        ("added", [f for f in new if f not in old]), ("removed", [f for f in old if f not in new])):
        if names:
            parts.append(f"{what}: {', '.join(names[:5])}" + (f" and {len(names) - 5} more" if len(names) > 5 else ""))
    return "the dataset changed since its fingerprint was computed (" + "; ".join(parts) + ")"


# ------------------------------------------------------------------------------------------ plan
def reorder(values: Sequence[float], axcodes: str | None, orientation: str | None) -> list[float]:
    """Per-axis values of a file with orientation codes ``axcodes`` in the axis order of
    ``orientation`` (``Orientationd`` permutes axes so; flips do not change sizes)."""
    if not axcodes or not orientation:
        return [float(v) for v in values]
    return [float(values[next(i for i, a in enumerate(axcodes) if _PAIRS[a] == _PAIRS[o])]) for o in orientation]


def normalization_for(channel: dict[str, Any], source: str, use_mask: bool = False) -> dict[str, Any]:
    """A channel's scheme; ``use_mask``: z-score within the non-zero mask (only ``zscore`` uses it, as in
    nnU-Net, whose other schemes do not leave the outside at zero)."""
    scheme = SCHEMES.get(str(channel["name"]).casefold(), "zscore")
    if scheme == "zscore":
        return {"channel": channel["name"], "scheme": scheme, "use_nonzero_mask": bool(use_mask)}
    if scheme != "ct":
        return {"channel": channel["name"], "scheme": scheme}
    if not channel.get("n_voxels"):
        raise DatasetError(f"{source}: channel {channel['name']!r} is CT, whose normalisation needs foreground "
                           "intensities, but no training label has a foreground voxel")
    return {"channel": channel["name"], "scheme": "ct",
            "clip": [channel["percentile_00_5"], channel["percentile_99_5"]],
            "mean": channel["mean"], "std": max(channel["std"], 1e-8)}


def make_plan(fp: dict[str, Any], meta: dict[str, Any], settings: dict[str, Any], source: str,
              where: str, strides: Any = None) -> dict[str, Any]:
    """The preprocessing plan (module docstring) from a fingerprint (stored at ``where``), the
    dataset's ``meta`` (``dataset.json`` at ``source``), the planning ``settings`` (``spacing``,
    ``orientation``, ``max_patch_size_2d``, ``max_patch_size_3d``) and the network's ``strides``."""
    from uaseg.data.plan.planner import plan_patch, target_spacing, total_stride

    dims = int(meta["spatial_dims"])
    cases = list(fp["cases"].values())
    orientation = settings["orientation"] if dims == 3 else None
    spacings = np.array([reorder(c["spacing"], c["axcodes"], orientation) for c in cases])
    shapes = np.array([reorder(c["shape_after_crop"], c["axcodes"], orientation) for c in cases])
    median_spacing = np.median(spacings, axis=0)
    aniso = False
    if dims == 3:
        if settings["spacing"] is None:
            target, aniso = target_spacing(spacings, shapes)
        else:
            target = np.asarray(_as_list(settings["spacing"], 3), float)
        # nnU-Net's median of the per-case (rounded) resampled shapes
        resampled = np.median(np.round(shapes * spacings / target), axis=0)
    else:
        target, resampled = None, np.median(shapes, axis=0)
    stride = total_stride(strides, dims)
    patch = plan_patch(target if target is not None else [1.0] * dims, resampled, stride,
                       [int(c) for c in _as_list(settings[f"max_patch_size_{dims}d"], dims)])
    use_mask = bool(fp["use_nonzero_mask_for_norm"])
    return {
        "meta": dict(meta),
        "crop_to_nonzero": True,
        "target_spacing": None if target is None else [float(t) for t in target],
        "resampling": "nnunet",
        "orientation": orientation,
        "patch_size": patch,
        "network_stride": stride,
        "normalization": [normalization_for(ch, source, use_mask) for ch in fp["channels"]],
        "fingerprint": {"file": where, "cases": len(cases), "median_spacing": [float(s) for s in median_spacing],
                        "anisotropic": bool(aniso), "median_shape_resampled": [float(s) for s in resampled],
                        "median_relative_size_after_cropping": float(fp["median_relative_size_after_cropping"])},
        "settings": dict(settings),
    }


def _as_list(v: Any, n: int) -> list[float]:
    vals = [float(v)] * n if isinstance(v, (int, float)) else [float(x) for x in v]
    if len(vals) != n:
        raise DatasetError(f"{list(vals)} must have {n} entries (one per spatial axis)")
    return vals


def describe_plan(plan: dict[str, Any]) -> str:
    """The plan in a few lines (logged once by the datamodule of a run)."""
    fp, m = plan["fingerprint"], plan["meta"]
    fmt = lambda xs: " x ".join(f"{x:.4g}" for x in xs)  # noqa: E731
    lines = [(f"dataset fingerprint ({fp['file']}): {fp['cases']} cases, {m['spatial_dims']}-D, "
              f"classes {', '.join(m['class_names'])}"),
             f"  median spacing {fmt(fp['median_spacing'])}; median shape after resampling {fmt(fp['median_shape_resampled'])}",
             (f"  target spacing {fmt(plan['target_spacing']) if plan['target_spacing'] else 'none (2-D)'}"
              f"{' (anisotropic: coarse axis at the 10th percentile of its spacings)' if fp.get('anisotropic') else ''}; "
              f"patch size {fmt(plan['patch_size'])}{' (width x height)' if m['spatial_dims'] == 2 else ''}")]
    for n in plan["normalization"]:
        extra = f": clip to [{n['clip'][0]:.6g}, {n['clip'][1]:.6g}], z-score with mean {n['mean']:.6g}, std {n['std']:.6g}" \
            if n["scheme"] == "ct" else " within the non-zero mask" if n.get("use_nonzero_mask") else ""
        lines.append(f"  channel {n['channel']!r}: {n['scheme']}{extra}")
    return "\n".join(lines)
