"""The MONAI dictionary transforms of the standard layouts' preprocessing: per-channel normalisation
of the plan (inside the non-zero mask where the plan says so) and the crop centres of a label with an
ignore label (annotated voxels only)."""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import torch
from monai.transforms import MapTransform


class NormalizeChannelsd(MapTransform):
    """Per-channel intensity normalisation of the plan (:mod:`uaseg.data.plan.fingerprint`). A z-score
    channel with ``use_nonzero_mask`` is normalised with the mean and std of the voxels inside the
    non-zero mask (non-zero in any channel, holes filled: nnU-Net's ``create_nonzero_mask``) and set to
    0 outside it, as nnU-Net's ``ZScoreNormalization(use_mask_for_norm=True)``."""

    def __init__(self, keys: Any, schemes: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(keys)
        self.schemes = [dict(s) for s in schemes]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key].float()
            out = img.clone()
            mask = nonzero_mask(img) if any(s.get("use_nonzero_mask") for s in self.schemes) else None
            for c, s in enumerate(self.schemes):
                x = img[c]
                if s["scheme"] == "ct":
                    out[c] = (x.clamp(s["clip"][0], s["clip"][1]) - s["mean"]) / s["std"]
                elif s["scheme"] == "zscore" and s.get("use_nonzero_mask"):
                    inside = x[mask]
                    z = torch.zeros_like(x)
                    if inside.numel():
                        z[mask] = (inside - inside.mean()) / max(float(inside.std(unbiased=False)), 1e-8)
                    out[c] = z
                elif s["scheme"] == "zscore":
                    out[c] = (x - x.mean()) / max(float(x.std(unbiased=False)), 1e-8)
                elif s["scheme"] == "rescale_to_0_1":
                    out[c] = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
                elif s["scheme"] == "rgb_to_0_1":
                    out[c] = (x / 255.0).clamp(0.0, 1.0)
            d[key] = out
        return d


def nonzero_mask(img: torch.Tensor) -> torch.Tensor:
    """``(C, *spatial)`` -> spatial bool mask: non-zero in any channel, holes filled (nnU-Net)."""
    from scipy.ndimage import binary_fill_holes

    mask = (torch.as_tensor(img) != 0).any(0).cpu().numpy()
    return torch.as_tensor(binary_fill_holes(mask), device=img.device)


class AnnotatedIndicesd(MapTransform):
    """Crop centres for ``RandCropByPosNegLabeld`` (its ``fg_indices_key`` / ``bg_indices_key``) that
    leave out nnU-Net's ignore label: positives are the labelled foreground (``0 < label <
    ignore``), negatives the labelled background (``label == 0``); a case without either is sampled
    anywhere."""

    def __init__(self, key: str, ignore_label: int) -> None:
        super().__init__([key])
        self.ignore_label = int(ignore_label)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from monai.transforms.utils import map_binary_to_indices

        d = dict(data)
        for key in self.key_iterator(d):
            lab = torch.as_tensor(d[key])  # channel-first (1, *spatial), as map_binary_to_indices wants
            fg, _ = map_binary_to_indices((lab > 0) & (lab != self.ignore_label))
            bg, _ = map_binary_to_indices(lab == 0)
            if len(fg) == 0 and len(bg) == 0:
                bg, _ = map_binary_to_indices(torch.ones_like(lab, dtype=torch.bool))
            d[f"{key}_fg_indices"], d[f"{key}_bg_indices"] = fg, bg
        return d
