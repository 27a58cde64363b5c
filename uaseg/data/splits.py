"""Case-level k-fold splits, persisted like nnU-Net's ``splits_final.json``.

The file is written once and reused, so every job of a fold sweep (and every later re-run) sees
exactly the same cases in the same fold even if the code or the random generator changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from uaseg.io import write_json


def make_folds(case_ids: Sequence[str], num_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """Shuffle cases with ``seed`` and deal them into ``num_folds`` test folds."""
    ids = sorted(case_ids)
    if len(ids) < num_folds:
        raise ValueError(f"{len(ids)} cases cannot be split into {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = [sorted(ids[i] for i in order[k::num_folds]) for k in range(num_folds)]
    return [
        {"train": sorted(c for j, f in enumerate(folds) if j != k for c in f), "test": folds[k]}
        for k in range(num_folds)
    ]


def load_or_make_folds(
    path: Path, case_ids: Sequence[str], num_folds: int, seed: int
) -> list[dict[str, list[str]]]:
    """Read ``path`` if it exists (checking it still matches the cases), else create it."""
    path = Path(path)
    if path.exists():
        try:
            folds = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the persisted splits ({e}); delete it to re-create") from e
        listed = {c for f in folds for c in f["train"] + f["test"]}
        if len(folds) != num_folds or listed != set(case_ids):
            raise ValueError(
                f"{path}: persisted splits ({len(folds)} folds, {len(listed)} cases) do not match "
                f"this dataset ({num_folds} folds, {len(set(case_ids))} cases); delete the file to re-split"
            )
        return folds
    folds = make_folds(case_ids, num_folds, seed)
    write_json(path, folds)
    return folds


def carve_validation(train_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split training cases into (train, val); at least one case each. Never touches the test fold."""
    ids = sorted(train_ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 training cases to carve a validation set, got {len(ids)}")
    n_val = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
    order = np.random.default_rng(seed + 1).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return sorted(set(ids) - set(val)), val
