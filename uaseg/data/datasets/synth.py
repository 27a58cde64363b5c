"""Procedural images for the built-in demo datasets.

Both generators are pure functions of ``(seed, index, size)`` so a dataset is reproducible without
shipping any data. They are built to be *ambiguous in places*: faint glands, gland-like holes in
the stroma, touching glands, blurred low-contrast boundaries between adjacent heart cavities.
A U-Net then errs mostly where a radiologist would hesitate too, which is what selective
segmentation needs (a dataset a net gets 100% right has nothing to refer).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: MM-WHS class order used by the paper's reference code.
HEART_CLASSES = ("LV", "RV", "LA", "RA", "Myo", "AO", "PA")


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std band-limited noise (texture, deformation fields)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


# --------------------------------------------------------------------------- 2D glands
def gland_image(seed: int, index: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One gland-like histology tile.

    Returns ``image`` float32 ``(3, size, size)`` in [0, 1] (RGB, channel first) and ``label``
    uint8 ``(size, size)`` with 1 = gland (epithelium and lumen), 0 = stroma.
    """
    rng = _rng(seed, index)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    label = np.zeros((size, size), np.uint8)
    epithelium = np.zeros((size, size), np.float32)
    lumen = np.zeros((size, size), np.float32)
    faint = np.zeros((size, size), np.float32)

    n_glands = rng.integers(3, 8)
    centres: list[tuple[float, float, float]] = []
    for _ in range(n_glands * 4):  # rejection sampling; touching allowed, overlap limited
        if len(centres) == n_glands:
            break
        r = rng.uniform(0.07, 0.16) * size
        cy, cx = rng.uniform(r * 0.6, size - r * 0.6, size=2)
        if any(np.hypot(cy - y, cx - x) < 0.85 * (r + q) for y, x, q in centres):
            continue
        centres.append((cy, cx, r))
        # irregular outline: radius modulated by a few random Fourier modes of the angle
        theta = np.arctan2(yy - cy, xx - cx)
        dist = np.hypot(yy - cy, xx - cx)
        k = np.arange(2, 6)
        amp = rng.uniform(0.0, 0.12, size=k.size) / k**0.5
        phase = rng.uniform(0, 2 * np.pi, size=k.size)
        radius = r * (1 + np.tensordot(amp, np.cos(np.multiply.outer(k, theta) + phase[:, None, None]), 1))
        inside = dist < radius
        wall = rng.uniform(0.25, 0.45)
        lum = dist < radius * (1 - wall)
        label[inside] = 1
        epithelium[inside & ~lum] = 1.0
        lumen[lum] = 1.0
        if rng.random() < 0.3:  # a faint, poorly stained gland: hard to tell from stroma
            faint[inside] = rng.uniform(0.7, 0.95)

    # gland-like distractors in the stroma: vessels / fat (white holes without epithelium)
    # some with a faint rim, like a tangentially cut gland
    holes = np.zeros((size, size), np.float32)
    rims = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(1, 5)):
        r = rng.uniform(0.02, 0.06) * size
        cy, cx = rng.uniform(0, size, size=2)
        dist = np.hypot(yy - cy, xx - cx)
        holes[dist < r] = 1.0
        if rng.random() < 0.5:
            rims[(dist >= r) & (dist < r * rng.uniform(1.2, 1.5))] = rng.uniform(0.2, 0.5)
    holes *= 1 - label
    rims *= 1 - label

    # nuclei: dark speckles, dense in epithelium, sparse in stroma
    nuclei_field = (rng.random((size, size)) < 0.04 + 0.25 * epithelium).astype(np.float32)
    nuclei = ndi.gaussian_filter(nuclei_field, 1.0) * 4
    texture = _smooth_noise(rng, (size, size), 3.0)

    # stain colours with per-image variation (haematoxylin purple, eosin pink, background white)
    hema = np.array([0.35, 0.20, 0.55]) + rng.normal(0, 0.06, 3)
    eosin = np.array([0.90, 0.55, 0.70]) + rng.normal(0, 0.06, 3)
    white = np.array([0.96, 0.93, 0.95])
    strength_h = np.clip(0.15 + 0.6 * (epithelium * (1 - faint) + rims) + 0.5 * nuclei, 0, 1)
    strength_e = np.clip(0.55 + 0.1 * texture - 0.5 * lumen - 0.6 * holes, 0, 1)
    emptiness = np.clip(lumen * (1 - 0.5 * faint) + holes, 0, 1)

    img = (
        white[:, None, None] * emptiness
        + eosin[:, None, None] * strength_e * (1 - emptiness)
        + (hema - eosin)[:, None, None] * strength_h * (1 - emptiness) * 0.8
    )
    img = ndi.gaussian_filter(img, sigma=(0, rng.uniform(0.6, 1.6), rng.uniform(0.6, 1.6)))
    img = img + rng.normal(0, rng.uniform(0.02, 0.06), img.shape)
    return np.clip(img, 0, 1).astype(np.float32), label


# --------------------------------------------------------------------------- 3D heart
def heart_volume(seed: int, index: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """One heart-like contrast CT volume.

    Returns ``image`` int16 ``(size, size, size)`` in HU and ``label`` uint8 with the MM-WHS
    class order (1 LV, 2 RV, 3 LA, 4 RA, 5 Myo, 6 AO, 7 PA). Cavities are bright and similar to
    each other, so the valve planes between atria and ventricles are low-contrast.
    """
    rng = _rng(seed, index)
    label, body = heart_labels(rng, size)
    # intensities (HU): lungs outside the mediastinum, soft tissue, bright blood pools
    image = np.where(body, 40.0, -850.0) + 30 * _smooth_noise(rng, (size,) * 3, 4)
    base = rng.uniform(260, 340)
    hu = {1: base + rng.normal(20, 10), 2: base - rng.normal(20, 10), 3: base + rng.normal(0, 15),
          4: base - rng.normal(30, 10), 5: rng.uniform(80, 130), 6: base + rng.normal(30, 10),
          7: base - rng.normal(10, 10)}
    for cls, value in hu.items():
        image[label == cls] = value + 10 * _smooth_noise(rng, (size,) * 3, 3)[label == cls]
    image = ndi.gaussian_filter(image, rng.uniform(0.8, 1.4))  # partial-volume blur
    image += rng.normal(0, rng.uniform(20, 40), image.shape)
    return np.clip(image, -1024, 3071).astype(np.int16), label


def heart_labels(rng: np.random.Generator, size: int, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The heart's geometry: ``label`` uint8 ``(size,)*3`` in MM-WHS class order and the ``body``
    mask; random pose, elastic displacement and per-structure jitter drawn from ``rng``."""
    grid = (np.mgrid[0:size, 0:size, 0:size].astype(np.float32) / (size - 1)) * 2 - 1  # (3, s, s, s)
    grid *= zoom  # > 1: the heart fills less of the volume (smaller structures)

    # random pose: small rotation + anisotropic scaling, plus a smooth elastic displacement
    angles = rng.normal(0, 0.15, 3)
    rot = _rotation(*angles) * rng.uniform(0.9, 1.1, 3)[:, None]
    coords = np.tensordot(rot, grid, axes=1)
    coords += 0.06 * np.stack([_smooth_noise(rng, (size,) * 3, size / 8) for _ in range(3)])
    x, y, z = coords

    def ellipsoid(c, r):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2

    def jitter(v, s=0.04):
        return np.asarray(v) + rng.normal(0, s, 3)

    lv_c, lv_r = jitter([0.15, -0.1, -0.2]), jitter([0.28, 0.24, 0.34], 0.03)
    rv_c, rv_r = jitter([-0.28, -0.05, -0.2]), jitter([0.22, 0.30, 0.32], 0.03)
    la_c, la_r = jitter([0.18, 0.05, 0.32]), jitter([0.22, 0.20, 0.18], 0.02)
    ra_c, ra_r = jitter([-0.25, 0.1, 0.3]), jitter([0.2, 0.22, 0.2], 0.02)
    lv = ellipsoid(lv_c, lv_r)
    myo_t = rng.uniform(1.35, 1.6)  # shell thickness as a ratio of the LV radius squared

    label = np.zeros((size,) * 3, np.uint8)
    label[lv < myo_t] = 5
    label[ellipsoid(rv_c, rv_r) < 1] = 2
    label[ellipsoid(la_c, la_r) < 1] = 3
    label[ellipsoid(ra_c, ra_r) < 1] = 4
    label[lv < 1] = 1
    label[_tube(x, y, z, start=jitter([0.05, -0.05, 0.1]), bend=rng.normal(0, 0.15, 2), r=rng.uniform(0.08, 0.11))] = 6
    label[_tube(x, y, z, start=jitter([-0.25, -0.25, 0.05]), bend=rng.normal(0, 0.15, 2), r=rng.uniform(0.07, 0.1))] = 7

    body = ellipsoid([0, 0, 0], [0.95, 0.8, 1.2]) < 1
    return label, body


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


def _tube(x, y, z, start, bend, r) -> np.ndarray:
    """A vessel rising along +z from ``start`` with a quadratic bend."""
    t = np.clip(z - start[2], 0, None)
    cx = start[0] + bend[0] * t**2
    cy = start[1] + bend[1] * t**2
    return (z > start[2]) & (z < 0.95) & ((x - cx) ** 2 + (y - cy) ** 2 < r**2)
