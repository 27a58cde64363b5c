#!/usr/bin/env python
"""Time nnU-Net's resampling (``uaseg.data.plan.resample.ResampleToSpacingd``, what ``dataset=nnunet`` plans
use) against MONAI's ``Spacingd`` (bilinear image, nearest label: the previous preprocessing) on one
synthetic anisotropic CT volume.

    python scripts/bench_resample.py --shape 512 512 40 --spacing 0.7 0.7 5 --target 0.8 0.8 3.1

The volume: smooth noise (a Gaussian-filtered random field, HU-like range) with two label boxes.
Prints seconds per call (best of ``--repeats``) for the image and the label, and the output shapes.
"""

from __future__ import annotations

import argparse
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


def best_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 40])
    p.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 5.0])
    p.add_argument("--target", type=float, nargs=3, default=[0.8, 0.8, 3.1])
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    data = volume(a.shape, a.spacing)
    ours = {k: ResampleToSpacingd(keys=k, pixdim=a.target) for k in ("image", "label")}
    monai = {k: Spacingd(keys=k, pixdim=a.target, mode=m) for k, m in (("image", "bilinear"), ("label", "nearest"))}
    print(f"volume {a.shape} at {a.spacing} mm -> {a.target} mm, torch threads {torch.get_num_threads()}")
    for name, t in (("nnU-Net (ResampleToSpacingd)", ours), ("MONAI Spacingd", monai)):
        for key in ("image", "label"):
            sec, out = best_time(lambda: t[key]({key: data[key]})[key], a.repeats)
            print(f"{name:30s} {key:5s}: {sec:7.3f} s  -> shape {tuple(out.shape[1:])}")
    print("(the grids differ: Spacingd keeps the first voxel centre and rounds the size its way, nnU-Net maps the "
          "volume's edges onto each other, so the outputs are not compared voxel by voxel)")

if __name__ == "__main__":
    main()
