"""The one interface every dataset offers to the training module.

A dataset module only says *which cases exist* (``load_cases``) and *how to turn a case dict into
tensors* (``train_transforms`` / ``eval_transforms``, MONAI dictionary transforms). Everything
else -- loaders, patch batching, whole-image evaluation loaders -- is shared here, so the
LightningModule never needs to know which dataset it is training on.

Batches are dicts:
  * ``image``: float tensor ``(B, C, *spatial)`` (a MONAI ``MetaTensor`` carrying the affine),
  * ``label``: integer tensor ``(B, 1, *spatial)`` with classes ``0..num_classes-1`` (and
    ``ignore_label`` = ``num_classes`` for unannotated voxels, when the dataset has one),
  * ``case_id``: list of ``str``; ``group``: list of ``str`` (e.g. GlaS test part ``testA``).
Training batches hold random patches; validation and test batches hold one whole image each,
segmented by the module with sliding-window inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose

from uaseg.config.check import check_config
from uaseg.data.splits import carve_validation, load_or_make_folds
from uaseg.errors import DatasetError


def check_dataset_options(**options: Any) -> None:
    """A datamodule's constructor arguments, by the config rules of :mod:`uaseg.config.check` (the
    same checks as ``train.py``'s, for datamodules built in scripts or from checkpoints)."""
    check_config({"dataset": options})


def as_tensor(x: Any) -> torch.Tensor:
    """A batch entry as a plain tensor (MONAI MetaTensor unwrapped): metadata tracking slows every op
    of a training step."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class SegDataModule(L.LightningDataModule):
    """Base class for all uaseg datasets; subclasses set the class attributes and three hooks."""

    #: number of spatial dimensions (2 or 3)
    spatial_dims: int = 2
    #: image channels (3 for RGB histology, 1 for CT)
    in_channels: int = 1
    #: foreground class names, in label order 1..K-1
    class_names: tuple[str, ...] = ()
    #: 2-D datasets read from image files: the Pillow modes accepted, in training and in prediction
    image_modes: tuple[str, ...] | None = None
    #: label value of unannotated voxels (nnU-Net's ``ignore`` label, = ``num_classes``), or None: such
    #: voxels take no part in the loss or the selective evaluation
    ignore_label: int | None = None

    def __init__(
        self,
        root: str | None = None,
        patch_size: Sequence[int] = (64, 64),
        batch_size: int = 8,
        num_workers: int = 0,
        fold: int = 0,
        num_folds: int = 5,
        val_fraction: float = 0.2,
        seed: int = 0,
        samples_per_image: int = 1,
        cache_dir: str | None = None,
        sw_overlap: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unknown dataset options {sorted(kwargs)}")
        check_dataset_options(
            patch_size=patch_size, batch_size=batch_size, num_workers=num_workers, fold=fold,
            num_folds=num_folds, val_fraction=val_fraction, seed=seed, samples_per_image=samples_per_image,
            sw_overlap=sw_overlap, meta={"spatial_dims": self.spatial_dims},
        )
        self.root = Path(root).expanduser() if root else None
        self.patch_size = tuple(int(p) for p in patch_size)
        #: patches per optimiser step (the paper's batch of 8), drawn as
        #: ``batch_size / samples_per_image`` images x ``samples_per_image`` patches each
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.fold = int(fold)
        self.num_folds = int(num_folds)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.samples_per_image = int(samples_per_image)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        #: sliding-window overlap the module's inferer uses on this dataset's whole images
        self.sw_overlap = float(sw_overlap)
        self.splits: dict[str, list[dict]] | None = None

    # ------------------------------------------------------------------ hooks for subclasses
    @property
    def num_classes(self) -> int:
        """Number of output channels, background included."""
        return len(self.class_names) + 1

    def load_cases(self) -> dict[str, list[dict]]:
        """Return ``{"train": [...], "val": [...], "test": [...]}``; each case a dict with
        ``case_id`` (str), ``group`` (str), and whatever ``*_transforms`` read (paths or arrays).
        Cases never appear in two splits."""
        raise NotImplementedError

    def train_transforms(self) -> Compose:
        """Case dict -> ``samples_per_image`` random patches of ``patch_size``."""
        raise NotImplementedError

    def eval_transforms(self) -> Compose:
        """Case dict -> one whole image at its own size, never padded: the sliding window pads internally
        and crops back, so every evaluated voxel is a voxel of the case."""
        raise NotImplementedError

    def predict_transforms(self) -> Compose:
        """``{"image": <file path>}`` -> ``image`` preprocessed exactly as by ``eval_transforms``
        (no label), a ``MetaTensor`` ``(C, *spatial)`` whose metadata lets
        ``monai.transforms.Invertd`` map predictions back onto the file's own grid (used by
        ``uaseg.predict``). 2-D files are read with MONAI's PIL reader: spatial axes ``(width, height)``."""
        raise NotImplementedError(f"{type(self).__name__} does not support prediction on new files")

    def prediction_cases(self, files: list[Path]) -> list[tuple[str | None, list[Path]]]:
        """Prediction inputs grouped into cases: ``(name, files of its channels)``, ``name`` None for
        the file's own name. One file per case, unless a layout keeps each channel in its own file
        (nnU-Net)."""
        return [(None, [f]) for f in files]

    # ------------------------------------------------------------------ shared machinery
    def kfold_split(self, case_ids: Sequence[str], path: Path, seed: int) -> dict[str, list[str]]:
        """Case ids of this fold: ``test`` from the ``num_folds``-fold split persisted at ``path``
        (nnU-Net's ``splits_final.json``), ``val`` carved from the other folds, ``train`` the rest."""
        folds = load_or_make_folds(path, case_ids, self.num_folds, seed)
        train, val = carve_validation(folds[self.fold]["train"], self.val_fraction, seed)
        return {"train": train, "val": val, "test": folds[self.fold]["test"]}

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.load_cases()
            check_disjoint(self.splits)

    def dataset(self, split: str, transforms: Compose | None = None) -> Dataset:
        self.setup()
        assert self.splits is not None
        if transforms is None:
            transforms = self.train_transforms() if split == "train" else self.eval_transforms()
        return Dataset(self.splits[split], transform=transforms)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset("train"),
            batch_size=self.batch_size // self.samples_per_image,
            shuffle=True,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _whole_image_loader(self, split: str) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=1, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._whole_image_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._whole_image_loader("test")

    def case_units(self, split: str) -> dict[str, str] | None:
        """``{case id: patient id}`` of a split, the unit risk control calibrates on (images of one
        patient are not exchangeable with a new patient's); None when no case names its patient (each
        case is then its own unit). A dataset names them with a non-empty ``"patient"`` in its case
        dicts (GlaS: from ``Grade.csv``)."""
        self.setup()
        assert self.splits is not None
        cases = self.splits[split]
        named = {str(c["case_id"]): str(c["patient"]) for c in cases if c.get("patient")}
        return named or None

    def describe(self) -> dict[str, Any]:
        """Short, JSON-able description for logs and summaries."""
        self.setup()
        assert self.splits is not None
        return {
            "dataset": type(self).__name__,
            "fold": self.fold,
            "cases": {k: len(v) for k, v in self.splits.items()},
            "classes": list(self.class_names),
        }


def check_disjoint(splits: dict[str, list[dict]]) -> None:
    """Fail loudly if a case id sits in two splits (a leak would make every metric dishonest)."""
    seen: dict[str, str] = {}
    for split, cases in splits.items():
        if not cases:
            raise DatasetError(f"split '{split}' is empty; check the dataset size and dataset.num_folds")
        for case in cases:
            cid = case["case_id"]
            if cid in seen and seen[cid] != split:
                raise DatasetError(f"case {cid!r} is in both '{seen[cid]}' and '{split}' splits")
            seen[cid] = split
