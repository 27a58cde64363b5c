"""Tiny datasets written in nnU-Net's raw layout and the Medical Segmentation Decathlon layout.

Every case is a small volume (or image) with two foreground boxes (classes 1 and 2) whose
intensities differ per class and channel, so a U-Net learns something in a few steps and a mix-up of
channels or classes shows. Spacings differ per case (and one case of ``make_nnunet_3d`` has its first
two voxel axes swapped in the affine) so the fingerprint's median spacing is not trivial.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SHAPE = (16, 16, 16)
#: voxel spacing of each case of make_nnunet_3d, in the file's voxel-axis order
CT_SPACINGS = ((1.2, 1.0, 2.0), (1.2, 1.0, 2.5), (1.0, 1.2, 2.0), (1.0, 1.0, 3.0), (0.8, 1.0, 2.0))
#: the case whose affine swaps its first two voxel axes (voxel i -> world y, voxel j -> world x): in
#: RAS order its spacing is (1.2, 1.0, 2.0), so the median x spacing is 1.2 only if that is honoured
SWAPPED = 2


def boxes(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """uint8 label: class 1 and class 2 boxes at seeded positions."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    n = len(shape)
    for value, size in ((1, 6), (2, 4)):
        start = [int(rng.integers(1, s - size - 1)) for s in shape]
        lab[tuple(slice(a, a + size) for a in start[:n])] = value
    return lab


def image_for(lab: np.ndarray, channel: int, seed: int, base=(-900.0, 60.0, 200.0)) -> np.ndarray:
    """Intensities ``base[class] * (1 + channel)`` plus noise; int16 (CT-like) for channel 0 of CT data."""
    rng = np.random.default_rng(1000 * seed + channel)
    img = np.asarray(base, dtype=np.float64)[lab] * (1 + channel) + rng.normal(0.0, 20.0, lab.shape)
    return img


def affine_for(spacing, swapped: bool = False) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    if swapped:  # voxel axis 0 runs along world y, axis 1 along world x
        aff[:3, :3] = np.array([[0.0, spacing[1], 0.0], [spacing[0], 0.0, 0.0], [0.0, 0.0, spacing[2]]])
    aff[:3, 3] = (-10.0, 5.0, 20.0)
    return aff


def save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


# ------------------------------------------------------------------------------------------ nnU-Net
def make_nnunet_3d(root: Path, channels=("CT",), n_cases: int = 5, spacings=CT_SPACINGS, swapped: int | None = SWAPPED,
                   n_test: int = 1, labels=None, sparse: bool = False) -> Path:
    """``root/dataset.json``, ``imagesTr/case_NNN_000C.nii.gz``, ``labelsTr/case_NNN.nii.gz`` and
    ``n_test`` unlabelled cases in ``imagesTs/``. Channel 0 of a CT dataset is int16 (HU).
    ``sparse``: nnU-Net's ``"ignore": 3`` in ``labels``, the last 4 slices of every label ignored, and
    case 1's label 0.5 mm off its image's origin and 1 degree off its direction."""
    root = Path(root)
    labels = labels or {"background": 0, "liver": 1, "tumour": 2, **({"ignore": 3} if sparse else {})}
    for i in range(n_cases + n_test):
        cid = f"case_{i:03d}"
        lab = boxes(seed=i)
        aff = affine_for(spacings[i % len(spacings)], swapped=i == swapped)
        folder = "imagesTr" if i < n_cases else "imagesTs"
        for c, name in enumerate(channels):
            img = image_for(lab, c, i)
            img = img.astype(np.int16) if name.lower() == "ct" else img.astype(np.float32)
            save_nifti(img, aff, root / folder / f"{cid}_{c:04d}.nii.gz")
        if sparse:
            lab[..., -4:] = 3
            if i == 1:
                a = np.deg2rad(1.0)
                rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
                aff = aff.copy()
                aff[:3, :3] = rot @ aff[:3, :3]
                aff[:3, 3] += 0.5
        if i < n_cases:
            save_nifti(lab, aff, root / "labelsTr" / f"{cid}.nii.gz")
    write_json(root / "dataset.json", {
        "channel_names": {str(c): n for c, n in enumerate(channels)}, "labels": labels,
        "numTraining": n_cases, "file_ending": ".nii.gz", "name": root.name})
    return root


def make_nnunet_2d(root: Path, n_cases: int = 5, size=(24, 20), n_test: int = 1, channels: str = "gray",
                   ignore: bool = False) -> Path:
    """2-D nnU-Net dataset: 8-bit grayscale ``imagesTr/img_NNN_0000.png`` (channel ``"gray"``: z-score)
    and ``labelsTr/img_NNN.png`` (mode L, values 0/1/2). ``size`` is (width, height) like PIL.
    ``channels="rgb"``: one RGB ``img_NNN_0000.png`` per case for ``channel_names`` R, G, B (nnU-Net's
    natural-image convention; channel c is :func:`image_for` channel c); ``"rgb-split"``: the same
    three channels as three grayscale files ``_0000`` .. ``_0002``. ``ignore``: ``labels`` gets
    ``"ignore": 3`` and every label its first 6 rows (and a 3x3 block of case 0's lumen) set to 3."""
    from PIL import Image

    root = Path(root)
    n_ch = 1 if channels == "gray" else 3
    for i in range(n_cases + n_test):
        w, h = size[0] + 4 * (i % 2), size[1]
        lab = boxes((h, w), seed=i)
        base = (40.0, 140.0, 220.0) if n_ch == 1 else (30.0, 60.0, 80.0)
        img = np.stack([np.clip(image_for(lab, c, i, base=base), 0, 255).astype(np.uint8) for c in range(n_ch)], axis=-1)
        folder = "imagesTr" if i < n_cases else "imagesTs"
        (root / folder).mkdir(parents=True, exist_ok=True)
        if channels == "rgb":
            Image.fromarray(img, "RGB").save(root / folder / f"img_{i:03d}_0000.png")
        else:
            for c in range(n_ch):
                Image.fromarray(img[..., c], "L").save(root / folder / f"img_{i:03d}_{c:04d}.png")
        if ignore:
            lab[:6] = 3
            if i == 0:
                y, x = np.argwhere(lab == 2)[0]
                lab[y:y + 3, x:x + 3] = 3
        if i < n_cases:
            (root / "labelsTr").mkdir(parents=True, exist_ok=True)
            Image.fromarray(lab, "L").save(root / "labelsTr" / f"img_{i:03d}.png")
    names = {"0": "gray"} if channels == "gray" else {"0": "R", "1": "G", "2": "B"}
    labels = {"background": 0, "gland": 1, "lumen": 2, **({"ignore": 3} if ignore else {})}
    write_json(root / "dataset.json", {
        "channel_names": names, "labels": labels, "numTraining": n_cases, "file_ending": ".png"})
    return root


# ---------------------------------------------------------------------------------------- Decathlon
def make_decathlon(root: Path, modalities=("FLAIR", "T1w"), n_cases: int = 5, n_test: int = 1) -> Path:
    """``root/dataset.json`` (training list with ``./`` paths, test list), 4-D ``imagesTr/BRATS_NNN.nii.gz``
    with the modalities in the last axis, 3-D ``labelsTr/BRATS_NNN.nii.gz``, plus a macOS ``._`` copy
    the training list does not name."""
    root = Path(root)
    training, test = [], []
    for i in range(n_cases + n_test):
        name = f"BRATS_{i:03d}.nii.gz"
        lab = boxes(seed=10 + i)
        img = np.stack([image_for(lab, c, i, base=(100.0, 300.0, 500.0)) for c in range(len(modalities))], axis=-1)
        aff = affine_for((1.0, 1.0, 1.0 + 0.25 * (i % 3)))
        if i < n_cases:
            save_nifti(img.astype(np.float32), aff, root / "imagesTr" / name)
            save_nifti(lab, aff, root / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            save_nifti(img.astype(np.float32), aff, root / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")
    (root / "imagesTr" / "._BRATS_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    write_json(root / "dataset.json", {
        "name": "BRATS", "tensorImageSize": "4D" if len(modalities) > 1 else "3D",
        "modality": {str(c): m for c, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "edema", "2": "enhancing tumour"},
        "numTraining": n_cases, "numTest": n_test, "training": training, "test": test})
    return root


# ---------------------------------------------------------------------- nnU-Net planning cases
#: in-plane and slice spacing of each case of make_aniso_ct (median 1 x 1 x 5: anisotropic)
ANISO_SPACINGS = ((1.0, 1.0, 5.0), (0.9, 0.9, 4.5), (1.1, 1.1, 5.5), (1.0, 1.0, 4.0), (1.0, 1.0, 6.0))
ANISO_SHAPE = (24, 24, 6)


def slab_boxes(shape=ANISO_SHAPE, seed: int = 0) -> np.ndarray:
    """uint8 label for thin volumes: a class-1 box through 4 slices with a class-2 box inside it."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    x, y = (int(v) for v in rng.integers(2, shape[0] - 12, 2))
    lab[x:x + 10, y:y + 10, 1:5] = 1
    lab[x + 3:x + 7, y + 3:y + 7, 2:4] = 2
    return lab


def make_aniso_ct(root: Path, n_test: int = 1) -> Path:
    """Anisotropic CT in nnU-Net's layout: 24 x 24 x 6 voxels at ``ANISO_SPACINGS`` (int16 HU)."""
    root = Path(root)
    for i, spacing in enumerate(ANISO_SPACINGS[:5] + ANISO_SPACINGS[:n_test]):
        cid = f"ct_{i:03d}"
        lab = slab_boxes(seed=i)
        folder = "imagesTr" if i < 5 else "imagesTs"
        save_nifti(image_for(lab, 0, i).astype(np.int16), affine_for(spacing), root / folder / f"{cid}_0000.nii.gz")
        if i < 5:
            save_nifti(lab, affine_for(spacing), root / "labelsTr" / f"{cid}.nii.gz")
    write_json(root / "dataset.json", {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
                                       "numTraining": 5, "file_ending": ".nii.gz"})
    return root


MR_SHAPE = (20, 20, 16)


def head_mask(shape=MR_SHAPE, seed: int = 0) -> np.ndarray:
    """The non-zero region of a zero-background MR case: a box without one corner column, shifted per
    case (so its bounding box is the box, and the cut corner is zero inside it)."""
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, bool)
    x, y, z = (int(v) for v in rng.integers(1, 4, 3))
    m[x:x + 12, y:y + 10, z:z + 9] = True
    m[x:x + 3, y:y + 3, :] = False
    return m


def make_zero_background_mr(root: Path, n_test: int = 1) -> Path:
    """BraTS-like two-channel MR (T1, T2): intensities only inside ``head_mask`` (zero elsewhere), one
    zero voxel inside it (a hole that nnU-Net's mask fills), two foreground classes inside the head."""
    root = Path(root)
    for i in range(5 + n_test):
        cid = f"mr_{i:03d}"
        head = head_mask(seed=i)
        lab = np.zeros(MR_SHAPE, np.uint8)
        x, y, z = (int(np.flatnonzero(head.any(axis=a))[0]) for a in ((1, 2), (0, 2), (0, 1)))
        lab[x + 4:x + 9, y + 4:y + 9, z + 2:z + 7] = 1
        lab[x + 5:x + 7, y + 5:y + 7, z + 3:z + 5] = 2
        folder = "imagesTr" if i < 5 else "imagesTs"
        aff = affine_for((1.0, 1.0, 1.0))
        for c in range(2):
            img = np.where(head, image_for(lab, c, i, base=(300.0, 600.0, 900.0)), 0.0)
            img[x + 10, y + 8, z + 4] = 0.0  # a hole inside the head
            save_nifti(img.astype(np.float32), aff, root / folder / f"{cid}_{c:04d}.nii.gz")
        if i < 5:
            save_nifti(lab, aff, root / "labelsTr" / f"{cid}.nii.gz")
    write_json(root / "dataset.json", {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1,
                                       "core": 2}, "numTraining": 5, "file_ending": ".nii.gz"})
    return root
