"""Procedural abdomen-like CT for ``dataset=demo3d_abdomen``: a built-in 3-D dataset of another
character than the heart of :func:`uaseg.data.datasets.synth.heart_volume`.

* **Anisotropic**: thick slices. A volume is ``(size, size, size // 2)`` voxels, axes ``(x, y, z)``
  (x the patient's left-right, y anterior-posterior, z cranio-caudal), and a voxel is
  :data:`ABDOMEN_SPACING` = 3 in-plane voxels deep. The anatomy is drawn on an isotropic grid three
  times finer in z and each output slice averages three thin slices (slice thickness), so thin
  structures that leave the slice plane lose contrast (partial volume); the label is the centre
  thin slice's, as when a rater contours the middle of a thick slice.
* **Thin and small structures**: ureters (a couple of voxels wide at every ``size``), a thin,
  curved, lobulated pancreas, small hypodense liver lesions (sometimes faint).
* **Intensity overlap**: liver and spleen take nearly the same HU (told apart by position and
  shape only); the pancreas has the HU of the bowel-like soft tissue that surrounds it, and the
  splenic vein runs along its back; unlabelled gonadal veins run beside the ureters.

A pure function of ``(seed, index, size)``, like the other generators.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from uaseg.data.datasets.synth import _rng, _smooth_noise

#: foreground classes, label order 1..6
ABDOMEN_CLASSES = ("liver", "spleen", "kidney", "pancreas", "ureter", "lesion")
#: voxel size (x, y, z) in units of the in-plane voxel: slices three times thicker than the pixel
ABDOMEN_SPACING = (1.0, 1.0, 3.0)
_THICK = 3  # thin slices per output slice (= ABDOMEN_SPACING[2])


def abdomen_shape(size: int) -> tuple[int, int, int]:
    """Array shape of a volume of in-plane side ``size``: z has half as many (thick) slices."""
    return (size, size, max(size // 2, 1))


def abdomen_volume(seed: int, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One abdomen-like portal-venous CT volume.

    Returns ``image`` int16 ``(size, size, size // 2)`` in HU and ``label`` uint8 of the same shape
    with :data:`ABDOMEN_CLASSES` order (1 liver, 2 spleen, 3 kidney (both), 4 pancreas,
    5 ureter (both), 6 lesion (in the liver); a case has a lesion in most cases, not all).
    """
    rng = _rng(seed, index)
    nx, ny, nz = abdomen_shape(size)
    nzt = nz * _THICK
    d = 2.0 / (size - 1)  # voxel side in the normalised in-plane frame [-1, 1]
    # isotropic thin-slice grid; z spans about [-1.5, 1.5] (head +z), centred
    xs = np.linspace(-1, 1, nx, dtype=np.float32)
    zs = ((np.arange(nzt, dtype=np.float32) - (nzt - 1) / 2) * d).astype(np.float32)
    # small random pose: in-plane rotation and scale (patients differ; no flips: liver is on the right)
    a = rng.normal(0, 0.06)
    sc = rng.uniform(0.93, 1.07, 2)
    X0, Y0 = np.meshgrid(xs, xs, indexing="ij")
    X2 = (np.cos(a) * X0 - np.sin(a) * Y0) / sc[0]
    Y2 = (np.sin(a) * X0 + np.cos(a) * Y0) / sc[1]
    x = X2[:, :, None]
    y = Y2[:, :, None]
    z = zs[None, None, :] + rng.normal(0, 0.08)
    shape = (nx, ny, nzt)

    # one smooth field bends every organ outline (computed coarse, then zoomed: fast)
    coarse = tuple(max(4, n // 4) for n in shape)
    wobble = ndi.zoom(_smooth_noise(rng, coarse, 1.5), [n / c for n, c in zip(shape, coarse)], order=1)
    wobble = wobble[: shape[0], : shape[1], : shape[2]]

    def ellipsoid(c, r):
        e = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
        return e * (1 + 0.18 * wobble)

    def jit(v, s):
        return np.asarray(v, np.float32) + rng.normal(0, s, len(v)).astype(np.float32)

    # ---------------------------------------------------------------- body wall, spine, vessels
    body = (x / 0.92) ** 2 + (y / 0.72) ** 2
    inner = (x / 0.84) ** 2 + ((y + 0.01) / 0.64) ** 2  # inside the muscle wall
    wall = (body < 1) & (inner >= (0.93) ** -2)
    abdomen = np.broadcast_to(inner < 0.93**-2, shape)
    spine = np.broadcast_to((x / 0.13) ** 2 + ((y - 0.48) / 0.12) ** 2 < 1, shape)
    psoas_r = np.clip((0.2 - z) * 0.1, 0, 0.09)  # psoas muscles widen caudally
    psoas = ((np.abs(x) - 0.19) ** 2 + (y - 0.45) ** 2) < psoas_r**2
    aorta = np.broadcast_to((x - 0.07) ** 2 + (y - 0.28) ** 2 < 0.058**2, shape)
    ivc = ((x + 0.13) / 0.075) ** 2 + ((y - 0.26) / 0.055) ** 2 < 1
    ivc = np.broadcast_to(ivc, shape)

    # ---------------------------------------------------------------- organs
    label = np.zeros(shape, np.uint8)
    liver_c = jit([-0.38, -0.02, 0.85], 0.04)
    liver = ellipsoid(liver_c, jit([0.44, 0.52, 0.62], 0.04)) < 1
    left_lobe = ellipsoid(jit([0.12, -0.32, 1.0], 0.04), jit([0.34, 0.18, 0.32], 0.03)) < 1
    liver = (liver | left_lobe) & abdomen
    spleen_c = jit([0.58, 0.28, 0.8], 0.04)
    spleen = ellipsoid(spleen_c, jit([0.2, 0.3, 0.36], 0.03)) < 1
    # crescent: the spleen wraps around the stomach side
    spleen &= ellipsoid(spleen_c + np.float32([-0.2, -0.08, 0]), [0.12, 0.2, 0.4]) >= 1
    spleen &= abdomen

    kid = np.zeros(shape, bool)
    hilum = np.zeros(shape, bool)
    hila = []
    for side, zc in ((-1, -0.05), (1, 0.1)):  # the right kidney sits lower
        c = jit([side * 0.45, 0.36, zc], 0.03)
        r = jit([0.15, 0.12, 0.32], 0.015)
        k = ellipsoid(c, r) < 1
        h = np.float32([c[0] - side * 0.15, c[1] - 0.02, c[2]])  # medial notch: renal sinus
        sinus = ((x - h[0]) / 0.09) ** 2 + ((y - h[1]) / 0.06) ** 2 + ((z - h[2]) / 0.12) ** 2 < 1
        kid |= k & ~sinus
        hilum |= k & sinus
        hila.append(h)

    # pancreas: a curved lobulated band from the head (right, near the duodenum) to the tail at the
    # splenic hilum; thick in the head, thin in the tail
    t = np.linspace(0, 1, 24, dtype=np.float32)
    head, tail = jit([-0.14, 0.02, 0.12], 0.03), jit([0.48, 0.14, 0.42], 0.03)
    mid = (head + tail) / 2 + np.float32([0, -0.14 + rng.normal(0, 0.03), 0])
    curve = ((1 - t) ** 2)[:, None] * head + (2 * t * (1 - t))[:, None] * mid + (t**2)[:, None] * tail
    radius = (0.1 + rng.normal(0, 0.008)) * (1 - 0.45 * t)
    pdist = np.full(shape, np.inf, np.float32)
    vdist = np.full(shape, np.inf, np.float32)
    for p, rp in zip(curve, radius):
        dd = ((x - p[0]) ** 2 + (y - p[1]) ** 2 + ((z - p[2]) / 1.4) ** 2) / rp**2
        np.minimum(pdist, dd, out=pdist)
        q = p + np.float32([0, rp + 0.035, 0])  # splenic vein along the back of the gland
        np.minimum(vdist, (x - q[0]) ** 2 + (y - q[1]) ** 2 + (z - q[2]) ** 2, out=vdist)
    pancreas = (pdist * (1 + 0.25 * wobble) < 1) & abdomen
    splenic_vein = (vdist < 0.03**2) & (x > -0.05)

    # ureters: from each renal pelvis down to the pelvis, a couple of voxels wide at any size
    ureter = np.zeros(shape, bool)
    gonadal = np.zeros(shape, bool)
    zz = z[0, 0]
    for side, h in zip((-1, 1), hila):
        r_u = rng.uniform(1.0, 1.4) * d
        drift = rng.normal(0, 0.03)
        below = zz < h[2]
        s = np.clip(h[2] - zz, 0, None)
        cx = h[0] - side * (0.06 * s - 0.01 * s**2) + drift * np.sin(2.5 * s)
        cy = h[1] - 0.08 * s + 0.04 * s**2
        ureter |= (((x - cx) ** 2 + (y - cy) ** 2) < r_u**2) & below
        if rng.random() < 0.6:  # an unlabelled gonadal vein a little in front of it: a look-alike
            gx, gy = cx + side * rng.uniform(0.05, 0.1), cy - rng.uniform(0.06, 0.1)
            gonadal |= (((x - gx) ** 2 + (y - gy) ** 2) < (1.1 * d) ** 2) & (zz < h[2] - 0.25)

    # small lesions in the liver: most cases have one to three, some faint
    lesions = np.zeros(shape, bool)
    lesion_hu = np.zeros(shape, np.float32)
    n_les = rng.choice([0, 1, 2, 3], p=[0.1, 0.4, 0.3, 0.2])
    lx, ly, lz = np.nonzero(liver[:, :, ::2])
    for _ in range(n_les if lx.size else 0):
        j = rng.integers(lx.size)
        c = (xs[lx[j]], xs[ly[j]], zs[2 * lz[j]])
        r = rng.uniform(1.6, 3.5) * d
        ball = ((X0[:, :, None] - c[0]) ** 2 + (Y0[:, :, None] - c[1]) ** 2 + (zs[None, None] - c[2]) ** 2) < r**2
        ball &= liver
        lesions |= ball
        lesion_hu[ball] = -rng.uniform(15, 60)  # hypodense; the faint ones are hard to see

    label[liver] = 1
    label[spleen] = 2
    label[kid] = 3
    label[pancreas & (label == 0)] = 4
    label[ureter & ~kid] = 5
    label[lesions] = 6

    # ---------------------------------------------------------------- intensities (HU)
    tex = _smooth_noise(rng, shape, 1.2)
    half = tuple(max(4, n // 2) for n in shape)  # loops a few voxels across
    bowel_field = _smooth_noise(rng, half, 1.6)
    bowel_field = ndi.zoom(bowel_field, [n / c for n, c in zip(shape, half)], order=1)[: shape[0], : shape[1], : shape[2]]
    image = np.full(shape, -1000.0, np.float32)
    image[np.broadcast_to(body < 1, shape)] = -100  # subcutaneous fat
    image[np.broadcast_to(wall, shape)] = 50
    # bowel-like filling: loops of soft tissue (the pancreas's HU), mesenteric fat, gas pockets
    soft = rng.uniform(60, 95)
    fill = np.where(bowel_field > 0.1, soft + 12 * tex, -90 + 10 * tex)
    fill = np.where(bowel_field > 2.0, -800, fill)
    image = np.where(abdomen, fill, image)
    image[psoas] = 55
    image[spine] = 450 + 80 * tex[spine]
    image[aorta] = rng.uniform(170, 210)
    image[ivc] = rng.uniform(120, 150)
    image[hilum] = -40  # renal sinus fat
    base = rng.uniform(95, 120)
    hu = {
        1: base,
        2: base + rng.normal(4, 6),  # spleen: nearly the liver's HU
        3: rng.uniform(170, 205),
        4: soft + rng.normal(8, 6),  # pancreas: the bowel's
        5: rng.uniform(10, 45),  # unopacified ureter, in fat
    }
    for cls, v in hu.items():
        m = label == cls
        image[m] = v + 10 * tex[m]
    # kidney medulla: darker pyramids inside the cortex
    med = kid & (bowel_field < -0.6)
    image[med] -= 35
    image[splenic_vein & (label == 0)] = rng.uniform(120, 160)
    image[gonadal & (label == 0)] = rng.uniform(25, 70)
    m = label == 6
    image[m] = base + lesion_hu[m] + 8 * tex[m]

    # thick slices: average the three thin slices of each, then the scanner's in-plane blur and noise
    image = image.reshape(nx, ny, nz, _THICK).mean(-1)
    label = np.ascontiguousarray(label[:, :, _THICK // 2 :: _THICK])
    image = ndi.gaussian_filter(image, (rng.uniform(0.5, 0.9),) * 2 + (0.3,))
    image += rng.normal(0, rng.uniform(12, 22), image.shape).astype(np.float32)
    return np.clip(image, -1024, 3071).astype(np.int16), label
