"""Shared machinery of the built-in demo datasets: generate once, cache, split by case.

Cases are generated on first use into ``cache_dir/<name>-<hash of the generator settings>/`` and
read back afterwards; changing any generator setting gives a new folder, never a stale cache.
The k-fold split is persisted beside the cases (``splits_final.json``), as for the real datasets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from uaseg.data.base import SegDataModule, check_dataset_options
from uaseg.io import save_npz

#: bump when a generator changes so old caches are not reused
GENERATOR_VERSION = 1


class DemoDataModule(SegDataModule):
    """A procedurally generated dataset; subclasses name the generator and the transforms."""

    name = "demo"
    generator: Callable[[int, int, int], tuple[np.ndarray, np.ndarray]]

    def __init__(self, num_cases: int = 40, image_size: int = 256, data_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_dataset_options(num_cases=num_cases, image_size=image_size, data_seed=data_seed)
        self.num_cases = int(num_cases)
        self.image_size = int(image_size)
        self.data_seed = int(data_seed)
        if self.cache_dir is None:
            self.cache_dir = Path(".cache")

    @property
    def case_dir(self) -> Path:
        settings = {"v": GENERATOR_VERSION, "n": self.num_cases, "size": self.image_size, "seed": self.data_seed}
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        assert self.cache_dir is not None
        return self.cache_dir / f"{self.name}-{key}"

    def prepare_data(self) -> None:
        """Lightning calls this once per machine before ``setup`` (DDP ranks do not race)."""
        self.generate()

    def generate(self) -> None:
        """Write every missing case file (atomic per file and process, so an interrupted run or
        parallel jobs sharing the cache are harmless)."""
        folder = self.case_dir
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(self.num_cases):
            path = folder / f"case_{i:03d}.npz"
            if not path.exists():
                image, label = type(self).generator(self.data_seed, i, self.image_size)
                save_npz(path, image=image, label=label)

    def load_cases(self) -> dict[str, list[dict]]:
        self.generate()
        ids = [f"case_{i:03d}" for i in range(self.num_cases)]
        split_ids = self.kfold_split(ids, self.case_dir / "splits_final.json", self.data_seed)
        return {split: [self._case(cid) for cid in cids] for split, cids in split_ids.items()}

    def _case(self, case_id: str) -> dict:
        with np.load(self.case_dir / f"{case_id}.npz") as f:
            image, label = f["image"], f["label"]
        if image.ndim == self.spatial_dims:  # add the channel axis MONAI expects
            image = image[None]
        return {"case_id": case_id, "group": "test", "image": image, "label": label[None]}
