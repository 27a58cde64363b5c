"""Lightning's checkpoint I/O, written through :mod:`uaseg.io` (``trainer.plugins`` in
``conf/trainer/default.yaml``).

Lightning's own ``TorchCheckpointIO`` stages a checkpoint in the system temporary folder and moves it
into the run folder; across file systems that move is a copy, so a full disk or a kill mid-copy leaves
a cut-off ``last.ckpt`` that the next ``resume=`` trips over. Here the checkpoint is written beside its
target and renamed over it (the old file stays intact until then), with the usual permissions, and a
failed write names the file and the reason. Loading names the file of an unreadable checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from uaseg.errors import CheckpointError
from uaseg.io import atomic_path, check_checkpoint_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, then ``os.replace`` (see module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()  # serialised first: torch.save's own write errors lose errno (no space left...)
        torch.save(checkpoint, buffer)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        check_checkpoint_file(path)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (FileNotFoundError, CheckpointError):
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(f"{Path(path)}: cannot load this checkpoint ({type(e).__name__}: {first})") from e
