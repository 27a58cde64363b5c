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
