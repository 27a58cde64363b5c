"""Which config values say *which run* a run is: written into every ``summary.json`` by the runner,
and the keys by which ``uaseg report`` groups runs (one definition for both).

``fold`` and ``seed`` are replicates (the report averages over them); the loss keys describe the
ranking term (irrelevant for a λ = 0 baseline); every other key is the run's context.
"""

from __future__ import annotations

from typing import Any

#: summary.json key -> where it comes from: a config path, ``choice:<group>`` (the Hydra choice) or
#: ``=<value>`` (fixed for runs of train.py; ``method`` is ``ensemble`` for ``uaseg ensemble``)
IDENTITY_SOURCES: dict[str, str] = {
    "method": "=single",
    "dataset": "choice:dataset",
    "model": "choice:model",
    "fold": "dataset.fold",
    "seed": "seed",
    "lambda": "loss.lambda",
    "margin": "loss.margin",
    "scale": "loss.scale",
    "sampling": "loss.sampling",
    "n_wrong": "loss.n_wrong",
    "n_correct": "loss.n_correct",
    "start_epoch": "loss.start_epoch",
    "score": "loss.score",
    "score_temperature": "loss.score_temperature",
    "pairing": "loss.pairing",
    "hinge_power": "loss.hinge_power",
    "wrong_weight": "loss.wrong_weight",
    "consistency": "loss.consistency",
    "consistency_view": "loss.consistency_view",
    "warmup_epochs": "loss.warmup_epochs",
    "balance": "loss.balance",
    "steer": "loss.steer",
    "tag": "tag",
}
IDENTITY_KEYS: tuple[str, ...] = tuple(IDENTITY_SOURCES)
#: the ranking-loss settings of a run
LOSS_KEYS: tuple[str, ...] = tuple(k for k, s in IDENTITY_SOURCES.items() if s.startswith("loss."))
#: what a report averages over
REPLICATE_KEYS: tuple[str, ...] = ("fold", "seed")


def run_identity(cfg: Any, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """The identity of the run configured by ``cfg``. ``choices``: Hydra's config-group choices
    (``HydraConfig.get().runtime.choices``); read from Hydra when it runs, else derived from
    ``_target_`` (composed in tests or notebooks)."""
    from omegaconf import OmegaConf

    if choices is None:
        choices = _hydra_choices()
    out: dict[str, Any] = {}
    for key, source in IDENTITY_SOURCES.items():
        if source.startswith("="):
            out[key] = source[1:]
        elif source.startswith("choice:"):
            group = source.split(":", 1)[1]
            target = OmegaConf.select(cfg, f"{group}._target_", default="?") or "?"
            fallback = None if group == "model" else str(target).rsplit(".", 1)[-1]
            out[key] = choices.get(group, fallback)
        else:
            out[key] = OmegaConf.select(cfg, source, default=None)
    return out


def identity_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The identity recorded in a ``summary.json`` (a fixed key missing from older summaries takes
    its fixed value)."""
    keys = summary.get("identity_keys") or IDENTITY_KEYS
    fixed = {k: s[1:] for k, s in IDENTITY_SOURCES.items() if s.startswith("=")}
    return {k: summary.get(k, fixed.get(k)) for k in keys}


def _hydra_choices() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
