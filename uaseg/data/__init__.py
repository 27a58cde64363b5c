"""Datasets: one :class:`~uaseg.data.base.SegDataModule` per ``conf/dataset/*.yaml``."""

from __future__ import annotations

from typing import Any


def build_datamodule(dataset_cfg: Any):
    """Instantiate a ``dataset`` config (DictConfig or the plain dict stored in checkpoints);
    ``meta`` is for other configs to read, not an argument."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    cfg = dict(OmegaConf.to_container(dataset_cfg, resolve=True) if isinstance(dataset_cfg, DictConfig) else dataset_cfg)
    cfg.pop("meta", None)
    return instantiate(cfg, _convert_="all")
