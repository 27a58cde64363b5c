"""Procedural cardiac MRI for ``dataset=demo3d_mri``: closer to real multi-class MRI than ``demo3d``.

The heart geometry of :func:`uaseg.data.datasets.synth.heart_labels` (seven structures, MM-WHS class
order), zoomed out so the structures are small, with MRI-like intensities instead of HU: arbitrary
units with no fixed scale, the four cavities and both vessels nearly equally bright (their means differ
by less than the noise), a myocardium little darker than the tissue around it, a smooth multiplicative
bias field (coil sensitivity), partial-volume blur and Rician noise (the magnitude of complex
Gaussian noise). Telling the cavities apart then needs their shape and position, as on real MRI.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from uaseg.data.datasets.synth import _rng, _smooth_noise, heart_labels

#: the heart is drawn on coordinates scaled by this: its structures fill less of the volume
MRI_ZOOM = 1.1
#: blood pools (LV, RV, LA, RA, AO, PA): their mean signals differ by at most this fraction of the blood
#: signal (the noise's std is 10-16 % of it)
BLOOD_SPREAD = 0.06


def heart_mri_volume(seed: int, index: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """One heart-like MRI volume: ``image`` float32 ``(size,)*3`` (arbitrary units, >= 0) and ``label``
    uint8 (1 LV, 2 RV, 3 LA, 4 RA, 5 Myo, 6 AO, 7 PA)."""
    rng = _rng(seed, index)
    label, body = heart_labels(rng, size, zoom=MRI_ZOOM)
    shape = (size,) * 3
    blood = rng.uniform(400, 600)
    tissue = blood * rng.uniform(0.42, 0.5)
    image = np.where(body, tissue, 0.04 * blood) + 0.05 * blood * _smooth_noise(rng, shape, 3)
    offsets = rng.uniform(-BLOOD_SPREAD / 2, BLOOD_SPREAD / 2, 6)
    for cls, off in zip((1, 2, 3, 4, 6, 7), offsets):
        image[label == cls] = blood * (1 + off)
    image[label == 5] = tissue * rng.uniform(0.8, 0.9)  # myocardium: a little darker than its surroundings
    image = ndi.gaussian_filter(image, rng.uniform(0.7, 1.1))  # partial volume
    image *= np.exp(0.2 * _smooth_noise(rng, shape, size / 4))  # coil bias field, about +-20 %
    sigma = blood * rng.uniform(0.10, 0.16)
    real, imag = image + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape)
    return np.hypot(real, imag).astype(np.float32), label
