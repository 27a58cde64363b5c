"""Modules that moved, so checkpoints and run folders made before a move still load.

A stored ``_target_`` names a module by its path at the time (``uaseg.data.demo2d.Demo2DDataModule``
in a checkpoint's dataset config, ``uaseg.hydra_callbacks.RunFolderGuard`` in a run folder's
``.hydra/config.yaml``); :func:`current_target` gives its name today. Applied before the trust check
and before anything is built.
"""

from __future__ import annotations

from typing import Any

#: old module -> new module (issue #31's regroup); only names that can stand in a stored ``_target_``
MOVED = {
    "uaseg.checkpoint_io": "uaseg.runs.checkpoint_io",
    "uaseg.hydra_callbacks": "uaseg.runs.hydra_callbacks",
    "uaseg.loggers": "uaseg.runs.loggers",
    **{f"uaseg.data.{m}": f"uaseg.data.datasets.{m}" for m in ("demo2d", "demo3d", "demo3d_abdomen", "glas", "mmwhs")},
    **{f"uaseg.data.{m}": f"uaseg.data.formats.{m}" for m in ("nnunet", "decathlon")},
}


def current_target(target: Any) -> Any:
    """``target`` with a moved module's old name replaced by its new one (anything else as it is)."""
    if isinstance(target, str):
        module, _, name = target.rpartition(".")
        if module in MOVED:
            return f"{MOVED[module]}.{name}"
    return target


def current_targets(tree: Any) -> Any:
    """A copy of the plain dicts/lists ``tree`` with every ``_target_`` passed through :func:`current_target`."""
    if isinstance(tree, dict):
        return {k: current_target(v) if k == "_target_" else current_targets(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [current_targets(v) for v in tree]
    return tree
