"""Rules between config keys that need more than a value's domain, run by
:func:`uaseg.config.check.check_config` after every key passed its own domain -- so
before a run folder is made, and for every job of a multirun before the first starts. Each takes
``get`` (key -> value or None) and returns a one-line message or None."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from uaseg.config.domains import show
from uaseg.errors import ConfigError

#: the built-in generated datasets' own size options (``conf/debug/fast.yaml`` sets them)
DEMO_OPTIONS = ("num_cases", "image_size")


def rule_risk_control(get: Callable[[str], Any]) -> str | None:
    """``eval.risk_control`` as a whole, as the runner reads it after training's set-up: a repeated
    alpha, a method listed twice, ``pvalue=binom`` with a risk that is not 0/1."""
    from uaseg.selective.risk_settings import RiskControlSettings

    try:
        RiskControlSettings.from_config(get("eval.risk_control"))
    except ConfigError as e:
        return str(e)
    return None


def rule_shift(get: Callable[[str], Any]) -> str | None:
    """``eval.shift`` as a whole (kinds, severities, the case referral), against the dataset's images
    (``stain`` and ``jpeg`` are for 2-D RGB images)."""
    from uaseg.shift.settings import ShiftSettings

    dims, channels = get("dataset.meta.spatial_dims"), get("dataset.meta.in_channels")
    try:
        ShiftSettings.from_config(get("eval.shift"), dims if isinstance(dims, int) else None,
                                  channels if isinstance(channels, int) else None)
    except ConfigError as e:
        return str(e)
    return None


def rule_demo_options(get: Callable[[str], Any]) -> str | None:
    """The demo data's size options on a dataset read from files (``debug=fast dataset=nnunet``),
    which its datamodule would refuse only once the dataset is planned."""
    target = str(get("dataset._target_") or "")
    given = [k for k in DEMO_OPTIONS if get(f"dataset.{k}") is not None]
    if not given or not target or target.startswith("uaseg.data.datasets.demo"):
        return None
    return (f"dataset.{given[0]}: an option of the built-in demo data (dataset=demo2d|demo3d|demo3d_abdomen), not of "
            f"{target.rsplit('.', 1)[-1]}; debug=fast sets it and is for the demo data only: for a quick run of "
            "your own data use trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=2 "
            "trainer.limit_test_batches=2")


def rule_fold(get) -> str | None:
    fold, folds = get("dataset.fold"), get("dataset.num_folds")
    if isinstance(fold, int) and isinstance(folds, int) and not fold < folds:
        return f"dataset.fold={fold}: expected an integer in 0..{folds - 1} (dataset.num_folds={folds})"
    return None


def rule_batch(get) -> str | None:
    b, s = get("dataset.batch_size"), get("dataset.samples_per_image")
    if isinstance(b, int) and isinstance(s, int) and s > 0 and b % s:
        return (f"dataset.batch_size={b}: expected a multiple of dataset.samples_per_image={s} "
                "(patches per step = images per step x patches per image)")
    return None


def rule_patch_dims(get) -> str | None:
    patch, dims = get("dataset.patch_size"), get("dataset.meta.spatial_dims")
    if isinstance(patch, list) and isinstance(dims, int) and len(patch) != dims:
        return f"dataset.patch_size={show(patch)}: expected {dims} entries (this dataset is {dims}-D)"
    return None


def rule_windows(get) -> str | None:
    for key in ("dataset.intensity_window", "dataset.hu_window", "dataset.augment.gamma"):
        w = get(key)
        if isinstance(w, list) and len(w) == 2 and not w[0] < w[1] and not (key.endswith("gamma") and w[0] == w[1]):
            return f"{key}={show(w)}: expected [low, high] with low < high"
    return None


def rule_patch_stride(get) -> str | None:
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
    return (f"dataset.patch_size={show(patch)}: each entry must be a multiple of {show(total)}, the network's total "
            f"stride ({downs} downsamplings, model.net.strides={show(strides)}); e.g. dataset.patch_size={show(fit)}")


def rule_start_epoch(get) -> str | None:
    lam, start, epochs = get("loss.lambda"), get("loss.start_epoch"), get("trainer.max_epochs")
    if isinstance(lam, (int, float)) and lam > 0 and isinstance(start, int) and isinstance(epochs, int) and start >= epochs:
        return (f"loss.start_epoch={start}: the ranking term (loss.lambda={show(lam)}) would never run, as "
                f"trainer.max_epochs={epochs} trains epochs 0..{epochs - 1}; lower loss.start_epoch, raise "
                "trainer.max_epochs, or set loss.lambda=0 for the baseline")
    return None


def rule_dataset_root(get) -> str | None:
    """A dataset folder that does not exist is refused with the values, before a run folder is made
    (the datamodule's own layout check reads the folder's contents later)."""
    root, target = get("dataset.root"), str(get("dataset._target_") or "")
    if target.startswith("uaseg.data.datasets.demo"):  # generated into the cache: root is unused
        return None
    if isinstance(root, str) and root and not Path(root).expanduser().is_dir():
        name = target.rsplit(".", 1)[-1] or "the dataset"
        return f"dataset.root={root}: no such folder ({name} reads its files from there)"
    return None


def rule_test_scores(get) -> str | None:
    """The test-time scores' own needs, checked before training rather than at test time."""
    from uaseg.uncertainty.scores import SCORES
    from uaseg.uncertainty.tta import flip_sets

    scores, dropout = get("eval.scores"), get("model.dropout")
    mc = [n for n in scores or () if n in SCORES and SCORES[n].family == "mc"]
    if mc and dropout is not None and dropout == 0:
        return (f"eval.scores={show(scores)}: {', '.join(mc)} sample(s) dropout, but model.dropout=0 (the paper's "
                "network has none); train with e.g. model.dropout=0.1, or drop it from eval.scores")
    if "tcp" in (scores or ()) and get("train") is not False and get("confidence_head") is None:
        return (f"eval.scores={show(scores)}: tcp is the ConfidNet head's score; train one with "
                "confidence_head=tcp, or drop tcp from eval.scores")
    flips, dims = get("eval.tta_flips"), get("dataset.meta.spatial_dims")
    if flips is not None and isinstance(dims, int):
        try:
            flip_sets(dims, flips)
        except ConfigError as e:
            return str(e)
        except (TypeError, ValueError):
            return f"eval.tta_flips={show(flips)}: expected 'all' or a list of axis lists like [[], [0]]"
    return None


def rule_ignore_label(get) -> str | None:
    """A dataset with nnU-Net's ignore label needs a loss that leaves those voxels out (the default
    ``loss.ignore_index`` follows ``dataset.meta.ignore_label``)."""
    ignore = get("dataset.meta.ignore_label")
    if ignore is None:
        return None
    for key in ("loss.ignore_index", "loss.seg_loss.ignore_index"):
        value = get(key)
        if value != ignore and not (key == "loss.seg_loss.ignore_index" and get("loss.seg_loss") is None):
            return (f"{key}={show(value)}: the dataset marks unannotated voxels with its ignore label {ignore} "
                    f"(dataset.json \"ignore\"), which the loss must leave out; leave {key} to its default or set it to {ignore}")
    return None


def rule_balance(get) -> str | None:
    """``loss.balance`` is a switch (lambda is then the gradient ratio) and ``loss.scale`` has no
    effect under it: a number for balance (its meaning before issue 27) or a scale other than the
    paper's 1000 would silently give a run that is not the one asked for."""
    from uaseg.losses.dynamics import PAPER_SCALE

    balance, scale, lam = get("loss.balance"), get("loss.scale"), get("loss.lambda")
    if balance is None or balance is False:
        return None
    if balance is not True:
        hint = f" (loss.balance=true loss.lambda={show(balance)})" if isinstance(balance, (int, float)) else ""
        return (f"loss.balance={show(balance)}: expected true or false; under balance loss.lambda is the "
                f"gradient ratio{hint}")
    if isinstance(scale, (int, float)) and scale != PAPER_SCALE:
        lam = f"{lam:g}" if isinstance(lam, (int, float)) else show(lam)
        return (f"loss.scale={show(scale)}: no effect under loss.balance=true, where loss.lambda={lam} is the "
                f"gradient ratio (the weight is capped at the paper's lambda x {PAPER_SCALE:g}); drop loss.scale "
                "or set loss.balance=false")
    return None


def rule_score_temperature(get) -> str | None:
    """``loss.score_temperature`` shapes the ranking term only: with lambda = 0 there is none."""
    temp, lam = get("loss.score_temperature"), get("loss.lambda")
    if isinstance(temp, (int, float)) and temp != 1 and lam == 0:
        return (f"loss.score_temperature={show(temp)}: no effect with loss.lambda=0 (the baseline has no ranking "
                "term); drop it, or score the test with eval.scores=[temperature]")
    return None


#: every rule, in the order they are checked
RULES: tuple[Callable[[Callable[[str], Any]], str | None], ...] = (
    rule_fold, rule_batch, rule_patch_dims, rule_windows, rule_patch_stride, rule_start_epoch,
    rule_dataset_root, rule_test_scores, rule_ignore_label, rule_risk_control, rule_shift, rule_demo_options,
    rule_balance, rule_score_temperature)
