"""Hydra callbacks of ``train.py`` (``hydra.callbacks`` in ``conf/hydra/default.yaml``).

:class:`RunFolderGuard` checks the config values and claims the run folder in ``on_run_start`` --
after Hydra composed the config, before it creates the folder, writes ``.hydra/*.yaml`` or opens the
job's log file -- so a refused run leaves no folder, or the folder exactly as it was (see
:mod:`uaseg.runs.folder` for the rules). A multirun composes and checks every job's config in
``on_multirun_start``, so one bad value among its jobs starts none. A refusal is one line on stderr
and exit status 1, like every user error of ``train.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import uaseg.config.resolvers  # noqa: F401  (the run folder is computed by ${uaseg.run_dir:...})
from uaseg.errors import UserError
from uaseg.runs.folder import claim_run_folder, claim_sweep_folder, release_run_folder


def refuse(error: UserError) -> None:
    """Exit the way ``train.py`` reports every user error: one line, status 1, no traceback."""
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)


def check_job_config(config: DictConfig) -> None:
    """The checks ``train`` runs before any work (mandatory values, every value's domain), on a
    config Hydra composed (with its ``hydra`` node, which the checks skip)."""
    from hydra.core.hydra_config import HydraConfig

    from uaseg.config.check import check_config, unresolved_missing_keys
    from uaseg.errors import ConfigError

    HydraConfig.instance().set_config(config)  # ${hydra:runtime.cwd} in paths; Hydra sets it again per job
    missing = [k for k in unresolved_missing_keys(config) if not k.startswith("hydra.")]
    if missing:
        raise ConfigError("missing mandatory config values: " + ", ".join(f"{k}=..." for k in sorted(missing))
                          + " (e.g. dataset.root=/path/to/the/downloaded/dataset)")
    check_config(config)


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, expanded as Hydra's basic sweeper does (``hydra.sweeper.params`` and the
    command line); None for another sweeper (e.g. Optuna, whose jobs are chosen while it runs)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(config, "hydra.sweeper._target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(config, "hydra.overrides.task") or [])
    overrides = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def check_sweep_jobs(config: DictConfig) -> None:
    """Compose and check every job of a multirun before the first starts (as Hydra composes them,
    ``load_sweep_config``): a :class:`UserError` naming the first bad job's swept values."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    jobs = sweep_jobs(config)
    if not jobs or not GlobalHydra.instance().is_initialized():
        return
    varying = {o.split("=", 1)[0] for o in jobs[0] if any(o not in j for j in jobs)}
    loader = GlobalHydra.instance().config_loader()
    bad: list[tuple[int, list[str], UserError]] = []
    try:
        for num, job in enumerate(jobs):
            job_cfg = loader.load_sweep_config(config, list(job))
            if OmegaConf.select(job_cfg, "resume", default=None):
                continue
            try:
                check_job_config(job_cfg)
            except UserError as e:
                bad.append((num, [o for o in job if o.split("=", 1)[0] in varying], e))
    finally:
        HydraConfig.instance().set_config(config)
    if bad:
        num, swept, error = bad[0]
        more = f" ({len(bad) - 1} more of the {len(jobs)} jobs are refused too)" if len(bad) > 1 else ""
        raise type(error)(f"multirun job {num} ({' '.join(swept) or 'no swept value'}): {error}{more}; "
                          "no job was started")


class RunFolderGuard(Callback):
    """Refuse (or lock) the run folder before Hydra writes anything into it."""

    def __init__(self) -> None:
        self._claimed: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # resolving here also fixes ${now:...} for Hydra's own use (OmegaConf caches it on this config)
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
        resume = OmegaConf.select(config, "resume", default=None)
        try:
            if not resume:  # a resumed run's values are its folder's config, checked by the run
                check_job_config(config)
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
            check_sweep_jobs(config)
            if claim_sweep_folder(folder):
                self._claimed = folder
        except UserError as e:
            refuse(e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.on_run_end(config)
