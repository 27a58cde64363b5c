"""Segment one file on its own grid: preprocess as in training, sliding-window inference, and map the
segmentation (nearest) and the uncertainty (linear) back onto the file's grid."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from uaseg.data.plan.invert import invert_to_file_grid
from uaseg.errors import DatasetError, PredictError, first_cause
from uaseg.inference.model import LoadedModel


def segment_file(model: LoadedModel, path: Path | Sequence[Path], device: torch.device,
                 score: str = "max_softmax") -> tuple[np.ndarray, np.ndarray]:
    """``(segmentation int64, uncertainty float32)`` on the file's own grid, in MONAI's array layout
    (NIfTI voxel order; ``(width, height)`` for 2-D images). ``path``: the file, or a case's channel
    files (nnU-Net: one per channel, on one grid; the outputs are on the grid of the first). ``score``:
    ``max_softmax`` or ``tcp`` (the checkpoint's ConfidNet head)."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    transforms = model.datamodule.predict_transforms()
    source = str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
    named = ", ".join(map(str, paths))
    try:
        image = transforms({"image": source})["image"]
    except Exception as e:
        cause = first_cause(e, DatasetError)
        raise PredictError(f"{named}: cannot preprocess this file ({cause or e})") from e
    if image.shape[0] != model.in_channels:
        raise PredictError(f"{named}: read as {image.shape[0]} channel(s), but {model.describe()}")
    uncertainty, prediction, _ = model.module.segment(image[None].to(device), score=score)
    out = invert_to_file_grid(image, transforms, {"seg": prediction[:1], "u": uncertainty[:1]}, nearest=["seg"])
    return out["seg"][0].round().long().numpy(), out["u"][0].float().numpy().astype(np.float32)
