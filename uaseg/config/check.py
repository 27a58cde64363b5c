"""The allowed values of every config key with a meaningful domain, checked where values enter.

One table (:data:`DOMAINS`: key -> domain; ``*`` stands for one key level) and one function
(:func:`check_config`) serve ``train.py`` (the whole config, before any work starts), ``predict.py``
(its options) and the datamodules (their constructor arguments, so a dataset built from a script or
a checkpoint is checked by the same rules). A bad value is one :class:`ConfigError` line that names
the key, the value and what is allowed. Keys absent from a config are skipped (each dataset has its
own keys). Rules between keys (a fold below the number of folds, ...) are in :mod:`uaseg.config.rules`.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from uaseg.config.domains import Batches, Choice, Flag, Names, Number, Numbers, RiskKinds, show
from uaseg.config.rules import RULES
from uaseg.errors import ConfigError, UserError, first_cause

_ABSENT = object()


def _test_scores() -> Iterable[str]:
    from uaseg.uncertainty.scores import RUN_FAMILIES, SCORES

    return [n for n, s in SCORES.items() if s.family in RUN_FAMILIES]


def _scores() -> Iterable[str]:
    from uaseg.losses.scores import SCORES

    return sorted(SCORES)


def _aggregations() -> Iterable[str]:
    from uaseg.selective import CASE_AGGREGATIONS

    return sorted(CASE_AGGREGATIONS)


POSITIVE_INT = Number(1, integer=True)
NONNEG_INT = Number(0, integer=True)
FRACTION = Number(0, 1)  # [0, 1]
COVERAGE = Number(0, 1, low_open=True)  # (0, 1]
BATCHES = Batches()
WINDOW = Numbers(Number(), length=2, note="[low, high]")

#: key -> allowed values. Keys a config lacks are skipped.
DOMAINS: dict[str, Any] = {
    # top level (train.py)
    "seed": Number(0, 2**32 - 1, integer=True, null=True),
    "train": Flag(),
    "test": Flag(),
    # top level (predict.py)
    "coverage": Number(0, 1, low_open=True, null=True, note="the fraction of voxels kept"),
    "threshold": Number(null=True, note="refer voxels with uncertainty u > threshold"),
    "risk": Number(0, 1, low_open=True, high_open=True, null=True, note="the Dice risk alpha to control"),
    "risk_method": Choice(("crc", "ltt"), null=True),
    "risk_kind": RiskKinds(many=False, null=True),
    "score": Choice(("max_softmax", "entropy", "margin", "logit_margin", "doctor", "max_logit", "energy", "tcp")),
    "overwrite": Flag(),
    "trust_checkpoint": Flag(),
    # trainer (Lightning checks its other arguments); first, as loss=one_pass computes loss.warmup_epochs from it
    "trainer.max_epochs": Number(1, integer=True, note="at least one epoch is trained"),
    "trainer.max_steps": Number(-1, integer=True, note="-1 = no limit; 0 trains nothing"),
    "trainer.limit_train_batches": BATCHES,
    "trainer.limit_val_batches": BATCHES,
    "trainer.limit_test_batches": BATCHES,
    "trainer.log_every_n_steps": POSITIVE_INT,
    "trainer.check_val_every_n_epoch": Number(1, integer=True, null=True),
    "trainer.accumulate_grad_batches": POSITIVE_INT,
    "trainer.gradient_clip_val": Number(0, null=True),
    "trainer.num_sanity_val_steps": Number(-1, integer=True, note="-1 = all"),
    # loss
    "loss.lambda": Number(0, note="0 = the baseline"),
    "loss.margin": Number(0, 1, note="in units of u: the probability scores lie in [0, 1]; logits for logit_margin"),
    "loss.scale": Number(0, low_open=True),
    "loss.sampling": Choice(("exact", "subsample")),
    "loss.n_wrong": POSITIVE_INT,
    "loss.n_correct": POSITIVE_INT,
    "loss.start_epoch": NONNEG_INT,
    "loss.ignore_index": Number(integer=True, null=True),
    "loss.score": Choice(_scores),
    "loss.score_temperature": Number(0, low_open=True, note="1 = the paper"),
    "loss.pairing": Choice(("batch", "case", "class")),
    "loss.hinge_power": Choice((1, 2)),
    "loss.wrong_weight": Choice(("uniform", "dice")),
    "loss.consistency": Number(0, note="0 = off"),
    "loss.consistency_view": Choice(("flip", "noise")),
    "loss.warmup_epochs": Number(0, note="epochs of linear lambda warm-up; 0 = none"),
    "loss.steer": Flag(),
    "loss.seg_loss.weight": Numbers(Number(0), null=True, note="one weight per class"),
    "loss.seg_loss.label_smoothing": FRACTION,
    "loss.seg_loss.lambda_dice": Number(0),
    "loss.seg_loss.lambda_ce": Number(0),
    # dataset (every datamodule; absent keys are skipped)
    "dataset.patch_size": Numbers(POSITIVE_INT, note="voxels per axis"),
    "dataset.batch_size": Number(1, integer=True, note="patches per optimiser step"),
    "dataset.samples_per_image": POSITIVE_INT,
    "dataset.num_workers": NONNEG_INT,
    "dataset.fold": NONNEG_INT,
    "dataset.num_folds": Number(2, integer=True),
    "dataset.val_fraction": Number(0, 1, low_open=True, high_open=True),
    "dataset.sw_overlap": Number(0, 1, high_open=True),
    "dataset.fg_fraction": FRACTION,
    "dataset.num_cases": Number(3, integer=True),
    "dataset.image_size": Number(16, integer=True),
    "dataset.data_seed": Number(0, 2**32 - 1, integer=True),
    "dataset.seed": Number(0, 2**32 - 1, integer=True),
    "dataset.spacing": Numbers(Number(0, low_open=True), length=3, scalar=True, null=True,
                               note="mm; null = the dataset's median spacing (nnunet, decathlon)"),
    "dataset.intensity_window": WINDOW,
    "dataset.hu_window": WINDOW,
    "dataset.paper_crop_margin": NONNEG_INT,
    "dataset.paper_crop": Flag(),
    "dataset.check_files": Flag(),
    "dataset.cache": Flag(),
    "dataset.cv_on_train": Flag(),
    "dataset.augment.*_prob": FRACTION,
    "dataset.augment.rotate_deg": Number(0, 180),
    "dataset.augment.scale": Number(0, 1, high_open=True),
    "dataset.augment.gamma": Numbers(Number(0, low_open=True), length=2, note="[low, high]"),
    "dataset.augment.*_scale": Number(0),
    "dataset.augment.*_shift": Number(0),
    # model
    "model.optimizer.lr": Number(0, low_open=True),
    "model.optimizer.weight_decay": Number(0),
    "model.inferer.sw_batch_size": POSITIVE_INT,
    "model.inferer.roi_size": Numbers(POSITIVE_INT),
    "model.inferer.overlap": Number(0, 1, high_open=True),
    "model.net.filters": Numbers(POSITIVE_INT),
    "model.dropout": Number(0, 1, high_open=True, note="0 = the paper's network"),
    # callbacks
    "callbacks.model_checkpoint.save_top_k": Number(-1, integer=True, note="-1 = all"),
    "callbacks.heartbeat.every_s": Number(0, note="seconds between progress lines without a terminal bar"),
    # eval
    "eval.coverages": Numbers(COVERAGE),
    "eval.quantize_bits": Number(1, 24, integer=True, null=True),
    "eval.case_aggregation": Choice(_aggregations),
    "eval.bootstrap": NONNEG_INT,
    "eval.panel_coverage": COVERAGE,
    "eval.save_arrays": Flag(),
    "eval.figures": Flag(),
    "eval.export": Flag(),
    "eval.scores": Names(_test_scores),
    "eval.mc_samples": POSITIVE_INT,
    "eval.temperature_voxels": POSITIVE_INT,
    # confidence_head (ConfidNet, uaseg/uncertainty/confidnet.py)
    "confidence_head.epochs": POSITIVE_INT,
    "confidence_head.lr": Number(0, low_open=True),
    "confidence_head.hidden": POSITIVE_INT,
    "eval.risk_control.alpha": Numbers(Number(0, 1, low_open=True, high_open=True), scalar=True, null=True,
                                       note="Dice risk levels"),
    "eval.risk_control.delta": Number(0, 1, low_open=True, high_open=True),
    "eval.risk_control.risk": RiskKinds(),
    "eval.risk_control.pvalue": Choice(("hb", "wsr", "binom")),
    "eval.risk_control.unit": Choice(("patient", "case")),
    # the shift testbed (uaseg/shift; eval.shift.kinds and the rest as a whole: uaseg.config.rules.rule_shift)
    "eval.shift.severities": Numbers(Number(1, 5, integer=True), note="severities 1..5"),
    "eval.shift.seed": Number(0, 2**32 - 1, integer=True),
    "eval.shift.groups": Flag(),
    "eval.shift.fail_dice": Number(0, 1, low_open=True, note="a case below this Dice fails"),
    "eval.shift.recalibrate": Flag(),
    "eval.shift.case_referral.alpha": Number(0, 1, low_open=True, high_open=True, null=True,
                                             note="fraction of cases accepted and failing; null = off"),
    "eval.shift.case_referral.method": Choice(("crc", "ltt")),
    "eval.shift.case_referral.delta": Number(0, 1, low_open=True, high_open=True),
    "eval.shift.case_referral.among": Choice(("all", "accepted")),
}


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        v = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)  # missing (???): absent
        return OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
    except Exception as e:  # a resolver (e.g. the dataset plan) failed: the user's problem, not OmegaConf's wrapper
        cause = first_cause(e, UserError)
        if cause is None:
            raise
        raise type(cause)(str(cause)) from e


def _keys(cfg: DictConfig, pattern: str) -> list[str]:
    """``pattern`` itself, or the keys its ``*`` level matches in ``cfg``."""
    if "*" not in pattern:
        return [pattern]
    parent, leaf = pattern.rsplit(".", 1)
    node = OmegaConf.select(cfg, parent, default=None)
    if not isinstance(node, DictConfig):
        return []
    return [f"{parent}.{k}" for k in node.keys() if fnmatch.fnmatchcase(str(k), leaf)]




def check_config(cfg: Mapping | DictConfig) -> None:
    """Raise :class:`ConfigError` (one line: key, value, allowed values) for the first value of
    ``cfg`` outside its domain in :data:`DOMAINS`, then for the first broken rule of :data:`RULES`."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    for pattern, domain in DOMAINS.items():
        for key in _keys(cfg, pattern):
            value = _get(cfg, key)
            if value is not _ABSENT and not domain.allows(value):
                raise ConfigError(f"{key}={show(value)}: expected {domain.describe()}")

    def get(key: str) -> Any:
        v = _get(cfg, key)
        return None if v is _ABSENT else v

    for rule in RULES:  # rules between keys, run after every key passed its own domain
        message = rule(get)
        if message:
            raise ConfigError(message)


def unresolved_missing_keys(cfg: Any, prefix: str = "") -> list[str]:
    """The ``???`` keys of ``cfg``, found without resolving interpolations (``OmegaConf.missing_keys``
    resolves them, and a resolver such as the dataset plan cannot run before ``dataset.root`` is set)."""
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


def check_missing(cfg: DictConfig) -> None:
    """A :class:`ConfigError` listing the mandatory (``???``) values the user has not set."""
    missing = sorted(unresolved_missing_keys(cfg))
    if missing:
        raise ConfigError("missing mandatory config values: " + ", ".join(f"{k}=..." for k in missing)
                          + " (e.g. dataset.root=/path/to/the/downloaded/dataset)")
