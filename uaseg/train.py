"""Experiment logic of ``python train.py``: build everything from the config, fit, test the best
checkpoint, and leave an honest run folder behind (config, checkpoints, logs, summary.json)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import uaseg.resolvers  # noqa: F401  (registers ${uaseg.*} config resolvers)
from uaseg.callbacks import SelectiveReportWriter
from uaseg.data import build_datamodule
from uaseg.errors import ConfigError, UserError
from uaseg.identity import run_identity
from uaseg.inference.calibrate import RiskControlSettings, calibrate_checkpoint
from uaseg.io import update_checkpoint, write_json
from uaseg.models import SelectiveSegModule

log = logging.getLogger(__name__)

__all__ = ["train", "build_datamodule", "build_module", "USER_ERRORS", "ConfigError"]


def build_module(cfg: DictConfig) -> SelectiveSegModule:
    """The module from the ``model``, ``loss`` and ``eval`` groups, with the resolved ``dataset``
    config (prediction preprocesses new images with it) and the run identity as hyper-parameters."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    target = model_cfg.pop("_target_")
    model_cfg.pop("dropout", None)  # read by the net through ${..dropout}
    return instantiate(
        {"_target_": target},
        **model_cfg,
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        evaluation=OmegaConf.to_container(cfg.eval, resolve=True),
        dataset=OmegaConf.to_container(cfg.dataset, resolve=True),
        run_identity=run_identity(cfg),
        _recursive_=False,
    )


def build_callbacks(cfg: DictConfig) -> list[Any]:
    """The ``callbacks`` group, plus the test report writer configured from the ``eval`` group."""
    return _instantiate_group(cfg.get("callbacks")) + [SelectiveReportWriter.from_eval_config(cfg.eval, cfg.paths.output_dir)]


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def _resolve_ckpt(cfg: DictConfig, out: Path) -> str | None:
    """An explicit ``ckpt_path``, or ``resume``'s last checkpoint; a fresh run refuses a folder
    that already holds a run (nothing a user has produced is overwritten)."""
    if cfg.get("resume"):
        last = out / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise FileNotFoundError(f"resume={cfg.resume}: no {last} to resume from")
        return str(last)
    if cfg.get("ckpt_path"):
        if not Path(cfg.ckpt_path).exists():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: file not found")
        return str(cfg.ckpt_path)
    # a DDP worker started by rank 0 shares rank 0's new folder: only rank 0 checks it
    relaunched = int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0
    used = (out / "summary.json").exists() or (out / "checkpoints").exists()
    if cfg.get("train", True) and used and not relaunched:
        raise FileExistsError(
            f"{out} already holds a run; choose another hydra.run.dir, or continue it with resume={out}"
        )
    return None


def resumed_config(cfg: DictConfig) -> DictConfig:
    """``resume=<run folder>``: that run's own config, plus this command's value overrides
    (e.g. ``trainer.max_epochs=20`` to train longer)."""
    folder = Path(cfg.resume)
    saved = folder / ".hydra" / "config.yaml"
    if not saved.exists():
        raise FileNotFoundError(f"resume={folder}: {saved} not found (is this a uaseg run folder?)")
    resumed = OmegaConf.load(saved)
    extra = []
    try:
        from hydra.core.hydra_config import HydraConfig

        extra = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    except ValueError:
        pass
    groups = [o for o in extra if "=" in o and "." not in o.split("=", 1)[0].lstrip("+~")]
    if groups:
        raise ConfigError(f"resume: config-group overrides {groups} cannot change a run being resumed")
    resumed.merge_with(OmegaConf.from_dotlist([o.lstrip("+") for o in extra]))
    resumed.resume = str(folder)
    resumed.paths.output_dir = cfg.paths.output_dir
    return resumed


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``: loggers show and filter flat keys best."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def unresolved_missing_keys(cfg: Any, prefix: str = "") -> list[str]:
    """The ``???`` keys of ``cfg``, found without resolving interpolations (``OmegaConf.missing_keys``
    resolves them, and a resolver such as the dataset plan cannot run before ``dataset.root`` is set)."""
    from omegaconf import DictConfig, ListConfig

    out: list[str] = []
    keys = cfg.keys() if isinstance(cfg, DictConfig) else range(len(cfg)) if isinstance(cfg, ListConfig) else []
    for key in keys:
        node = cfg._get_node(key)
        name = f"{prefix}{key}" if isinstance(cfg, DictConfig) else f"{prefix.rstrip('.')}[{key}]"
        if node is None or node._is_interpolation():
            continue
        if node._is_missing():
            out.append(name)
        elif isinstance(node, (DictConfig, ListConfig)):
            out += unresolved_missing_keys(node, f"{name}.")
    return out


#: errors that are the user's to fix: a one-line message is more useful than a traceback
USER_ERRORS = (UserError, FileExistsError, FileNotFoundError)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; a failure is recorded in the run folder, then re-raised
    (so a multirun goes on with its other jobs and reports this one as failed)."""
    out = Path(cfg.paths.output_dir)
    try:
        missing = sorted(unresolved_missing_keys(cfg))
        if missing:
            raise ConfigError(
                "missing mandatory config values: "
                + ", ".join(f"{k}=..." for k in missing)
                + " (e.g. dataset.root=/path/to/the/downloaded/dataset)"
            )
        if cfg.get("resume"):
            cfg = resumed_config(cfg)
        return _train(cfg, out)
    except BaseException as e:
        if not isinstance(e, FileExistsError):  # never write into another run's folder
            _record_failure(out, e)
        raise
    finally:
        _close_wandb()


def _train(cfg: DictConfig, out: Path) -> dict[str, Any]:
    ckpt_path = _resolve_ckpt(cfg, out)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on tensor cores

    datamodule = build_datamodule(cfg.dataset)
    risk_control = _risk_control_settings(cfg, datamodule)
    model = build_module(cfg)
    callbacks = build_callbacks(cfg)
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if risk_control is not None and trainer.checkpoint_callback is None:
        raise ConfigError("eval.risk_control calibrates the selected checkpoint, but no checkpoint is saved "
                          "(callbacks.model_checkpoint is off, or trainer.enable_checkpointing=false)")
    for lg in loggers:
        lg.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))

    metrics: dict[str, Any] = {}
    best = ckpt_path or ""
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint else ""
        if checkpoint is not None and checkpoint.best_model_score is not None:
            metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
    if risk_control is not None and best:
        # every rank computes (same weights, same cases), rank 0 writes, all load it in trainer.test
        calibrate_checkpoint(best, risk_control, datamodule, trainer.strategy.root_device,
                             write=trainer.is_global_zero)
        trainer.strategy.barrier()
    if cfg.get("test", True):
        if not best:
            log.warning("no checkpoint to test; testing the current weights")
        if "temperature" in model.scores:
            _fit_temperature(model, best, datamodule, cfg, trainer, own_checkpoint=bool(cfg.get("train", True)))
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if trainer.is_global_zero:
        write_json(out / "metrics.json", dict(sorted(metrics.items())))
    return metrics


def _fit_temperature(model: SelectiveSegModule, ckpt: str, datamodule, cfg: DictConfig, trainer: L.Trainer,
                     own_checkpoint: bool) -> None:
    """Temperature of the ``temperature`` score: fitted on the validation cases with the weights that
    will be tested, kept on ``model`` and, for a checkpoint this run wrote, in that checkpoint."""
    from uaseg.uncertainty.temperature import fit_temperature, validation_logits

    source = SelectiveSegModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True) if ckpt else model
    source = source.to(trainer.strategy.root_device).eval()
    datamodule.setup("validate")
    logits, labels = validation_logits(source, datamodule.val_dataloader(), int(cfg.eval.temperature_voxels),
                                       seed=int(cfg.get("seed") or 0))
    model.temperature = fit_temperature(logits, labels)
    log.info("temperature T = %.4f fitted on %d validation voxels", model.temperature, labels.numel())
    if ckpt and own_checkpoint and trainer.is_global_zero:
        update_checkpoint(ckpt, {"uaseg_temperature": model.temperature})


def _risk_control_settings(cfg: DictConfig, datamodule) -> RiskControlSettings | None:
    """``eval.risk_control``, checked before training: the selected checkpoint is calibrated on the
    validation cases after fit, so they must suffice for every requested alpha (and delta)."""
    settings = RiskControlSettings.from_config(cfg.eval.get("risk_control"))
    if settings is None:
        return None
    if not cfg.get("train", True):
        raise ConfigError("eval.risk_control calibrates the checkpoint a training run selects; for an "
                          "existing checkpoint use: uaseg calibrate <run folder> alpha=...")
    if cfg.eval.get("quantize_bits") is not None:
        raise ConfigError("eval.risk_control evaluates the calibrated thresholds exactly: set eval.quantize_bits=null")
    if "max_softmax" not in cfg.eval.scores:
        raise ConfigError("eval.risk_control calibrates u = 1 - max softmax: list max_softmax in eval.scores")
    datamodule.setup()
    settings.check_size(len(datamodule.splits["val"]))
    return settings


def _record_failure(out: Path, error: BaseException) -> None:
    """``failed.json`` tells the report (and the user) why this job has no summary."""
    import traceback

    try:
        write_json(out / "failed.json", {"error": f"{type(error).__name__}: {error}",
                                         "traceback": "".join(traceback.format_exception(error))})
    except OSError:
        log.exception("could not write %s/failed.json", out)


def _close_wandb() -> None:
    """Always close a W&B run, so the next job of a multirun starts its own (as in
    lightning-hydra-template's task_wrapper)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
