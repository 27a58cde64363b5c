"""Experiment logic of ``python train.py``: build everything from the config, fit, test the best
checkpoint, and leave an honest run folder behind (config, checkpoints, logs, summary.json)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

import uaseg.config.resolvers  # noqa: F401  (registers ${uaseg.*} config resolvers)
from uaseg.callbacks import EpochLog, SelectiveReportWriter
from uaseg.data import build_datamodule
from uaseg.config.check import check_config, check_missing, unresolved_missing_keys  # noqa: F401 (re-exported)
from uaseg.errors import (
    ConfigError, NonFiniteLossError, RunFolderError, TerminatedError, UserError, root_cause,
)
from uaseg.config.identity import run_identity
from uaseg.io import WriteError, check_checkpoint_file, write_json
from uaseg.models import SelectiveSegModule
from uaseg.runs.checkpoint_io import check_weights_fit
from uaseg.runs.resume import own_checkpoint, resumed_config
from uaseg.runs.folder import (
    claim_run_folder, created_here, discard_unused_folder, release_run_folder, retire_failure,
)
from uaseg.runs.start_block import announce_start, next_commands
from uaseg.runs.trust import check_checkpoint_file as check_checkpoint_targets
from uaseg.stages import (
    ConfidenceHead, RiskCalibration, StageContext, Temperature, TestReport, ValCurves, run_stages, wall_clock,
)
from uaseg.stages.risk_calibration import risk_control_settings
from uaseg.stages.test_report import add_stage_seconds, closing_block

log = logging.getLogger(__name__)

#: the stages after training, in the order they run (:mod:`uaseg.stages`)
STAGES = (RiskCalibration(), Temperature(), ConfidenceHead(), ValCurves(), TestReport())

__all__ = ["train", "build_datamodule", "build_module", "resumed_config", "USER_ERRORS", "ConfigError"]


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
    return _instantiate_group(cfg.get("callbacks")) + [SelectiveReportWriter.from_eval_config(cfg.eval, cfg.paths.output_dir),
                                                        EpochLog()]


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


#: Lightning's ``ckpt_path`` aliases look for checkpoints in *this* run's folder, which is a new one
_LIGHTNING_ALIASES = ("last", "best", "hpc", "registry")


def _resolve_ckpt(cfg: DictConfig, out: Path) -> str | None:
    """``resume``'s last checkpoint, or an explicit ``ckpt_path`` (checked readable, and naming only
    classes uaseg configures, before any work). Whether this run may use its folder was decided by
    :func:`uaseg.runs.folder.claim_run_folder`."""
    if cfg.get("resume"):
        last = out / "checkpoints" / "last.ckpt"
        check_checkpoint_targets(last, trust=bool(cfg.get("trust_checkpoint")))
        return str(last)
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    if str(ckpt) in _LIGHTNING_ALIASES:
        raise ConfigError(
            f"ckpt_path={ckpt}: a new run folder holds no checkpoint; continue a run in its own folder with "
            "resume=<run folder>, or give a checkpoint file to start from its weights"
        )
    if not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt}: file not found")
    check_checkpoint_file(ckpt, what="ckpt_path")
    check_checkpoint_targets(ckpt, trust=bool(cfg.get("trust_checkpoint")))
    return str(ckpt)


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


#: errors that are the user's to fix or act on: a one-line message is more useful than a traceback
USER_ERRORS = (UserError, FileExistsError, FileNotFoundError, NonFiniteLossError, TerminatedError, WriteError)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; a failure is recorded in the run folder, then re-raised
    (so a multirun goes on with its other jobs and reports this one as failed). The run folder is
    claimed first (:mod:`uaseg.runs.folder`), then every config value is checked, before any work. A
    value refused before any work leaves no run folder behind when this call created it."""
    out = Path(cfg.paths.output_dir)
    created = created_here(out)  # RunFolderGuard made it for this run (before Hydra wrote into it)
    new_folder = created or not out.exists()
    claimed = started = False
    resume = bool(cfg.get("resume"))
    try:
        claimed = claim_run_folder(out, resume=cfg.get("resume"), hydra_files=_hydra_running())
        check_missing(cfg)
        if resume:
            cfg = resumed_config(cfg)
        check_config(cfg)
        built = _set_up(cfg, out)
        if resume:
            retire_failure(out)
        started = True
        return _train(cfg, out, *built)
    except RunFolderError:
        raise  # never write into a folder this run may not use
    except FloatingPointError as e:
        error = NonFiniteLossError(f"{e}; {_checkpoint_status(out)}")
        _record_failure(out, error)
        raise error from e
    except BaseException as e:
        if not started and (new_folder or resume) and isinstance(e, UserError):
            raise  # refused before any work: a new folder is removed below, a resumed one left as it was
        if isinstance(e, SIGTERMException):  # Lightning's, raised without a message
            e = TerminatedError(f"terminated by SIGTERM (e.g. a cluster scheduler's preemption or time limit); "
                                f"{_checkpoint_status(out)}")
            _record_failure(out, e)
            raise e from None
        _record_failure(out, e)
        raise
    finally:
        _close_wandb()
        if new_folder and not started and (claimed or created):  # emptied while still locked, then released
            discard_unused_folder(out, hydra_files=not claimed)  # Hydra wrote its record of this run
        release_run_folder(out)  # also RunFolderGuard's lock: train.py exits on an error before Hydra's on_run_end


def _hydra_running() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def log_lightning_once() -> None:
    """Lightning gives its loggers a console handler of their own; under Hydra, whose root handlers
    (console and ``<run>/train.log``) also receive them, every Lightning line was printed twice.
    With root handlers in place, Lightning's are removed and its records go to the root once."""
    if not logging.getLogger().handlers:
        return  # no root handler (a library call without Hydra): Lightning's own handlers are the only ones
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            lg.removeHandler(handler)
        lg.propagate = True


def _set_up(cfg: DictConfig, out: Path) -> tuple:
    """Everything built before the first write into the run folder; a value refused here is refused
    before any work (the run folder is not kept)."""
    log_lightning_once()
    announce_start(cfg, out)  # where and what, before any work (uaseg/runs/start_block.py)
    ckpt_path = _resolve_ckpt(cfg, out)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on tensor cores

    datamodule = build_datamodule(cfg.dataset)
    risk_control = risk_control_settings(cfg, datamodule)
    model = build_module(cfg)
    if ckpt_path:
        check_weights_fit(model, ckpt_path, *(
            ("resume", "resume continues the run's own network: drop the model.* overrides, or start a new run")
            if cfg.get("resume") else
            ("ckpt_path", "set the model.* values of the run that wrote it")))
    callbacks = build_callbacks(cfg)
    loggers = _instantiate_group(cfg.get("logger"))
    trainer = _build_trainer(cfg, callbacks, loggers)
    if risk_control is not None and trainer.checkpoint_callback is None:
        raise ConfigError("eval.risk_control calibrates the selected checkpoint, but no checkpoint is saved "
                          "(callbacks.model_checkpoint is off, or trainer.enable_checkpointing=false)")
    return ckpt_path, datamodule, risk_control, model, loggers, trainer


def _train(cfg: DictConfig, out: Path, ckpt_path, datamodule, risk_control, model, loggers,
           trainer: L.Trainer) -> dict[str, Any]:
    for lg in loggers:
        lg.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))

    metrics: dict[str, Any] = {}
    best = ckpt_path or ""
    seconds: dict[str, float] = {}
    if cfg.get("train", True):
        start = wall_clock(trainer.strategy.root_device)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        seconds["train"] = wall_clock(trainer.strategy.root_device) - start
        if trainer.global_step == 0:
            raise ConfigError(
                "training ran 0 optimiser steps (see trainer.max_steps, trainer.limit_train_batches and the size "
                "of the training split); no summary is written for an untrained network"
            )
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        checkpoint = trainer.checkpoint_callback
        best = own_checkpoint(checkpoint.best_model_path, checkpoint.dirpath) if checkpoint else ""
        if checkpoint is not None and checkpoint.best_model_score is not None:
            metrics[f"best/{checkpoint.monitor}"] = float(checkpoint.best_model_score)
    if cfg.get("test", True) and not best:
        log.warning("no checkpoint to test; testing the current weights")
    seconds = run_stages(STAGES, StageContext(
        cfg=cfg, model=model, datamodule=datamodule, trainer=trainer, checkpoint=best,
        own_checkpoint=bool(cfg.get("train", True)), trust=bool(cfg.get("trust_checkpoint")),
        device=trainer.strategy.root_device, seed=int(cfg.get("seed") or 0), risk_control=risk_control,
        metrics=metrics, seconds=seconds))
    log.info("wall seconds: %s", ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    if trainer.is_global_zero:
        if "test" in seconds and getattr(model, "test_result", None) is not None:  # the writer wrote summary.json
            add_stage_seconds(out / "summary.json", seconds)
        write_json(out / "metrics.json", dict(sorted(metrics.items())))
        log.info("%s", closing_block(out, getattr(model, "test_result", None), best, next_step=next_commands(cfg, out)))
    return metrics


def _build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    """The ``trainer`` group; Lightning's refusal of an argument becomes one line."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    except (InstantiationException, MisconfigurationException, ValueError, TypeError) as e:
        cause = root_cause(e)  # Hydra wraps the Trainer's own refusal in an InstantiationException
        if not isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
            raise
        text = str(cause).strip()
        raise ConfigError(f"trainer: {text.splitlines()[0] if text else type(cause).__name__}") from e


def _checkpoint_status(out: Path) -> str:
    """Which checkpoint a user can go back to after training failed, in one clause."""
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return "no checkpoint was saved before this step (nothing to resume from)"
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
        finite = all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    except Exception as e:  # a damaged file is reported, not raised over the real error
        return f"{last} exists but cannot be read ({type(e).__name__})"
    if not finite:
        return f"{last} (epoch {state.get('epoch')}) holds non-finite weights: start from an earlier checkpoint"
    return f"last good checkpoint: {last} (epoch {state.get('epoch')}); continue with resume={out}"


def _record_failure(out: Path, error: BaseException) -> None:
    """``failed.json`` tells the report (and the user) why this job has no summary."""
    import traceback

    try:
        write_json(out / "failed.json", {"error": f"{type(error).__name__}: {error}",
                                         "traceback": "".join(traceback.format_exception(error))})
    except OSError as e:  # e.g. the disk is full: one line; the original error follows
        log.error("could not record the failure: %s", e)


def _close_wandb() -> None:
    """Always close a W&B run, so the next job of a multirun starts its own (as in
    lightning-hydra-template's task_wrapper)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
