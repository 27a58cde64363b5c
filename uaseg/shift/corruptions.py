"""Deterministic test-time corruptions: the synthetic half of the shift testbed.

Every kind has five severities, each a fixed set of parameters (:data:`SEVERITIES`, the table in
docs/shift.md). What is random inside a kind (the bias field's coefficients, the motion's direction,
the spike's position, the sign of the gamma change, ...) is drawn from a generator seeded by
``(seed, kind, severity, case id)`` alone, so the same seed always gives the same corrupted case,
in any process and in any order of cases (:func:`case_seed`).

The MRI/CT artefacts come from TorchIO (``RandomNoise``, ``RandomBlur``, ``RandomBiasField``,
``RandomGamma``, ``RandomMotion``, ``RandomGhosting``, ``RandomSpike``, ``RandomAnisotropy``) with
their ranges collapsed to the severity's value; ``stain`` (colour jitter in the Ruifrok-Johnston
haematoxylin-eosin-DAB optical-density space, as Tellez et al. augment histology) and ``jpeg`` (PIL's
JPEG at a falling quality) are for 2-D RGB images and are written here (TorchIO has neither).

Units: each image is rescaled to [0, 1] by its own minimum and maximum, corrupted, clipped to [0, 1]
(a camera's or scanner's output range) and mapped back; so noise and ghost intensities are fractions
of the image's intensity range whatever its normalisation (HU window, z-score, RGB). Blur and
translations are in voxels. 2-D images are corrupted as TorchIO volumes one voxel deep.
"""

from __future__ import annotations

import hashlib
import io
from typing import Callable

import numpy as np
import torch

from uaseg.errors import ConfigError

SEVERITY_LEVELS = (1, 2, 3, 4, 5)

#: kind -> parameter -> one value per severity 1..5 (documented in docs/shift.md)
SEVERITIES: dict[str, dict[str, tuple]] = {
    "noise": {"std": (0.02, 0.04, 0.07, 0.10, 0.15)},                       # Gaussian, fraction of the range
    "blur": {"std_voxels": (0.5, 1.0, 1.5, 2.0, 3.0)},                      # Gaussian kernel per in-plane axis
    "bias": {"coefficient": (0.1, 0.2, 0.3, 0.4, 0.55)},                   # order-3 polynomial, |coefficients| <= c
    "gamma": {"log_gamma": (0.1, 0.2, 0.3, 0.45, 0.6)},                     # x ** exp(+-log_gamma), sign drawn
    "motion": {"degrees": (1.0, 2.0, 4.0, 6.0, 9.0), "translation_voxels": (1.0, 2.0, 4.0, 6.0, 9.0),
               "movements": (2, 2, 3, 3, 4)},
    "ghosting": {"ghosts": (2, 3, 4, 6, 8), "intensity": (0.15, 0.3, 0.45, 0.6, 0.8)},
    "spike": {"spikes": (1, 1, 1, 2, 2), "intensity": (0.05, 0.1, 0.2, 0.3, 0.5)},
    "anisotropy": {"downsampling": (1.5, 2.0, 3.0, 4.0, 6.0)},              # one axis, drawn, resampled back
    "stain": {"scale": (0.05, 0.1, 0.15, 0.25, 0.35), "shift": (0.02, 0.04, 0.06, 0.1, 0.14)},
    "jpeg": {"quality": (60, 40, 25, 15, 8)},
}
#: kinds for 2-D RGB images only (histology)
RGB_ONLY = ("stain", "jpeg")
KINDS = tuple(SEVERITIES)

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density, as scikit-image's rgb2hed
_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED = _HED / np.linalg.norm(_HED, axis=1, keepdims=True)
_HED_INV = np.linalg.inv(_HED)


def parameters(kind: str, severity: int) -> dict:
    """The parameters of ``kind`` at ``severity`` (1..5), as in :data:`SEVERITIES`."""
    check_kind(kind, severity)
    return {name: values[severity - 1] for name, values in SEVERITIES[kind].items()}


def check_kind(kind: str, severity: int, spatial_dims: int | None = None, channels: int | None = None,
               where: str = "eval.shift") -> None:
    """A :class:`ConfigError` naming ``where`` for an unknown kind or severity, or an RGB-only kind on
    other images (when the image's dimensions and channels are known)."""
    if kind not in SEVERITIES:
        raise ConfigError(f"{where}: unknown corruption {kind!r}; choose from {', '.join(KINDS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITY_LEVELS:
        raise ConfigError(f"{where}: severity {severity!r} of {kind}: expected an integer in 1..5")
    if kind in RGB_ONLY and spatial_dims is not None and (spatial_dims != 2 or channels != 3):
        raise ConfigError(f"{where}: the corruption {kind} is for 2-D RGB images (histology), not for "
                          f"{spatial_dims}-D images with {channels} channel(s)")


def case_seed(seed: int, kind: str, severity: int, case_id: str) -> int:
    """A 63-bit seed from ``(seed, kind, severity, case id)`` (SHA-256: the same in every process)."""
    text = f"{int(seed)}|{kind}|{int(severity)}|{case_id}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def corrupt(image, kind: str, severity: int, seed: int, case_id: str, spatial_dims: int):
    """``image`` (C, *spatial): numpy array or torch tensor, 2-D or 3-D) corrupted by ``kind`` at
    ``severity``; same type, shape and dtype. Deterministic in ``(seed, kind, severity, case_id)``."""
    check_kind(kind, severity, spatial_dims, int(image.shape[0]))
    is_tensor = isinstance(image, torch.Tensor)
    x = image.detach().cpu().float().numpy() if is_tensor else np.asarray(image, dtype=np.float32)
    if x.ndim != spatial_dims + 1:
        raise ValueError(f"expected an image (C, {'H, W' if spatial_dims == 2 else 'X, Y, Z'}), got shape {x.shape}")
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo if hi > lo else 1.0
    unit = (x - lo) / span
    s = case_seed(seed, kind, severity, case_id)
    p = parameters(kind, severity)
    if kind in _OWN:
        out = _OWN[kind](unit, p, np.random.default_rng(s))
    else:
        out = _torchio(unit, kind, p, s, spatial_dims)
    out = np.clip(out, 0.0, 1.0) * span + lo
    if is_tensor:
        return torch.as_tensor(out, dtype=image.dtype).to(image.device)
    return out.astype(np.asarray(image).dtype, copy=False)


def _torchio_transform(kind: str, p: dict, spatial_dims: int):
    import torchio as tio

    axes = (0, 1) if spatial_dims == 2 else (0, 1, 2)
    if kind == "noise":
        return tio.RandomNoise(mean=0.0, std=(p["std"], p["std"]))
    if kind == "blur":
        b = p["std_voxels"]
        return tio.RandomBlur(std=(b, b, b, b, 0.0, 0.0) if spatial_dims == 2 else (b, b))
    if kind == "bias":
        return tio.RandomBiasField(coefficients=p["coefficient"], order=3)
    if kind == "motion":
        return tio.RandomMotion(degrees=p["degrees"], translation=p["translation_voxels"],
                                num_transforms=int(p["movements"]))
    if kind == "ghosting":
        n = int(p["ghosts"])
        return tio.RandomGhosting(num_ghosts=(n, n), axes=axes, intensity=(p["intensity"], p["intensity"]))
    if kind == "spike":
        n = int(p["spikes"])
        return tio.RandomSpike(num_spikes=(n, n), intensity=(p["intensity"], p["intensity"]))
    if kind == "anisotropy":
        d = p["downsampling"]
        return tio.RandomAnisotropy(axes=axes, downsampling=(d, d))
    raise AssertionError(kind)


def _torchio(unit: np.ndarray, kind: str, p: dict, seed: int, spatial_dims: int) -> np.ndarray:
    """A TorchIO transform with its range collapsed to the severity, under a private torch generator
    state (the global one is restored afterwards, so training randomness is untouched)."""
    import torchio as tio

    vol = torch.from_numpy(np.ascontiguousarray(unit[..., None] if spatial_dims == 2 else unit)).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "gamma":  # a drawn direction: darker or brighter, same magnitude
            sign = 1.0 if torch.rand(()).item() < 0.5 else -1.0
            transform = tio.Gamma(gamma=float(np.exp(sign * p["log_gamma"])))
        else:
            transform = _torchio_transform(kind, p, spatial_dims)
        out = transform(tio.ScalarImage(tensor=vol)).data.numpy()
    return out[..., 0] if spatial_dims == 2 else out


def _stain(unit: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Stain jitter: optical density -> H, E, D concentrations, each scaled by ``1 + U(-scale, scale)``
    and shifted by ``U(-shift, shift)``, back to RGB (Tellez et al. 2018's HED augmentation)."""
    rgb = np.moveaxis(unit, 0, -1).astype(np.float64)
    od = -np.log(np.clip(rgb, 1e-6, 1.0))
    conc = od @ _HED_INV
    a = 1.0 + rng.uniform(-p["scale"], p["scale"], 3)
    b = rng.uniform(-p["shift"], p["shift"], 3)
    out = np.exp(-((conc * a + b) @ _HED))
    return np.moveaxis(out, -1, 0).astype(np.float32)


def _jpeg(unit: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """8-bit JPEG round trip at ``quality`` (PIL; 4:2:0 chroma subsampling, its default)."""
    from PIL import Image

    rgb = np.round(np.moveaxis(unit, 0, -1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(p["quality"]))
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return np.moveaxis(out, -1, 0)


_OWN: dict[str, Callable[[np.ndarray, dict, np.random.Generator], np.ndarray]] = {"stain": _stain, "jpeg": _jpeg}


def parse_condition(text: str, where: str = "--shift") -> tuple[str, int]:
    """``"noise:3"`` -> ``("noise", 3)`` (a :class:`ConfigError` naming ``where`` otherwise)."""
    kind, sep, sev = str(text).partition(":")
    if not sep or not sev.strip().isdigit():
        raise ConfigError(f"{where}={text}: expected KIND:SEVERITY, e.g. noise:3 (kinds: {', '.join(KINDS)}; "
                          "severity 1..5)")
    check_kind(kind.strip(), int(sev), where=where)
    return kind.strip(), int(sev)
