"""Hydra callbacks of ``train.py`` (``hydra.callbacks`` in ``conf/hydra/default.yaml``).

:class:`RunFolderGuard` claims the run folder in ``on_run_start`` -- after Hydra composed the config,
before it creates the folder, writes ``.hydra/*.yaml`` or opens the job's log file -- so a refused run
leaves the folder exactly as it was (see :mod:`uaseg.runfolder` for the rules). A refusal is one line
on stderr and exit status 1, like every user error of ``train.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import uaseg.resolvers  # noqa: F401  (the run folder is computed by ${uaseg.run_dir:...})
from uaseg.errors import UserError
from uaseg.runfolder import claim_run_folder, claim_sweep_folder, release_run_folder


def refuse(error: UserError) -> None:
    """Exit the way ``train.py`` reports every user error: one line, status 1, no traceback."""
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)


class RunFolderGuard(Callback):
    """Refuse (or lock) the run folder before Hydra writes anything into it."""

    def __init__(self) -> None:
        self._claimed: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # resolving here also fixes ${now:...} for Hydra's own use (OmegaConf caches it on this config)
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
        resume = OmegaConf.select(config, "resume", default=None)
        try:
            if claim_run_folder(folder, resume=resume):
                self._claimed = folder
        except UserError as e:
            refuse(e)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._claimed is not None:
            release_run_folder(self._claimed)
            self._claimed = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()
        try:
            if claim_sweep_folder(folder):
                self._claimed = folder
        except UserError as e:
            refuse(e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.on_run_end(config)
