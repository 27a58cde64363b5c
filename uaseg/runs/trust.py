"""Which ``_target_`` a file made elsewhere may name, checked before anything is instantiated.

A checkpoint's hyper-parameters (``net``, ``loss``, ``inferer``, ``dataset``, ...) and a run folder's
``.hydra/config.yaml`` are instantiated with Hydra, so a crafted file naming e.g. ``shutil.copyfile``
would run it on load; ``torch.load(weights_only=True)`` does not stop that, and Hydra blocks only a
few names such as ``os.system``. Allowed are the classes and functions uaseg's own configs name
(``grep _target_ conf/``): uaseg's classes, MONAI networks, inferers and losses, torch losses and
optimisers, Lightning's Trainer and callbacks, and the loggers of ``conf/logger``. Anything else is a :class:`CheckpointError`
unless the user passes ``trust_checkpoint=true``, which logs a warning. A name that matches but cannot
be imported (a typo, an optional package this installation lacks) is one line saying so, trusted or not.

A checkpoint is plain resolved data: an OmegaConf interpolation anywhere in it is refused too
(:mod:`uaseg.config.interpolation`), and its stored curves, temperature and confidence head must be sound
(:mod:`uaseg.runs.stored_records`).
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
    "optuna.samplers": "optuna.",
}
#: Lightning's loggers that uaseg's configs name; the others send a run to a server an argument names
#: (MLflow, Comet, Neptune), which a stored config must not choose
LOGGERS = frozenset({"lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.TensorBoardLogger",
                     "lightning.pytorch.loggers.WandbLogger"})
_UASEG_CLASS = re.compile(r"uaseg(\.[a-z_][a-z0-9_]*)+\.[A-Z][A-Za-z0-9_]*")
_CLASS = re.compile(r"[A-Z][A-Za-z0-9_]*")

HINT = "if you trust this file, pass trust_checkpoint=true"


def is_allowed(target: Any) -> bool:
    """Whether ``target`` is one of the classes/functions uaseg configures (and can be imported)."""
    return refusal(target) is None


def refusal(target: Any) -> str | None:
    """Why ``target`` may not be instantiated, or None. The name is checked before anything is
    imported (importing an arbitrary module runs its code); then the object must be a class defined
    in the allowed package (``uaseg.train.Path`` is pathlib's, not uaseg's)."""
    unlisted = "is not a class uaseg configures, and instantiating it could run any code"
    if not isinstance(target, str):
        return unlisted
    target = current_target(target)  # a file made before a module moved (uaseg.config.moved)
    if target in FUNCTIONS:
        return None
    if _UASEG_CLASS.fullmatch(target):
        home = "uaseg."
    elif target in LOGGERS:
        home = "lightning."
    else:
        package, _, name = target.rpartition(".")
        home = CLASS_PACKAGES.get(package)
        if home is None or not _CLASS.fullmatch(name):
            return unlisted
    from hydra._internal.utils import _locate

    from uaseg.errors import describe

    try:
        obj = _locate(target)  # imports only uaseg, MONAI, torch, Lightning or Optuna modules
    except Exception as e:  # a typo or a missing optional package
        cause = e.__cause__ or e
        return (f"cannot be imported ({describe(cause)}): a misspelt name, or a package or version this "
                "installation lacks")
    return None if isinstance(obj, type) and obj.__module__.startswith(home) else unlisted


def unlisted_targets(tree: Any, path: str = "") -> Iterator[tuple[str, Any, str]]:
    """``(key path, target, why)`` of every ``_target_`` in the nested dicts/lists ``tree`` that
    :func:`refusal` refuses (``_args_``, ``_partial_`` and list entries included). Never resolves:
    a resolver could import or build the target."""
    from uaseg.config.interpolation import unresolved

    tree = unresolved(tree)
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            why = refusal(value) if key == "_target_" else None
            if why:
                yield where, value, why
            elif key != "_target_":
                yield from unlisted_targets(value, where)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from unlisted_targets(value, f"{path}[{i}]")


def check_targets(tree: Any, source: str | Path, trust: bool = False, path: str = "") -> None:
    """A :class:`CheckpointError` naming ``source``, the key and the target of the first
    ``_target_`` in ``tree`` that uaseg does not configure (with ``trust`` a warning instead) or
    that cannot be imported. Never resolves ``tree`` (:func:`unlisted_targets`)."""
    for key, target, why in unlisted_targets(tree, path):
        if why.startswith("cannot be imported"):
            raise CheckpointError(f"{source}: {key}={target!r} {why}")
        if not trust:
            raise CheckpointError(f"{source}: {key}={target!r} {why}; refused ({HINT})")
        log.warning("%s: %s=%r is not a class uaseg configures; instantiated anyway because trust_checkpoint=true",
                    source, key, target)


def check_checkpoint(checkpoint: Any, source: str | Path, trust: bool = False) -> None:
    """A loaded checkpoint's entries other than the weights (hyper-parameters, curves, head, ...):
    :func:`check_targets`, no interpolation anywhere, and sound stored records."""
    from uaseg.config.interpolation import refuse_interpolations
    from uaseg.runs.stored_records import check_records

    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: not a checkpoint (a {type(checkpoint).__name__}, not a dict of entries)")
    rest = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    check_targets(rest, source, trust)
    refuse_interpolations(rest, source, trust)
    check_records(rest, source)


def check_checkpoint_file(path: str | Path, trust: bool = False) -> None:
    """:func:`read_checkpoint`, for its checks."""
    read_checkpoint(path, trust)


def read_checkpoint(path: str | Path, trust: bool = False) -> dict | None:
    """The checkpoint at ``path``, read with ``weights_only=True`` and checked
    (:func:`check_checkpoint`). With ``trust`` a file that only ``weights_only=False`` reads is let
    through with a warning (and None returned)."""
    import pickle

    import torch

    from uaseg.errors import describe

    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if trust:
            log.warning("%s: trust_checkpoint=true: loaded without checking the classes it names", path)
            return None
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: the checkpoint holds objects that torch.load(weights_only=True) refuses to "
                              f"unpickle ({first}). If you trust this file, pass trust_checkpoint=true.") from None
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load this checkpoint ({describe(e)})") from None
    check_checkpoint(checkpoint, path, trust)
    return checkpoint
