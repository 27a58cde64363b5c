"""Datasets: one :class:`~uaseg.data.base.SegDataModule` per ``conf/dataset/*.yaml``."""

from __future__ import annotations

from typing import Any


def build_datamodule(dataset_cfg: Any):
    """Instantiate a ``dataset`` config (DictConfig or the plain dict stored in checkpoints);
    ``meta`` is for other configs to read, not an argument."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    from uaseg.config.moved import current_target
    from uaseg.errors import UserError, first_cause

    try:
        cfg = dict(OmegaConf.to_container(dataset_cfg, resolve=True) if isinstance(dataset_cfg, DictConfig) else dataset_cfg)
    except Exception as e:  # a resolver (the dataset plan) failed: show the user's problem, not OmegaConf's wrapper
        cause = first_cause(e, UserError)
        if cause is None:
            raise
        raise type(cause)(str(cause)) from e
    cfg.pop("meta", None)
    cfg["_target_"] = current_target(cfg.get("_target_"))  # a checkpoint made before its module moved
    return instantiate(cfg, _convert_="all")
