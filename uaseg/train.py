"""Experiment logic of ``python train.py``: build everything from the config, fit, test the best
checkpoint, and leave an honest run folder behind (config, checkpoints, logs, summary.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from uaseg.data.base import SegDataModule
from uaseg.models import SelectiveSegModule

log = logging.getLogger(__name__)


def build_datamodule(dataset_cfg: DictConfig) -> SegDataModule:
    """Instantiate the dataset config; ``meta`` is for other configs to read, not an argument."""
    cfg = OmegaConf.to_container(dataset_cfg, resolve=True)
    cfg.pop("meta", None)
    return instantiate(cfg, _convert_="all")


def build_module(cfg: DictConfig) -> SelectiveSegModule:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    target = model_cfg.pop("_target_")
    return instantiate(
        {"_target_": target},
        **model_cfg,
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        evaluation=OmegaConf.to_container(cfg.eval, resolve=True),
        _recursive_=False,
    )


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What makes this run this run: written into summary.json and used by the report to group."""
    choices = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = dict(HydraConfig.get().runtime.choices)
    except ValueError:  # composed outside @hydra.main (tests, notebooks)
        pass
    return {
        "dataset": choices.get("dataset", cfg.dataset.get("_target_", "?").rsplit(".", 1)[-1]),
        "model": choices.get("model"),
        "fold": cfg.dataset.get("fold"),
        "seed": cfg.get("seed"),
        "lambda": cfg.loss.get("lambda"),
        "margin": cfg.loss.get("margin"),
        "scale": cfg.loss.get("scale"),
        "sampling": cfg.loss.get("sampling"),
        "n_wrong": cfg.loss.get("n_wrong"),
        "n_correct": cfg.loss.get("n_correct"),
        "start_epoch": cfg.loss.get("start_epoch"),
        "tag": cfg.get("tag"),
    }


def _resolve_ckpt(cfg: DictConfig, out: Path) -> str | None:
    """``ckpt_path=last`` resumes this run folder; a fresh run refuses a folder that holds a run."""
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        last = out / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise FileNotFoundError(
                f"ckpt_path=last: no {last}; pass hydra.run.dir=<the run folder to resume>"
            )
        return str(last)
    if ckpt:
        if not Path(ckpt).exists():
            raise FileNotFoundError(f"ckpt_path={ckpt}: file not found")
        return str(ckpt)
    if cfg.get("train", True) and ((out / "summary.json").exists() or (out / "checkpoints").exists()):
        raise FileExistsError(
            f"{out} already holds a run; choose another hydra.run.dir, or resume it with ckpt_path=last"
        )
    return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; returns the test metrics (and the best validation score)."""
    out = Path(cfg.paths.output_dir)
    ckpt_path = _resolve_ckpt(cfg, out)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)

    datamodule = build_datamodule(cfg.dataset)
    model = build_module(cfg)
    model.run_identity = run_identity(cfg)
    # stored in checkpoints so predict.py preprocesses new images exactly as in training
    model.dataset_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, Any] = {}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not cfg.get("train", True):
            best = ckpt_path or ""
        if not best:
            log.warning("no best checkpoint found; testing the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics
