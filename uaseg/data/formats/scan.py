"""Read every case of every split before training: a bad file in the test fold must not wait for the
end of training to be found.

:func:`read_every_case` runs each case through its dataset's deterministic transforms -- reading the
files completely and applying every check in them (:mod:`uaseg.data.checks`: decodable, finite
voxels, exact label values, same grid) -- and writes the result to the preprocessing cache, so
training reads it from there instead of a second time. Then it checks the labels' foreground
(:func:`uaseg.data.checks.check_foreground`). ``dataset.num_workers`` processes share the work.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from uaseg.data.checks import check_foreground, foreground_note, source_name
from uaseg.errors import DatasetError

log = logging.getLogger(__name__)


class _CaseReader(TorchDataset):
    """Case ``i`` of a uaseg dataset -> ``(case id, label file, has foreground, what it holds instead
    (:func:`~uaseg.data.checks.foreground_note`), error message)``:
    tiny results, and errors as values (a DataLoader worker would wrap them in its traceback)."""

    def __init__(self, dataset: Any, ignore_label: int | None = None) -> None:
        self.dataset, self.ignore_label = dataset, ignore_label

    def __len__(self) -> int:
        return len(self.dataset.data)

    def __getitem__(self, i: int) -> tuple[str, str, bool, str | None, str | None]:
        cid = str(self.dataset.data[i].get("case_id", i))
        try:
            item = self.dataset.deterministic(i)
        except DatasetError as e:
            return cid, "", False, None, str(e)
        items = item if isinstance(item, list) else [item]
        label = items[0].get("label")
        if label is None:
            return cid, "", True, None, None
        lab = torch.as_tensor(label)
        ignore = self.ignore_label
        fg = bool((lab.gt(0) if ignore is None else lab.gt(0) & lab.ne(ignore)).any())  # unannotated: no foreground
        return cid, source_name(label), fg, None if fg else foreground_note(torch.unique(lab).tolist(), ignore), None


def _first(x):
    return x


def read_every_case(datamodule: Any) -> None:
    """Read and check every case of ``datamodule`` (a :class:`~uaseg.data.formats.filebased.FileSegDataModule`);
    raises the first :class:`DatasetError`, naming the case and the file."""
    datamodule.setup()
    foreground: dict[str, dict[str, tuple]] = {}
    for split, cases in datamodule.splits.items():
        log.info("reading and checking the %d %s case(s)", len(cases), split)
        reader = _CaseReader(datamodule.dataset(split), getattr(datamodule, "ignore_label", None))
        loader = DataLoader(reader, batch_size=None, num_workers=datamodule.num_workers, collate_fn=_first)
        for cid, label_file, has_fg, note, error in loader:
            if error:
                raise DatasetError(error)
            foreground.setdefault(split, {})[cid] = (label_file, has_fg, note)
    check_foreground(foreground)
