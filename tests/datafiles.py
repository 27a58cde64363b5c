"""Tiny datasets written in the exact released formats (MM-WHS NIfTI, GlaS BMP + Grade.csv).

Shared by tests/data/test_data_mmwhs.py and tests/data/test_data_glas.py (and usable for end-to-end runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MMWHS_VALUES = (500, 600, 420, 550, 205, 820, 850)
SPACING = (0.44, 0.44, 0.625)
SHAPE = (40, 40, 32)


def mmwhs_label(shape=SHAPE, seed: int = 0, extra_value: int | None = None) -> np.ndarray:
    """Seven boxes, one per structure, with the released label values (int16 like the release).

    Each structure has its own size (8 x 8 x (20 - 2i) voxels: 1280, 1152, ..., 512 in the order of
    ``MMWHS_VALUES``), so a mix-up of the value -> class mapping changes the per-class voxel counts."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int16)
    for i, v in enumerate(MMWHS_VALUES):
        x0 = 3 + (i % 3) * 11 + int(rng.integers(0, 2))
        y0 = 3 + (i // 3) * 11
        lab[x0 : x0 + 8, y0 : y0 + 8, 6 : 26 - 2 * i] = v
    if extra_value is not None:
        lab[1:3, 1:3, 1:3] = extra_value
    return lab


def mmwhs_image(lab: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(-800, 50, lab.shape)
    img[lab > 0] = 50 + lab[lab > 0] * 0.3  # contrast-enhanced structures, HU-like
    return img.astype(np.int16)


def affine_for(spacing=SPACING, flip_axis: int | None = None, shape=SHAPE) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (-20.0, -30.0, 10.0)
    if flip_axis is not None:
        aff[flip_axis, flip_axis] *= -1
        aff[flip_axis, 3] += spacing[flip_axis] * (shape[flip_axis] - 1)
    return aff


def save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def make_mmwhs(
    root: Path,
    ids=(1001, 1002, 1003, 1004, 1005, 1010),
    with_421: int | None = 1002,
    flipped: int | None = 1003,
    plain_nii: int | None = 1004,
    shape=SHAPE,
    with_test: bool = True,
) -> Path:
    """``root/ct_train/ct_train_<id>_{image,label}.nii.gz`` (+ one ``.nii``, one flipped axis,
    one label with the release's stray 421) and an unlabelled ``ct_test/``."""
    folder = Path(root) / "ct_train"
    folder.mkdir(parents=True, exist_ok=True)
    for k, cid in enumerate(ids):
        lab = mmwhs_label(shape, seed=k, extra_value=421 if cid == with_421 else None)
        img = mmwhs_image(lab, seed=k)
        aff = affine_for(flip_axis=0 if cid == flipped else None, shape=shape)
        ext = ".nii" if cid == plain_nii else ".nii.gz"
        save_nifti(img, aff, folder / f"ct_train_{cid}_image{ext}")
        save_nifti(lab, aff, folder / f"ct_train_{cid}_label{ext}")
    if with_test:
        (Path(root) / "ct_test").mkdir(exist_ok=True)
        save_nifti(mmwhs_image(mmwhs_label(shape)), affine_for(), Path(root) / "ct_test" / "ct_test_2001_image.nii.gz")
    return Path(root)


# ---------------------------------------------------------------------------------------------- GlaS
GRADE_HEADER = "name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"


def glas_pair(size=(60, 44), seed: int = 0, n_glands: int = 3):
    """(RGB uint8 image HxWx3, uint8 instance map HxW) with ``n_glands`` numbered ellipses.
    ``size`` is (width, height) like PIL."""
    w, h = size
    rng = np.random.default_rng(seed)
    inst = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for i in range(1, n_glands + 1):
        cy, cx = rng.integers(5, h - 5), rng.integers(5, w - 5)
        ry, rx = rng.integers(3, 7), rng.integers(3, 9)
        inst[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
    img = rng.integers(150, 230, (h, w, 3)).astype(np.uint8)
    img[inst > 0] = (120, 60, 140)
    return img, inst


def make_glas(
    root: Path,
    n_train=(1, 2, 3, 5, 10),
    n_testA=(1, 2, 3),
    n_testB=(1, 2),
    small: str | None = "train_3",
    grade_csv: bool = True,
    size=(60, 44),
) -> Path:
    """Warwick_QU_Dataset-style folder: ``train_N.bmp``/``train_N_anno.bmp``, ``testA_N``, ``testB_N``
    (24-bit RGB BMP, 8-bit ``L`` instance annotations) and ``Grade.csv`` with the released header,
    leading spaces and old-Mac CR-only line endings. ``small`` is written smaller than the tests' patch."""
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = [GRADE_HEADER]
    k = 0
    for part, ns in (("testA", n_testA), ("testB", n_testB), ("train", n_train)):
        for n in ns:
            name = f"{part}_{n}"
            sz = (20, 14) if name == small else (size[0] + (k % 3) * 4, size[1] + (k % 2) * 2)
            img, inst = glas_pair(sz, seed=k)
            Image.fromarray(img, "RGB").save(root / f"{name}.bmp")
            Image.fromarray(inst, "L").save(root / f"{name}_anno.bmp")
            grade = "malignant" if k % 2 else "benign"
            rows.append(f" {name}, {k // 2 + 1}, {grade}, {'adenomatous' if k % 2 else 'healthy'}")
            k += 1
    if grade_csv:
        (root / "Grade.csv").write_bytes(("\r".join(rows) + "\r").encode())
    return root


# ------------------------------------------------------------------------------------ end to end
def run_train(dataset: str, root: Path, work: Path, patch: str, *extra: str, timeout: int = 1800):
    """``python train.py dataset=<dataset> dataset.root=<root>`` for 2 training steps + test, as a
    subprocess in ``work`` (run folder ``work/run``). Returns the ``CompletedProcess``."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        str(repo / "train.py"),
        f"dataset={dataset}",
        f"dataset.root={root}",
        f"dataset.patch_size={patch}",
        "dataset.batch_size=2",
        "dataset.samples_per_image=1",
        "dataset.num_workers=0",
        "model=unet_small",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=3",
        "trainer.accelerator=cpu",
        "eval.bootstrap=20",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={work / 'run'}",
        f"paths.cache_dir={work / 'cache'}",
        *extra,
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
