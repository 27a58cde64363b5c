"""The ``python predict.py`` command: parse the options and segment the inputs with
:func:`uaseg.inference.predict_files` (what is written, and how the threshold is chosen, is
documented there)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from uaseg.config.check import check_config
from uaseg.errors import ConfigError, PredictError
from uaseg.inference import predict_files

USAGE = ("python predict.py ckpt=<checkpoint> input=<file or folder> output=<folder> coverage=<0..1> "
         "(or threshold=<u>, or risk=<alpha> [risk_kind=dice|structure|tail@b|fnr] with a calibrated checkpoint)")


def main(cfg: Any) -> list[dict]:
    """Entry point of ``python predict.py`` (a Hydra ``DictConfig`` with the keys of conf/predict.yaml)."""
    missing = [k for k in ("ckpt", "input", "output") if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise PredictError(f"missing {', '.join(f'{k}=' for k in missing)}; usage: {USAGE}")
    try:
        check_config(cfg)  # every option in its domain (coverage, threshold, overwrite, ...) before any work
    except ConfigError as e:
        raise PredictError(str(e)) from None
    inputs = OmegaConf.to_container(cfg.input) if OmegaConf.is_config(cfg.input) else cfg.input
    return predict_files(
        cfg.ckpt,
        inputs,
        cfg.output,
        coverage=cfg.get("coverage"),
        threshold=cfg.get("threshold"),
        overwrite=cfg.get("overwrite", False),
        device=cfg.get("device", "cpu"),
        trust_checkpoint=cfg.get("trust_checkpoint", False),
        risk=cfg.get("risk"),
        risk_method=cfg.get("risk_method"),
        risk_kind=cfg.get("risk_kind"),
        score=cfg.get("score", "max_softmax"),
    )
