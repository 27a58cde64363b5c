"""Expand a Hydra ``multirun.yaml`` into its job grid and name the jobs that left no summary.

Hydra's BasicSweeper runs the cartesian product of ``hydra.sweeper.params`` and the
command-line ``hydra.overrides.task`` (a later key replaces an earlier one).  We rebuild that
product with Hydra's own override parser, so ``a=0,1``, ``a=range(3)`` and ``a=choice(x,y)``
expand exactly as they did for the sweep; values are compared as Hydra prints them, so
``eval.figures=false`` on the command line matches ``eval.figures=False`` in a job's
``overrides.yaml``.  A job is matched on the swept keys only.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path


@dataclass
class GridJob:
    """One combination of the sweep and what became of it."""

    values: dict[str, str]   # swept key -> value
    status: str              # ok | failed | incomplete | not started
    path: Path | None = None
    error: str | None = None

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items())


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_overrides(strings) -> dict[str, str]:
    """``["a=1", "+b=x"]`` -> ``{"a": "1", "+b": "x"}`` with Hydra's value formatting."""
    out = {}
    parser = _parser()
    for s in strings:
        try:
            o = parser.parse_override(str(s))
            out[o.get_key_element()] = (o.get_value_element_as_str()
                                        if not o.is_sweep_override() else str(s).split("=", 1)[1])
        except Exception:
            key, _, val = str(s).partition("=")
            out[key] = val
    return out


def sweep_axes(multirun_yaml) -> "OrderedDict[str, list[str]]":
    """Key -> list of values for every override of the sweep (one value when not swept)."""
    from omegaconf import OmegaConf

    hydra = OmegaConf.to_container(OmegaConf.load(multirun_yaml), resolve=False).get("hydra") or {}  # never resolved
    params = (hydra.get("sweeper") or {}).get("params") or {}
    task = (hydra.get("overrides") or {}).get("task") or []
    args = [f"{k}={v}" for k, v in params.items()] + [str(t) for t in task]
    axes: "OrderedDict[str, list[str]]" = OrderedDict()
    for o in _parser().parse_overrides(args):
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise ValueError(f"{multirun_yaml}: cannot expand interval sweep {key}")
            axes[key] = [str(v) for v in o.sweep_string_iterator()]
        else:
            axes[key] = [o.get_value_element_as_str()]
    return axes


def expand(multirun_yaml, jobs) -> list[GridJob]:
    """Every grid combination with its status; ``jobs`` = runs and problems (``.path``,
    ``.overrides``; a run is an object without ``status``)."""
    axes = sweep_axes(multirun_yaml)
    swept = {k: v for k, v in axes.items() if len(v) > 1}
    parsed = [(j, parse_overrides(j.overrides)) for j in jobs]
    out = []
    for combo in itertools.product(*swept.values()):
        values = dict(zip(swept, combo))
        hits = [j for j, ov in parsed if all(ov.get(k) == v for k, v in values.items())]
        ok = [j for j in hits if not hasattr(j, "status")]
        if ok:
            out.append(GridJob(values, "ok", ok[0].path))
        elif hits:
            j = hits[0]
            out.append(GridJob(values, j.status, j.path, j.error))
        else:
            out.append(GridJob(values, "not started"))
    return out


def find_multirun_files(root) -> list[Path]:
    """Every ``multirun.yaml`` at or below ``root`` (one per sweep folder)."""
    return sorted(Path(root).rglob("multirun.yaml"))
