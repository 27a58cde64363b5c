"""Find run folders under a multirun folder: finished runs and jobs that left no summary.

A *run* is a folder holding ``summary.json`` (written atomically by the training job, so a
present file is complete).  A folder with ``.hydra/`` but no ``summary.json`` is a job that
did not finish: ``failed`` when it left ``failed.json`` ({error, traceback}) or an error in a
``*.log`` file, else ``incomplete`` (still running, killed, or out of time) -- we cannot tell
which, so we say so instead of guessing.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from uaseg.config.identity import identity_of
from uaseg.selective.result import SelectiveResult

#: folders a run writes that never hold another run (not descended into)
_SKIP_DIRS = {".hydra", "checkpoints", "figures", "predictions", "csv", "tensorboard", "wandb"}
_ERROR_LINE = re.compile(r"(\[ERROR\]|Traceback|^\w*(Error|Exception)\b)")


@dataclass
class Run:
    """One finished job: its folder, its summary (raw and typed) and its Hydra overrides."""

    path: Path
    summary: dict
    overrides: list[str] = field(default_factory=list)
    #: the main score's result (the top level of summary.json)
    result: SelectiveResult = field(init=False)
    #: every score's result (``scores`` in summary.json; older summaries: max_softmax only)
    scores: dict[str, SelectiveResult] = field(init=False)

    def __post_init__(self) -> None:
        self.result = SelectiveResult.from_summary(self.summary)
        raw = self.summary.get("scores") or {}
        self.scores = {n: SelectiveResult.from_summary(v) for n, v in raw.items()} or {"max_softmax": self.result}

    def score_info(self, name: str) -> dict:
        """``{"cost": {passes, seconds_per_case}, "prediction": ...}`` recorded for a score."""
        raw = (self.summary.get("scores") or {}).get(name) or {}
        return {"cost": raw.get("cost") or {}, "prediction": raw.get("prediction")}

    @property
    def identity(self) -> dict:
        return identity_of(self.summary)

    @property
    def fold(self):
        return self.summary.get("fold")


@dataclass
class Problem:
    """A job folder without summary.json: ``status`` is ``failed`` or ``incomplete``."""

    path: Path
    status: str
    error: str | None = None
    overrides: list[str] = field(default_factory=list)


def read_overrides(run_dir: Path) -> list[str]:
    """``.hydra/overrides.yaml`` as a list of ``key=value`` strings ([] when absent)."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    try:
        return [str(x) for x in (OmegaConf.to_container(OmegaConf.load(path), resolve=False) or [])]  # never resolved
    except Exception:  # a damaged file must not stop the report
        return []


def _error_from_logs(run_dir: Path) -> str | None:
    """Last error-looking line of the folder's ``*.log`` files, if any."""
    last = None
    for log in sorted(run_dir.glob("*.log")):
        try:
            for line in log.read_text(errors="replace").splitlines():
                if _ERROR_LINE.search(line.strip()):
                    last = line.strip()
        except OSError:
            continue
    return last


def _problem(run_dir: Path, overrides: list[str]) -> Problem:
    failed = run_dir / "failed.json"
    if failed.exists():
        try:
            err = json.loads(failed.read_text()).get("error")
        except (OSError, ValueError):
            err = "failed.json present but unreadable"
        return Problem(run_dir, "failed", str(err) if err else "failed.json present", overrides)
    err = _error_from_logs(run_dir)
    if err:
        return Problem(run_dir, "failed", err, overrides)
    return Problem(run_dir, "incomplete", None, overrides)


def collect(root) -> tuple[list[Run], list[Problem]]:
    """Every run and every unfinished job below ``root`` (recursive, sorted by path)."""
    root = Path(root)
    runs, problems = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        has_hydra = ".hydra" in dirnames
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        if "summary.json" in filenames:
            try:
                summary = json.loads((here / "summary.json").read_text())
                # an ensemble folder is no Hydra job: its summary records its members' overrides
                run = Run(here, summary, read_overrides(here) or list(summary.get("overrides") or []))
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
                problems.append(Problem(here, "failed", f"unreadable summary.json: {e}",
                                        read_overrides(here)))
                continue
            runs.append(run)
        elif has_hydra:
            problems.append(_problem(here, read_overrides(here)))
    runs.sort(key=lambda r: str(r.path))
    problems.sort(key=lambda p: str(p.path))
    return runs, problems
