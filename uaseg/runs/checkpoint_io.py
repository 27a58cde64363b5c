"""Lightning's checkpoint I/O, written through :mod:`uaseg.io` (``trainer.plugins`` in
``conf/trainer/default.yaml``).

Lightning's own ``TorchCheckpointIO`` stages a checkpoint in the system temporary folder and moves it
into the run folder; across file systems that move is a copy, so a full disk or a kill mid-copy leaves
a cut-off ``last.ckpt`` that the next ``resume=`` trips over. Here the checkpoint is written beside its
target and renamed over it (the old file stays intact until then), with the usual permissions, and a
failed write names the file and the reason. Loading names the file of an unreadable checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from uaseg.errors import CheckpointError, describe
from uaseg.io import check_checkpoint_file, save_torch


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, then ``os.replace`` (see module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_torch(path, checkpoint)

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        check_checkpoint_file(path)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (FileNotFoundError, CheckpointError):
            raise
        except Exception as e:
            raise CheckpointError(f"{Path(path)}: cannot load this checkpoint ({describe(e)})") from e


def check_weights_fit(module: Any, path: str | Path, what: str, hint: str) -> None:
    """A :class:`CheckpointError` naming the first parameter of ``path`` that does not fit ``module``
    (another shape, or a parameter one of them lacks), before Lightning's strict load prints one
    line per parameter. ``what``/``hint``: the option that named the file, and what to do instead."""
    import torch

    try:  # memory-mapped: the tensors' data is not read
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("state_dict") or {}
    except Exception as e:
        raise CheckpointError(f"{what}: {path}: cannot load this checkpoint ({describe(e)})") from None
    own = module.state_dict()
    bad = [(k, tuple(stored[k].shape), tuple(v.shape)) for k, v in own.items()
           if k in stored and hasattr(stored[k], "shape") and tuple(stored[k].shape) != tuple(v.shape)]
    bad += [(k, None, tuple(v.shape)) for k, v in own.items() if k not in stored]
    bad += [(k, tuple(getattr(v, "shape", ())), None) for k, v in stored.items() if k not in own]
    if not bad:
        return
    name, theirs, ours = bad[0]
    shown = lambda s: "absent" if s is None else f"shape {list(s)}"  # noqa: E731
    more = f", and {len(bad) - 1} more parameter(s)" if len(bad) > 1 else ""
    raise CheckpointError(f"{what}: {path}: the checkpoint's weights do not fit the network the config builds "
                          f"({name}: {shown(theirs)} in the checkpoint, {shown(ours)} in the network{more}); {hint}")
