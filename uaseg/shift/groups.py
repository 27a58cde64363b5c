"""Natural shift: ``<root>/groups.csv`` names each case's group (site, scanner, grade) for the nnU-Net
and Decathlon layouts, and ``dataset.train_groups`` / ``dataset.test_groups`` train on some groups and
test on others.

The file is data from a user's folder: every problem is one :class:`DatasetError` naming the file (and
the line), never a wrong split. Format: a header with the columns ``case`` (or ``case_id``) and
``group``, then one line per case::

    case,group
    hippocampus_001,siteA
    hippocampus_002,siteB
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

from uaseg.errors import ConfigError, DatasetError

GROUPS_FILE = "groups.csv"
CASE_COLUMNS = ("case", "case_id")


def read_groups(path: Path, case_ids: Iterable[str]) -> dict[str, str]:
    """``{case id: group}`` for every case of ``case_ids`` (each must be listed once, and nothing else)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the groups file ({getattr(e, 'strerror', None) or e})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise DatasetError(f"{path}: empty; expected a header 'case,group' and one line per case")
    header = [h.strip().lower() for h in rows[0]]
    case_col = next((header.index(c) for c in CASE_COLUMNS if c in header), None)
    if case_col is None or "group" not in header:
        raise DatasetError(f"{path}: line 1: expected a header with the columns 'case' and 'group', got {rows[0]}")
    group_col = header.index("group")
    known = set(case_ids)
    groups: dict[str, str] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(case_col, group_col):
            raise DatasetError(f"{path}: line {n}: expected {len(header)} columns, got {len(row)} ({','.join(row)})")
        case, group = row[case_col].strip(), row[group_col].strip()
        if not case or not group:
            raise DatasetError(f"{path}: line {n}: empty case or group ({','.join(row)})")
        if case in groups:
            raise DatasetError(f"{path}: line {n}: case {case!r} is listed twice")
        if case not in known:
            raise DatasetError(f"{path}: line {n}: case {case!r} is not a labelled case of this dataset")
        groups[case] = group
    missing = sorted(known - set(groups))
    if missing:
        raise DatasetError(f"{path}: {len(missing)} case(s) have no group, e.g. {', '.join(missing[:3])}; "
                           "give every labelled case a line")
    return groups


def split_by_groups(groups: dict[str, str], train_groups: Sequence[str] | None, test_groups: Sequence[str] | None,
                    source: Path) -> tuple[list[str], list[str]]:
    """``(training pool, test cases)``: the cases of ``train_groups`` and of ``test_groups`` (either
    alone: the other is every other group). Names not in the file, or in both lists, are refused."""
    present = sorted(set(groups.values()))
    for key, names in (("train_groups", train_groups), ("test_groups", test_groups)):
        unknown = sorted(set(names or ()) - set(present))
        if unknown:
            raise DatasetError(f"dataset.{key}: {', '.join(map(repr, unknown))} not in {source} "
                               f"(its groups: {', '.join(present)})")
    both = sorted(set(train_groups or ()) & set(test_groups or ()))
    if both:
        raise ConfigError(f"dataset.train_groups and dataset.test_groups both hold {', '.join(both)}: a group is "
                          "trained on or tested on, not both")
    test_set = set(test_groups or ()) or set(present) - set(train_groups or ())
    train_set = set(train_groups or ()) or set(present) - test_set
    train = sorted(c for c, g in groups.items() if g in train_set)
    test = sorted(c for c, g in groups.items() if g in test_set)
    if not train or not test:
        raise ConfigError(f"dataset.train_groups / dataset.test_groups leave no {'training' if not train else 'test'} "
                          f"case ({source}: groups {', '.join(present)})")
    return train, test
