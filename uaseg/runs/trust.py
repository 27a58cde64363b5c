"""Which ``_target_`` a file made elsewhere may name, checked before anything is instantiated.

A checkpoint's hyper-parameters (``net``, ``loss``, ``inferer``, ``dataset``, ...) and a run folder's
``.hydra/config.yaml`` are instantiated with Hydra, so a crafted file naming e.g. ``shutil.copyfile``
would run it on load; ``torch.load(weights_only=True)`` does not stop that, and Hydra blocks only a
few names such as ``os.system``. Allowed are the classes and functions uaseg's own configs name
(``grep _target_ conf/``): uaseg's classes, MONAI networks, inferers and losses, torch losses and
optimisers, Lightning's Trainer, callbacks and loggers. Anything else is a :class:`CheckpointError`
unless the user passes ``trust_checkpoint=true``, which logs a warning.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from uaseg.config.moved import current_target
from uaseg.errors import CheckpointError

log = logging.getLogger(__name__)

#: functions (not classes) that uaseg's configs name
FUNCTIONS = frozenset({"uaseg.losses.uncertainty_aware_loss"})
#: package -> the package its classes must be defined in: a target is ``<package>.<Class>``
CLASS_PACKAGES = {
    "monai.networks.nets": "monai.",
    "monai.inferers": "monai.",
    "monai.losses": "monai.",
    "torch.nn": "torch.nn.",
    "torch.optim": "torch.optim.",
    "torch.optim.lr_scheduler": "torch.optim.",
    "lightning.pytorch": "lightning.",
    "lightning.pytorch.callbacks": "lightning.",
    "lightning.pytorch.loggers": "lightning.",
    "optuna.samplers": "optuna.",
}
_UASEG_CLASS = re.compile(r"uaseg(\.[a-z_][a-z0-9_]*)+\.[A-Z][A-Za-z0-9_]*")
_CLASS = re.compile(r"[A-Z][A-Za-z0-9_]*")

HINT = "if you trust this file, pass trust_checkpoint=true"


def is_allowed(target: Any) -> bool:
    """Whether ``target`` is one of the classes/functions uaseg configures. The name is checked
    before anything is imported (importing an arbitrary module runs its code); then the object must
    be a class defined in the allowed package (``uaseg.train.Path`` is pathlib's, not uaseg's)."""
    if not isinstance(target, str):
        return False
    target = current_target(target)  # a file made before a module moved (uaseg.config.moved)
    if target in FUNCTIONS:
        return True
    if _UASEG_CLASS.fullmatch(target):
        home = "uaseg."
    else:
        package, _, name = target.rpartition(".")
        home = CLASS_PACKAGES.get(package)
        if home is None or not _CLASS.fullmatch(name):
            return False
    from hydra._internal.utils import _locate

    try:
        obj = _locate(target)  # imports only uaseg, MONAI, torch, Lightning or Optuna modules
    except Exception:
        return True  # a typo or a missing optional package: Hydra's own error names it later
    return isinstance(obj, type) and obj.__module__.startswith(home)


def unlisted_targets(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(key path, target)`` of every ``_target_`` in the nested dicts/lists ``tree`` that
    :func:`is_allowed` refuses (``_args_``, ``_partial_`` and list entries included)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_" and not is_allowed(value):
                yield where, value
            else:
                yield from unlisted_targets(value, where)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from unlisted_targets(value, f"{path}[{i}]")


def check_targets(tree: Any, source: str | Path, trust: bool = False, path: str = "") -> None:
    """A :class:`CheckpointError` naming ``source``, the key and the target of the first
    ``_target_`` in ``tree`` that uaseg does not configure; with ``trust`` a warning instead."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(tree):
        tree = OmegaConf.to_container(tree, resolve=False)  # a resolver could import the target
    for key, target in unlisted_targets(tree, path):
        if not trust:
            raise CheckpointError(f"{source}: {key}={target!r} is not a class uaseg configures, and instantiating "
                                  f"it could run any code; refused ({HINT})")
        log.warning("%s: %s=%r is not a class uaseg configures; instantiated anyway because trust_checkpoint=true",
                    source, key, target)


def check_checkpoint(checkpoint: Mapping, source: str | Path, trust: bool = False) -> None:
    """:func:`check_targets` on a loaded checkpoint's entries (hyper-parameters and the rest)."""
    check_targets({k: v for k, v in checkpoint.items() if k != "state_dict"}, source, trust)


def check_checkpoint_file(path: str | Path, trust: bool = False) -> None:
    """:func:`check_checkpoint` on the file at ``path``, read with ``weights_only=True``. With
    ``trust`` a file that only ``weights_only=False`` reads is let through (with a warning)."""
    import pickle

    import torch

    from uaseg.errors import describe

    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if trust:
            log.warning("%s: trust_checkpoint=true: loaded without checking the classes it names", path)
            return
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: the checkpoint holds objects that torch.load(weights_only=True) refuses to "
                              f"unpickle ({first}). If you trust this file, pass trust_checkpoint=true.") from None
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load this checkpoint ({describe(e)})") from None
    check_checkpoint(checkpoint, path, trust)
