"""MONAI datasets whose transform failures name the case (and, for our own :class:`DatasetError`,
the file it named) instead of MONAI's bare ``RuntimeError('applying transform ...')``, and the cache
key of a case dict for the ``PersistentDataset``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from monai.data import Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import RandomizableTrait, Transform

from uaseg.errors import DatasetError, describe, first_cause, root_cause


def file_stamped_hash(item: Mapping[str, Any]) -> bytes:
    """Cache key of a case dict: its content plus size and mtime of every file it names (also in
    lists: one channel per file)."""
    stamped = {}
    for k, v in item.items():
        stamped[k] = v
        if isinstance(v, (str, Path)) and os.path.isfile(v):
            st = os.stat(v)
            stamped[f"{k}__stat"] = (st.st_size, st.st_mtime_ns)
        elif isinstance(v, (list, tuple)) and v and all(isinstance(f, (str, Path)) and os.path.isfile(f) for f in v):
            stamped[f"{k}__stat"] = [(os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in v]
    return pickle_hashing(stamped)


class _NamedErrors:
    """Mixin for MONAI datasets: transform failures are re-raised naming the case (and, for our own
    :class:`DatasetError`, the file it named) instead of MONAI's bare ``applying transform``."""

    def _transform(self, index: int):  # type: ignore[override]
        try:
            return super()._transform(index)  # type: ignore[misc]
        except Exception as e:
            raise self._named(index, e) from e

    def deterministic(self, index: int) -> Any:
        """Case ``index`` after the transforms before the first random one -- what the cache holds
        (read from it, or computed and written to it) -- with the same named errors."""
        try:
            if isinstance(self, PersistentDataset):
                return self._cachecheck(self.data[index])
            first = self.transform.get_index_of_first(  # type: ignore[attr-defined]
                lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
            return self.transform(dict(self.data[index]), end=first)  # type: ignore[attr-defined]
        except Exception as e:
            raise self._named(index, e) from e

    def _named(self, index: int, e: Exception) -> DatasetError:
        item = self.data[index]  # type: ignore[attr-defined]
        cid = item.get("case_id", index) if isinstance(item, Mapping) else index
        cause = first_cause(e)
        if cause is not None:
            return DatasetError(f"case {cid}: {cause}")
        named = [f for v in item.values() for f in (v if isinstance(v, (list, tuple)) else [v])]
        files = [str(v) for v in named if isinstance(v, (str, Path)) and os.path.isfile(v)]
        deepest = root_cause(e)
        return DatasetError(f"case {cid} ({', '.join(files)}): preprocessing failed ({describe(deepest)})")


class NamedErrorsDataset(_NamedErrors, Dataset):
    pass


class NamedErrorsPersistentDataset(_NamedErrors, PersistentDataset):
    pass
