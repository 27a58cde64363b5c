"""Finding a dataset's cases in a folder: image/label files paired by case id, with an error naming
the file for a duplicate or a missing partner."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from uaseg.data.checks import natural_key
from uaseg.errors import DatasetError


def find_pairs(
    folder: Path, pattern: re.Pattern, case_and_kind: Callable[[re.Match], tuple[str, str]]
) -> dict[str, dict[str, Path]]:
    """``case id -> {kind: file}`` for the files in ``folder`` whose name matches ``pattern``
    (``case_and_kind`` turns the match into ``(case id, "image" | "label")``). Two files of one kind
    for a case (``.nii`` and ``.nii.gz``, say) are an error naming both."""
    found: dict[str, dict[str, Path]] = {}
    for p in sorted(folder.iterdir()):
        m = pattern.match(p.name)
        if not m or not p.is_file():
            continue
        cid, kind = case_and_kind(m)
        slot = found.setdefault(cid, {})
        if kind in slot:
            raise DatasetError(f"case {cid}: both {slot[kind]} and {p} exist; keep one")
        slot[kind] = p
    return found


def require_pairs(found: dict[str, dict[str, Path]], partner: Callable[[str, Path], Path], label_word: str = "label") -> None:
    """Every case has its image and its label; ``partner(kind, file)`` is the file expected beside
    ``file``, named in the error."""
    for cid in sorted(found, key=natural_key):
        slot = found[cid]
        for have, lack, what in (("image", "label", f"image without its {label_word}"),
                                 ("label", "image", f"{label_word} without its image")):
            if lack not in slot:
                raise DatasetError(f"{slot[have]}: {what} (expected {partner(have, slot[have])})")
