"""Case-level k-fold splits, persisted like nnU-Net's ``splits_final.json``.

The file is written once and reused, so every job of a fold sweep (and every later re-run) sees
exactly the same cases in the same fold even if the code or the random generator changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from uaseg.errors import ConfigError, DatasetError
from uaseg.io import write_json


def check_fold_count(n_cases: int, num_folds: int) -> None:
    """Each of ``num_folds`` folds needs a test case."""
    if n_cases < num_folds:
        raise ConfigError(
            f"dataset.num_folds={num_folds}: expected at most {n_cases}, the number of cases of this dataset "
            "(each fold needs a test case)"
        )


def make_folds(case_ids: Sequence[str], num_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """Shuffle cases with ``seed`` and deal them into ``num_folds`` test folds."""
    ids = sorted(case_ids)
    check_fold_count(len(ids), num_folds)
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
    check_fold_count(len(set(case_ids)), num_folds)
    if path.exists():
        try:
            folds = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read the persisted splits ({e}); delete it to re-create") from e
        try:
            listed = {c for f in folds for c in f["train"] + f["test"]}
        except (TypeError, KeyError) as e:
            raise DatasetError(f"{path}: not a list of {{train, test}} folds ({e!r}); delete it to re-create") from None
        if len(folds) != num_folds or listed != set(case_ids):
            extra, missing = sorted(listed - set(case_ids)), sorted(set(case_ids) - listed)
            diff = "".join(f"; {what}: {', '.join(ids[:3])}{f' and {len(ids) - 3} more' if len(ids) > 3 else ''}"
                           for what, ids in (("only in the file", extra), ("not in the file", missing)) if ids)
            raise DatasetError(
                f"{path}: persisted splits ({len(folds)} folds, {len(listed)} cases) do not match "
                f"this dataset ({num_folds} folds, {len(set(case_ids))} cases{diff}); delete the file to re-split"
            )
        return folds
    folds = make_folds(case_ids, num_folds, seed)
    write_json(path, folds)
    return folds


def carve_validation(train_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split training cases into (train, val); at least one case each. Never touches the test fold."""
    ids = sorted(train_ids)
    if len(ids) < 2:
        raise ConfigError(
            f"only {len(ids)} training case(s) left after the test fold; need at least 2 to carve a validation "
            "set (use fewer dataset.num_folds, or more cases)"
        )
    n_val = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
    order = np.random.default_rng(seed + 1).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return sorted(set(ids) - set(val)), val
