"""A trained model as prediction needs it: the module from its checkpoint alone (``weights_only``
loading), the dataset module that preprocesses new files exactly as in training, and the checks that
a file suits the model."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from uaseg.data import build_datamodule
from uaseg.data.checks import check_image_mode
from uaseg.errors import CheckpointError, DatasetError, PredictError, describe, root_cause
from uaseg.inference.files import inspect_input
from uaseg.io import check_checkpoint_file, read_image_header
from uaseg.selective import ThresholdGrid


@dataclass
class LoadedModel:
    module: Any
    datamodule: Any
    dataset_cfg: dict
    val_curve: ThresholdGrid | None
    spatial_dims: int
    in_channels: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    #: calibrated referral thresholds stored in the checkpoint (``uaseg.stages.risk_calibration``)
    risk_control: dict | None = None

    def describe(self) -> str:
        what = "3-D volumes (NIfTI .nii/.nii.gz)" if self.spatial_dims == 3 else "2-D images (BMP/PNG/JPG/TIF)"
        ch = {1: "1 channel (e.g. CT)", 3: "3 channels (RGB)"}.get(self.in_channels, f"{self.in_channels} channels")
        ds = self.dataset_cfg.get("_target_", "?").rsplit(".", 1)[-1]
        return f"this model ({ds}) segments {what} with {ch}"

    def check_compatible(self, path: Path | Sequence[Path], kind: str) -> None:
        """A clear error, from the headers, when ``path`` (a file, or a case's channel files) is not
        what this model segments."""
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        found = [inspect_input(Path(p), kind) for p in paths]
        dims, desc = found[0][0], found[0][2]
        channels = sum(f[1] for f in found)
        if len(paths) > 1:
            desc = f"case of {len(paths)} files, the first a {desc}"
        path = paths[0]
        wanted_kind = "nifti" if self.spatial_dims == 3 else "image"
        if kind != wanted_kind or dims != self.spatial_dims:
            raise PredictError(f"{path}: a {desc}, but {self.describe()}")
        if channels != self.in_channels:
            raise PredictError(
                f"{path}: a {desc} with {channels} channel{'s' if channels != 1 else ''}, but {self.describe()}"
            )
        modes = getattr(self.datamodule, "image_modes", None)
        if kind == "image" and modes:  # the modes training accepts (uaseg.data.checks.COLOUR_MODES)
            try:
                check_image_mode(path, read_image_header(path)[1], modes)
            except DatasetError as e:
                raise PredictError(f"{e}, as in training") from e


def load_model(ckpt: str | Path, device: str | torch.device = "cpu", trust_checkpoint: bool = False) -> LoadedModel:
    """Rebuild the module from ``ckpt`` (``weights_only=True`` unless ``trust_checkpoint``) and the
    dataset module from the dataset config stored with its hyper-parameters."""
    from uaseg.models import SelectiveSegModule

    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise PredictError(f"checkpoint not found: {path}")
    try:
        check_checkpoint_file(path)  # a truncated copy: one line naming it, as in training
    except CheckpointError as e:
        raise PredictError(str(e)) from None
    try:
        module = SelectiveSegModule.load_from_checkpoint(
            str(path), map_location="cpu", weights_only=not trust_checkpoint, trust_checkpoint=trust_checkpoint
        )
    except CheckpointError as e:  # a class uaseg does not configure (uaseg.runs.trust): one line
        raise PredictError(str(e)) from None
    except pickle.UnpicklingError as e:
        raise PredictError(
            f"{path}: the checkpoint holds objects that torch.load(weights_only=True) refuses to unpickle "
            f"({str(e).splitlines()[0] if str(e) else e}). If you trust this file, pass trust_checkpoint=true."
        ) from e
    except Exception as e:
        raise PredictError(f"{path}: cannot load this checkpoint ({describe(e)})") from e
    dataset_cfg = module.dataset_cfg
    if not dataset_cfg:
        raise PredictError(
            f"{path} holds no dataset config (hyper-parameter 'dataset'), so the preprocessing of new "
            "images is unknown; train it with a current train.py"
        )
    try:
        datamodule = build_datamodule(dataset_cfg)
        datamodule.predict_transforms()  # e.g. paper_crop models cannot segment unlabelled images
    except Exception as e:
        raise PredictError(
            f"{path}: cannot preprocess new images for this model's dataset {dataset_cfg.get('_target_')} "
            f"({root_cause(e)})"
        ) from e
    net = module.hparams["net"]
    meta = dataset_cfg.get("meta") or {}
    module.eval().to(device)
    return LoadedModel(
        module=module,
        datamodule=datamodule,
        dataset_cfg=dataset_cfg,
        val_curve=module.val_curve,
        spatial_dims=int(net.get("spatial_dims", datamodule.spatial_dims)),
        in_channels=int(net.get("in_channels", datamodule.in_channels)),
        num_classes=int(net["out_channels"]),
        class_names=["background", *(meta.get("class_names") or getattr(datamodule, "class_names", ()))],
        risk_control=module.risk_calibration,
    )
