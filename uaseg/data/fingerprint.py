"""The dataset fingerprint and the preprocessing plan derived from it (as nnU-Net plans from its
``dataset_fingerprint.json``), for datasets in the nnU-Net or Decathlon layout.

**Fingerprint** (``fingerprint.json``, next to ``splits_final.json``; computed once from every
labelled case, written atomically and never overwritten): per case the voxel spacing (column norms
of the affine), the shape and the orientation codes of the file; per channel statistics of the
*foreground* intensities (voxels with label > 0, on the file's own grid) pooled over the cases:
mean, std, min, max, median and the 0.5 / 99.5 percentiles (``numpy.percentile``, linear). A case
contributes all its foreground voxels up to ``FOREGROUND_SAMPLES / n_cases`` (beyond that a seeded
random subset, like nnU-Net). The file also records the size and modification time of every file it
was computed from (``dataset.json`` included): when any of them changes, or a case is added or
removed, loading it is an error naming the files, so a stale fingerprint is never used silently.
Like nnU-Net's, one fingerprint serves every fold (it is computed from all labelled cases).

**Plan** (a plain dict: it travels in the resolved dataset config, hence in every checkpoint, so
prediction needs neither ``dataset.root`` nor the fingerprint file):

* ``target_spacing`` (3-D): ``dataset.spacing`` if given, else the median spacing per axis, axes in
  ``dataset.orientation`` (each case's spacing permuted from its file's axis codes); 2-D: none;
* ``normalization`` per channel, from its name (``channel_names`` / ``modality``; case-insensitive,
  nnU-Net's names): ``CT`` -> clip to the foreground 0.5 / 99.5 percentiles, then z-score with the
  foreground mean and std; ``noNorm`` -> unchanged; ``rescale_to_0_1`` -> per-case min-max;
  ``rgb_to_0_1`` -> ``x / 255``; anything else -> per-case z-score (``zscore``);
* ``patch_size``: the median shape after resampling to the target spacing, rounded up to a multiple
  of ``PATCH_MULTIPLE`` and capped by ``dataset.max_patch_size_3d`` / ``_2d``;
* ``meta``: spatial dims, channels, classes and class names (what the model config reads).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from uaseg.errors import DatasetError, first_cause, root_cause
from uaseg.io import read_image_header, read_nifti_header, write_json

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"
#: foreground voxels kept per channel for the intensity statistics, over all cases (nnU-Net: 1e8)
FOREGROUND_SAMPLES = 10_000_000
#: every model in conf/model/ (at most 4 downsamplings) takes patch sides divisible by 16
PATCH_MULTIPLE = 16
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
                      seed: int) -> list[np.ndarray]:
    """Per channel the image intensities at the case's foreground voxels (label > 0), read as in
    training (MONAI loaders, the same checks: channels, grid, label values in ``0..n_classes-1``); at
    most ``cap`` per channel (a seeded random subset beyond)."""
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
    return values


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
        values = foreground_values(case, spatial_dims, len(channel_names), n_classes, cap, seed=1234 + i)
        geom["foreground_voxels"] = int(values[0].size)
        per_case[case["case_id"]] = geom
        for c, v in enumerate(values):
            pooled[c].append(v)
    return {
        "version": FINGERPRINT_VERSION,
        "spatial_dims": spatial_dims,
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
        if fp.get("version") != FINGERPRINT_VERSION or fp.get("files") != stamps:
            raise DatasetError(f"{path}: {_stale(fp.get('files') or {}, stamps)}. Delete this file to recompute the "
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


def normalization_for(channel: dict[str, Any], source: str) -> dict[str, Any]:
    scheme = SCHEMES.get(str(channel["name"]).casefold(), "zscore")
    if scheme != "ct":
        return {"channel": channel["name"], "scheme": scheme}
    if not channel.get("n_voxels"):
        raise DatasetError(f"{source}: channel {channel['name']!r} is CT, whose normalisation needs foreground "
                           "intensities, but no training label has a foreground voxel")
    return {"channel": channel["name"], "scheme": "ct",
            "clip": [channel["percentile_00_5"], channel["percentile_99_5"]],
            "mean": channel["mean"], "std": max(channel["std"], 1e-8)}


def make_plan(fp: dict[str, Any], meta: dict[str, Any], settings: dict[str, Any], source: str,
              where: str) -> dict[str, Any]:
    """The preprocessing plan (module docstring) from a fingerprint (stored at ``where``), the
    dataset's ``meta`` (``dataset.json`` at ``source``) and the planning ``settings`` (``spacing``,
    ``orientation``, ``max_patch_size_2d``, ``max_patch_size_3d``)."""
    dims = int(meta["spatial_dims"])
    cases = list(fp["cases"].values())
    orientation = settings["orientation"] if dims == 3 else None
    spacings = np.array([reorder(c["spacing"], c["axcodes"], orientation) for c in cases])
    shapes = np.array([reorder(c["shape"], c["axcodes"], orientation) for c in cases])
    median_spacing = np.median(spacings, axis=0)
    if dims == 3:
        target = median_spacing if settings["spacing"] is None else np.asarray(_as_list(settings["spacing"], 3), float)
        resampled = np.median(shapes * spacings / target, axis=0)
    else:
        target, resampled = None, np.median(shapes, axis=0)
    cap = _as_list(settings[f"max_patch_size_{dims}d"], dims)
    patch = [int(min(c, max(1, math.ceil(round(m, 6) / PATCH_MULTIPLE)) * PATCH_MULTIPLE)) for m, c in zip(resampled, cap)]
    return {
        "meta": dict(meta),
        "target_spacing": None if target is None else [float(t) for t in target],
        "orientation": orientation,
        "patch_size": patch,
        "normalization": [normalization_for(ch, source) for ch in fp["channels"]],
        "fingerprint": {"file": where, "cases": len(cases), "median_spacing": [float(s) for s in median_spacing],
                        "median_shape_resampled": [float(s) for s in resampled]},
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
             (f"  target spacing {fmt(plan['target_spacing']) if plan['target_spacing'] else 'none (2-D)'}; "
              f"patch size {fmt(plan['patch_size'])}")]
    for n in plan["normalization"]:
        extra = f": clip to [{n['clip'][0]:.6g}, {n['clip'][1]:.6g}], z-score with mean {n['mean']:.6g}, std {n['std']:.6g}" \
            if n["scheme"] == "ct" else ""
        lines.append(f"  channel {n['channel']!r}: {n['scheme']}{extra}")
    return "\n".join(lines)
