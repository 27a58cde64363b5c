#!/usr/bin/env python
"""Validate a downloaded MM-WHS or GlaS folder, or your own dataset in the nnU-Net or Decathlon
layout, before training.

    python scripts/check_dataset.py --dataset mmwhs --root /data/MM-WHS
    python scripts/check_dataset.py --dataset glas  --root /data/Warwick_QU_Dataset
    python scripts/check_dataset.py --dataset nnunet --root /data/nnUNet_raw/Dataset004_Hippocampus
    python scripts/check_dataset.py --dataset decathlon --root /data/Task02_Heart

Reads every file completely (not only headers) and prints one row per case: shape, spacing /
orientation (3-D) or size / mode (GlaS), per channel the intensity range (nnU-Net / Decathlon: one
``chN min/max`` column per channel, also for 4-D files and RGB images), label values and per-class
voxel counts (and the ignore label's, when ``dataset.json`` has one). The checks are
those of training (:mod:`uaseg.data.checks`): NaN / infinite voxels, label values that are not exact
integers of the dataset's code list; a label without foreground (all background, or only the ignore
label) is a warning, and no foreground in any label an error. For nnU-Net and Decathlon
folders it also checks ``dataset.json`` against the files (numTraining, a channel file for every
channel, labels) and that every channel and the label share one grid. All problems
are collected (not only the first) and listed at the end, each naming its file. Exit code 0 when the
folder is usable, 1 when some case has a problem, 2 when the folder itself is wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

# uaseg's dataset modules import torch and MONAI (a minute on a busy machine): each scanner imports what
# it needs, so `--help` and a wrong argument answer at once
from uaseg.errors import DatasetError, describe

Row = dict[str, str]
DATASETS = ("decathlon", "glas", "mmwhs", "nnunet")


def scan_mmwhs(root: Path) -> tuple[list[Row], list[str]]:
    import nibabel as nib

    from uaseg.data.checks import (
        check_label_values, check_nifti_pair, describe_values, foreground_note, nonfinite_problem,
    )
    from uaseg.data.datasets.mmwhs import MMWHS_CLASSES, MMWHS_FIXUPS, MMWHS_VALUES, find_mmwhs_cases
    from uaseg.io import read_nifti_header

    rows, problems = [], []
    for c in find_mmwhs_cases(root):
        row: Row = {"case": c["case_id"], "image": Path(c["image"]).name}
        try:
            check_nifti_pair(c["image"], c["label"], ndim=3)
            header = read_nifti_header(c["image"])
            row["shape"] = "x".join(map(str, header.shape))
            row["spacing"] = "x".join(f"{z:.3g}" for z in header.zooms)
            row["orient"] = "".join(nib.aff2axcodes(header.affine))
            for key in ("image", "label"):
                try:
                    arr = np.asarray(nib.load(c[key]).dataobj)
                except Exception as e:
                    raise DatasetError(f"{c[key]}: cannot read the voxels ({describe(e)})") from e
                if key == "image":
                    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
                    row["HU min/max"] = f"{finite.min():.0f}/{finite.max():.0f}" if finite.size else "-"
                    problem = nonfinite_problem(c["image"], arr)
                    if problem:
                        problems.append(problem)
                else:
                    lab = arr
            values, counts = np.unique(lab, return_counts=True)
            row["label values"] = describe_values(values.tolist())
            by_value = dict(zip(values.tolist(), counts.tolist()))
            for name, v in zip(MMWHS_CLASSES, MMWHS_VALUES):
                n = by_value.get(v, 0) + sum(by_value.get(b, 0) for b, g in MMWHS_FIXUPS.items() if g == v)
                row[name] = str(n)
            fixed = [v for v in values.tolist() if v in MMWHS_FIXUPS]  # exact: 421.5 is not 421
            if fixed:
                row["note"] = f"{describe_values(fixed)} -> {describe_values([MMWHS_FIXUPS[int(v)] for v in fixed])}"
            if foreground_note(values.tolist()):
                row["note"] = foreground_note(values.tolist())
            check_label_values(c["label"], values.tolist(), (0, *MMWHS_VALUES), MMWHS_FIXUPS)
        except DatasetError as e:
            problems.append(str(e))
        rows.append(row)
    return rows, problems


def scan_glas(root: Path) -> tuple[list[Row], list[str]]:
    from PIL import Image

    from uaseg.data.checks import check_image_pair, check_same_geometry, foreground_note
    from uaseg.data.datasets.glas import IMAGE_MODES, LABEL_MODES, find_glas_cases

    rows, problems = [], []
    for c in find_glas_cases(root):
        row: Row = {"case": c["case_id"], "group": c["group"], "grade": c["grade"], "patient": c["patient"]}
        try:
            check_image_pair(c["image"], c["label"], IMAGE_MODES, LABEL_MODES)
            arrs = {}
            for key in ("image", "label"):
                try:
                    with Image.open(c[key]) as im:
                        row[f"{key} mode"] = im.mode
                        arrs[key] = np.asarray(im)
                except Exception as e:
                    raise DatasetError(f"{c[key]}: cannot read ({describe(e)})") from e
            h, w = arrs["image"].shape[:2]
            check_same_geometry(c["image"], c["label"], arrs["image"].shape[:2], arrs["label"].shape[:2])
            row["size WxH"] = f"{w}x{h}"
            inst = arrs["label"]
            ids = np.unique(inst)
            row["instances"] = str(int((ids > 0).sum()))
            row["gland px"] = str(int((inst > 0).sum()))
            row["gland %"] = f"{100.0 * (inst > 0).mean():.1f}"
            if not (inst > 0).any():
                row["note"] = foreground_note([0])
        except DatasetError as e:
            problems.append(str(e))
        rows.append(row)
    return rows, problems


def _voxels(path: str, spatial_dims: int) -> np.ndarray:
    try:
        if spatial_dims == 2:
            from PIL import Image

            with Image.open(path) as im:
                return np.asarray(im)
        import nibabel as nib

        return np.asarray(nib.load(path).dataobj)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read the voxels ({type(e).__name__}: {e})") from e


def scan_layout(cls) -> Callable[[Path], tuple[list[Row], list[str]]]:
    """Scanner of a standard layout (nnU-Net, Decathlon): ``dataset.json``, then every case's files."""
    from uaseg.data.checks import describe_values, foreground_note, nonfinite_problem
    from uaseg.data.plan.fingerprint import case_geometry

    def scan(root: Path) -> tuple[list[Row], list[str]]:
        info = cls.read_info(root)
        cases = cls.discover(root, info)
        dims, n_classes = info.spatial_dims, len(info.class_names) + 1
        ignore = getattr(info, "ignore_label", None)
        allowed = range(n_classes + (ignore is not None))
        print(f"{info.json_path}: {dims}-D, channels {', '.join(info.channel_names)}; "
              f"classes {', '.join(info.class_names)} (label values 1..{n_classes - 1})"
              + (f"; ignore label {ignore} (not annotated)" if ignore is not None else "") + "\n")
        rows, problems = [], []
        for c in cases:
            row: Row = {"case": c["case_id"]}
            try:
                cls.check_headers(c, dims, len(info.channel_names))
                images = c["image"] if isinstance(c["image"], list) else [c["image"]]
                geom = case_geometry(images[0], dims)
                row["shape"] = "x".join(map(str, geom["shape"]))
                if dims == 3:
                    row["spacing"] = "x".join(f"{z:.3g}" for z in geom["spacing"])
                    row["orient"] = geom["axcodes"]
                channel = 0
                for f in images:
                    img = _voxels(f, dims)
                    # a 4-D Decathlon volume or an RGB image holds its channels in the last axis
                    parts = np.moveaxis(img, -1, 0) if img.ndim == dims + 1 else img[None]
                    for part in parts:
                        row[f"ch{channel} min/max"] = f"{np.nanmin(part):.4g}/{np.nanmax(part):.4g}"
                        channel += 1
                    problem = nonfinite_problem(f, img)
                    if problem:
                        problems.append(problem)
                values, counts = np.unique(_voxels(c["label"], dims), return_counts=True)
                row["label values"] = describe_values(values.tolist())
                by_value = dict(zip(values.tolist(), counts.tolist()))
                for k, name in enumerate(info.class_names, start=1):
                    row[name] = str(by_value.get(k, 0))
                if ignore is not None:
                    row["ignore"] = str(by_value.get(ignore, 0))
                if foreground_note(values.tolist(), ignore):
                    row["note"] = foreground_note(values.tolist(), ignore)
                bad = [v for v in values.tolist() if v not in allowed]
                if bad:
                    problems.append(f"{c['label']}: unexpected label values {describe_values(bad)}; "
                                    f"allowed are {describe_values(allowed)} (labels of {info.json_path})")
            except DatasetError as e:
                problems.append(str(e))
            rows.append(row)
        return rows, problems

    return scan


def scanner(dataset: str) -> Callable[[Path], tuple[list[Row], list[str]]]:
    """The scanner of ``dataset`` (one of :data:`DATASETS`), its modules imported now."""
    if dataset == "mmwhs":
        return scan_mmwhs
    if dataset == "glas":
        return scan_glas
    if dataset == "nnunet":
        from uaseg.data.formats.nnunet import NnUNetDataModule

        return scan_layout(NnUNetDataModule)
    from uaseg.data.formats.decathlon import DecathlonDataModule

    return scan_layout(DecathlonDataModule)


def print_table(rows: list[Row]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    width = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(r.get(c, "").ljust(width[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--root", required=True, type=Path, help="the downloaded dataset folder")
    args = ap.parse_args(argv)  # before any torch / MONAI import
    try:
        rows, problems = scanner(args.dataset)(args.root)
    except DatasetError as e:
        print(f"ERROR: {e}")
        return 2
    print_table(rows)
    print(f"\n{len(rows)} cases in {args.root}")
    from uaseg.data.checks.files import NO_FOREGROUND

    empty = [r for r in rows if r.get("note") in NO_FOREGROUND]
    if empty:
        print(f"\n{len(empty)} label(s) without foreground (training warns about each):")
        for r in empty:
            print(f"  - {r['case']}: {r['note']}")
        if len(empty) == len(rows):
            problems.append(f"none of the {len(rows)} labels has any foreground: check that the label files belong "
                            "to the images and hold the dataset's label values")
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("OK: no problems found" + (f" ({len(empty)} warning(s) above)" if empty else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
