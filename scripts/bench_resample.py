#!/usr/bin/env python
"""Time nnU-Net's resampling (``uaseg.data.plan.resample.ResampleToSpacingd``, what ``dataset=nnunet`` plans
use) against MONAI's ``Spacingd`` (bilinear image, nearest label: the previous preprocessing) on one
synthetic anisotropic CT volume.

    python scripts/bench_resample.py --shape 512 512 40 --spacing 0.7 0.7 5 --target 0.8 0.8 3.1

The volume: smooth noise (a Gaussian-filtered random field, HU-like range) with two label boxes.
Prints seconds per call (best and median of ``--repeats``; the four calls take turns in every repeat,
so a busy moment of a shared machine hits them alike) for the image and the label, the output shapes,
and each nnU-Net time as a ratio to ``Spacingd``'s (of the best times).

    python scripts/bench_resample.py --shape 160 160 160 --spacing 1 1 1 --target 0.8 0.8 0.8 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacingd
from scipy import ndimage

from uaseg.data.plan.resample import ResampleToSpacingd


def volume(shape, spacing, seed=0):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.normal(size=shape), sigma=3) * 2000.0
    lab = np.zeros(shape, np.float32)
    n = np.array(shape)
    lab[tuple(slice(int(a), int(b)) for a, b in zip(n * 0.2, n * 0.6))] = 1
    lab[tuple(slice(int(a), int(b)) for a, b in zip(n * 0.3, n * 0.45))] = 2
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return {"image": MetaTensor(torch.as_tensor(img[None], dtype=torch.float32), affine=affine),
            "label": MetaTensor(torch.as_tensor(lab[None]), affine=affine)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 40])
    p.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 5.0])
    p.add_argument("--target", type=float, nargs=3, default=[0.8, 0.8, 3.1])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (Spacingd runs in torch)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data = volume(a.shape, a.spacing)
    ours = {k: ResampleToSpacingd(keys=k, pixdim=a.target) for k in ("image", "label")}
    monai = {k: Spacingd(keys=k, pixdim=a.target, mode=m) for k, m in (("image", "bilinear"), ("label", "nearest"))}
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"volume {a.shape} at {a.spacing} mm -> {a.target} mm, torch threads {torch.get_num_threads()}, "
          f"load avg {load}")
    arms = [(name, t, key) for key in ("image", "label")
            for name, t in (("nnU-Net (ResampleToSpacingd)", ours), ("MONAI Spacingd", monai))]
    times = {(name, key): [] for name, _, key in arms}
    shapes = {}
    for _ in range(a.repeats):
        for name, t, key in arms:
            t0 = time.perf_counter()
            out = t[key]({key: data[key]})[key]
            times[name, key].append(time.perf_counter() - t0)
            shapes[name, key] = tuple(out.shape[1:])
    best = {k: min(v) for k, v in times.items()}
    for name, _, key in arms:
        ratio = best[name, key] / best["MONAI Spacingd", key]
        print(f"{name:30s} {key:5s}: {best[name, key]:7.3f} s (median {np.median(times[name, key]):.3f})  "
              f"{ratio:5.2f}x Spacingd  -> shape {shapes[name, key]}")
    print("(the grids differ: Spacingd keeps the first voxel centre and rounds the size its way, nnU-Net maps the "
          "volume's edges onto each other, so the outputs are not compared voxel by voxel)")
    return best


if __name__ == "__main__":
    main()
