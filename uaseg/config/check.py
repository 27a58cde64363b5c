"""The allowed values of every config key with a meaningful domain, checked where values enter.

One table (:data:`DOMAINS`: key -> domain; ``*`` stands for one key level) and one function
(:func:`check_config`) serve ``train.py`` (the whole config, before any work starts), ``predict.py``
(its options) and the datamodules (their constructor arguments, so a dataset built from a script or
a checkpoint is checked by the same rules). A bad value is one :class:`ConfigError` line that names
the key, the value and what is allowed. Keys absent from a config are skipped (each dataset has its
own keys). Rules between keys (a fold below the number of folds, ...) are in :data:`RULES`.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from uaseg.config.domains import Batches, Choice, Flag, Names, Number, Numbers, RiskKinds
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
    "score": Choice(("max_softmax", "entropy", "margin", "doctor", "max_logit", "energy", "tcp")),
    "overwrite": Flag(),
    "trust_checkpoint": Flag(),
    # loss
    "loss.lambda": Number(0, note="0 = the baseline"),
    "loss.margin": Number(0, 1, note="uncertainties u = 1 - max softmax lie in [0, 1]"),
    "loss.scale": Number(0, low_open=True),
    "loss.sampling": Choice(("exact", "subsample")),
    "loss.n_wrong": POSITIVE_INT,
    "loss.n_correct": POSITIVE_INT,
    "loss.start_epoch": NONNEG_INT,
    "loss.ignore_index": Number(integer=True, null=True),
    "loss.score": Choice(_scores),
    "loss.pairing": Choice(("batch", "case", "class")),
    "loss.hinge_power": Choice((1, 2)),
    "loss.wrong_weight": Choice(("uniform", "dice")),
    "loss.consistency": Number(0, note="0 = off"),
    "loss.consistency_view": Choice(("flip", "noise")),
    "loss.warmup_epochs": Number(0, note="epochs of linear lambda warm-up; 0 = none"),
    "loss.balance": Number(0, low_open=True, null=True,
                           note="gradient-norm ratio at the logits; null = fixed lambda x scale"),
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
    # trainer (Lightning checks its other arguments)
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


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_show(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def _rule_fold(get) -> str | None:
    fold, folds = get("dataset.fold"), get("dataset.num_folds")
    if isinstance(fold, int) and isinstance(folds, int) and not fold < folds:
        return f"dataset.fold={fold}: expected an integer in 0..{folds - 1} (dataset.num_folds={folds})"
    return None


def _rule_batch(get) -> str | None:
    b, s = get("dataset.batch_size"), get("dataset.samples_per_image")
    if isinstance(b, int) and isinstance(s, int) and s > 0 and b % s:
        return (f"dataset.batch_size={b}: expected a multiple of dataset.samples_per_image={s} "
                "(patches per step = images per step x patches per image)")
    return None


def _rule_patch_dims(get) -> str | None:
    patch, dims = get("dataset.patch_size"), get("dataset.meta.spatial_dims")
    if isinstance(patch, list) and isinstance(dims, int) and len(patch) != dims:
        return f"dataset.patch_size={_show(patch)}: expected {dims} entries (this dataset is {dims}-D)"
    return None


def _rule_windows(get) -> str | None:
    for key in ("dataset.intensity_window", "dataset.hu_window", "dataset.augment.gamma"):
        w = get(key)
        if isinstance(w, list) and len(w) == 2 and not w[0] < w[1] and not (key.endswith("gamma") and w[0] == w[1]):
            return f"{key}={_show(w)}: expected [low, high] with low < high"
    return None


def _rule_patch_stride(get) -> str | None:
    """The U-Net halves the patch at each downsampling and joins the skips back: every axis of the
    patch must be a multiple of the product of the strides (else a tensor-size error in the first step)."""
    patch, strides = get("dataset.patch_size"), get("model.net.strides")
    if not (isinstance(patch, list) and isinstance(strides, list) and all(isinstance(p, int) for p in patch)):
        return None
    total = [1] * len(patch)
    for s in strides:
        per = s if isinstance(s, list) else [s] * len(patch)
        if len(per) != len(patch) or not all(isinstance(x, int) and x > 0 for x in per):
            return None  # another shape of strides: the network checks it
        total = [t * x for t, x in zip(total, per)]
    if all(p % t == 0 for p, t in zip(patch, total)):
        return None
    fit = [max(t, p // t * t) for p, t in zip(patch, total)]
    downs = sum(1 for s in strides if (max(s) if isinstance(s, list) else s) > 1)
    return (f"dataset.patch_size={_show(patch)}: each entry must be a multiple of {_show(total)}, the network's total "
            f"stride ({downs} downsamplings, model.net.strides={_show(strides)}); e.g. dataset.patch_size={_show(fit)}")


def _rule_start_epoch(get) -> str | None:
    lam, start, epochs = get("loss.lambda"), get("loss.start_epoch"), get("trainer.max_epochs")
    if isinstance(lam, (int, float)) and lam > 0 and isinstance(start, int) and isinstance(epochs, int) and start >= epochs:
        return (f"loss.start_epoch={start}: the ranking term (loss.lambda={_show(lam)}) would never run, as "
                f"trainer.max_epochs={epochs} trains epochs 0..{epochs - 1}; lower loss.start_epoch, raise "
                "trainer.max_epochs, or set loss.lambda=0 for the baseline")
    return None


def _rule_dataset_root(get) -> str | None:
    """A dataset folder that does not exist is refused with the values, before a run folder is made
    (the datamodule's own layout check reads the folder's contents later)."""
    root, target = get("dataset.root"), str(get("dataset._target_") or "")
    if target.startswith("uaseg.data.datasets.demo"):  # generated into the cache: root is unused
        return None
    if isinstance(root, str) and root and not Path(root).expanduser().is_dir():
        name = target.rsplit(".", 1)[-1] or "the dataset"
        return f"dataset.root={root}: no such folder ({name} reads its files from there)"
    return None


def _rule_test_scores(get) -> str | None:
    """The test-time scores' own needs, checked before training rather than at test time."""
    from uaseg.uncertainty.scores import SCORES
    from uaseg.uncertainty.tta import flip_sets

    scores, dropout = get("eval.scores"), get("model.dropout")
    mc = [n for n in scores or () if n in SCORES and SCORES[n].family == "mc"]
    if mc and dropout is not None and dropout == 0:
        return (f"eval.scores={_show(scores)}: {', '.join(mc)} sample(s) dropout, but model.dropout=0 (the paper's "
                "network has none); train with e.g. model.dropout=0.1, or drop it from eval.scores")
    if "tcp" in (scores or ()) and get("train") is not False and get("confidence_head") is None:
        return (f"eval.scores={_show(scores)}: tcp is the ConfidNet head's score; train one with "
                "confidence_head=tcp, or drop tcp from eval.scores")
    flips, dims = get("eval.tta_flips"), get("dataset.meta.spatial_dims")
    if flips is not None and isinstance(dims, int):
        try:
            flip_sets(dims, flips)
        except ConfigError as e:
            return str(e)
        except (TypeError, ValueError):
            return f"eval.tta_flips={_show(flips)}: expected 'all' or a list of axis lists like [[], [0]]"
    return None


def _rule_ignore_label(get) -> str | None:
    """A dataset with nnU-Net's ignore label needs a loss that leaves those voxels out (the default
    ``loss.ignore_index`` follows ``dataset.meta.ignore_label``)."""
    ignore = get("dataset.meta.ignore_label")
    if ignore is None:
        return None
    for key in ("loss.ignore_index", "loss.seg_loss.ignore_index"):
        value = get(key)
        if value != ignore and not (key == "loss.seg_loss.ignore_index" and get("loss.seg_loss") is None):
            return (f"{key}={_show(value)}: the dataset marks unannotated voxels with its ignore label {ignore} "
                    f"(dataset.json \"ignore\"), which the loss must leave out; leave {key} to its default or set it to {ignore}")
    return None


#: rules between keys, each ``get -> message or None`` (run after every key passed its own domain)
RULES: tuple[Callable[[Callable[[str], Any]], str | None], ...] = (
    _rule_fold, _rule_batch, _rule_patch_dims, _rule_windows, _rule_patch_stride, _rule_start_epoch,
    _rule_dataset_root, _rule_test_scores, _rule_ignore_label)


def check_config(cfg: Mapping | DictConfig) -> None:
    """Raise :class:`ConfigError` (one line: key, value, allowed values) for the first value of
    ``cfg`` outside its domain in :data:`DOMAINS`, then for the first broken rule of :data:`RULES`."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    for pattern, domain in DOMAINS.items():
        for key in _keys(cfg, pattern):
            value = _get(cfg, key)
            if value is not _ABSENT and not domain.allows(value):
                raise ConfigError(f"{key}={_show(value)}: expected {domain.describe()}")

    def get(key: str) -> Any:
        v = _get(cfg, key)
        return None if v is _ABSENT else v

    for rule in RULES:
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
