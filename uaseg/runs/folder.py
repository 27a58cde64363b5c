"""Who may write into a run folder, decided before anything is written into it.

* A new run needs a folder that holds no run (none of :data:`RUN_MARKERS`); a folder that holds one
  is refused and left exactly as it was.
* ``resume=<folder>`` needs that folder's ``.hydra/config.yaml`` and a readable
  ``checkpoints/last.ckpt``.
* One process at a time: an exclusive ``flock`` on ``<folder>/.uaseg.lock``, taken before anything
  else is written and held until the run ends. The kernel drops it when the process dies (even by
  SIGKILL), so a killed run leaves no stale lock behind.

:class:`uaseg.runs.hydra_callbacks.RunFolderGuard` claims the folder in Hydra's ``on_run_start``, before
Hydra writes ``.hydra/``; :func:`uaseg.train.train` claims it again (a no-op in the same process),
which covers in-process calls without Hydra and the jobs of a multirun. A new multirun needs a sweep
folder without ``multirun.yaml`` (:func:`claim_sweep_folder`). Kept free of torch imports: the Hydra
callback runs it before the heavy imports.
"""

from __future__ import annotations

import os
from pathlib import Path

from uaseg.errors import RunFolderError

#: what a run leaves in its folder; any of them means "this folder holds a run"
RUN_MARKERS = (".hydra", "checkpoints", "summary.json", "failed.json", "metrics.json", "csv", "curves.csv")
LOCK_NAME = ".uaseg.lock"

#: folders this process holds the lock of -> the lock file's descriptor
_held: dict[str, int] = {}


def relaunched_rank() -> bool:
    """A DDP worker Lightning started from rank 0 shares rank 0's folder (and its lock)."""
    return int(os.environ.get("LOCAL_RANK", 0) or 0) > 0 or int(os.environ.get("NODE_RANK", 0) or 0) > 0


def run_markers(folder: str | Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """The names of :data:`RUN_MARKERS` present in ``folder``."""
    folder = Path(folder)
    return [m for m in RUN_MARKERS if m not in ignore and (folder / m).exists()]


def _key(folder: Path) -> str:
    return str(folder.resolve())


def check_resumable(folder: str | Path) -> Path:
    """``folder`` is a run that ``resume=`` can continue: its config and a readable last checkpoint."""
    from uaseg.io import check_checkpoint_file

    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"resume={folder}: no such folder")
    config = folder / ".hydra" / "config.yaml"
    if not config.is_file():
        raise RunFolderError(f"resume={folder}: {config} not found (is this a uaseg run folder?)")
    last = folder / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise RunFolderError(f"resume={folder}: no {last} to resume from (the run saved no checkpoint)")
    check_checkpoint_file(last, what=f"resume={folder}")
    return last


def _refuse_used(folder: Path, ignore: tuple[str, ...]) -> None:
    used = run_markers(folder, ignore)
    if used:
        how = (f"continue that run with: python train.py resume={folder}"
               if (folder / "checkpoints" / "last.ckpt").is_file() else "delete the folder (it holds no checkpoint to resume)")
        raise RunFolderError(
            f"{folder} already holds a run ({', '.join(used)}); nothing was written. Choose another hydra.run.dir, or {how}"
        )


def _lock(folder: Path) -> None:
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunFolderError(
            f"{folder} is in use by another run (process {holder}); nothing was written. Wait for it to "
            "finish, or choose another hydra.run.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[_key(folder)] = fd


def claim_run_folder(folder: str | Path, *, resume: str | Path | None = None, hydra_files: bool = False) -> bool:
    """Check and lock ``folder`` for this process (see the module docstring); raises
    :class:`RunFolderError` without writing anything. ``resume``: the run folder to continue, which
    must be ``folder`` itself. ``hydra_files``: Hydra has already written its ``.hydra/`` record of
    this run (a multirun job). Returns whether this call took the lock (the caller then releases it);
    ``False`` when this process already held it or is a DDP worker."""
    folder = Path(folder).absolute()
    if resume and Path(resume).absolute() != folder:
        raise RunFolderError(f"resume={resume} continues in that run's own folder, not in {folder}; "
                             "drop hydra.run.dir")
    if relaunched_rank() or (folder.exists() and _key(folder) in _held):
        return False
    ignore = (".hydra",) if hydra_files else ()
    if resume:
        check_resumable(folder)
    else:
        _refuse_used(folder, ignore)
    _lock(folder)
    if not resume:
        try:  # another run may have finished here between the first look and the lock
            _refuse_used(folder, ignore)
        except RunFolderError:
            release_run_folder(folder)
            raise
    return True


def release_run_folder(folder: str | Path) -> None:
    folder = Path(folder).absolute()
    fd = _held.pop(_key(folder), None) if folder.exists() else None
    if fd is not None:
        os.close(fd)  # closing the last descriptor drops the flock


def discard_unused_folder(folder: str | Path) -> bool:
    """Remove ``folder`` if it holds nothing but this process's released lock file (a run refused
    before any work); only for a folder the run itself created. Returns whether it was removed."""
    folder = Path(folder)
    try:
        if {p.name for p in folder.iterdir()} - {LOCK_NAME}:
            return False
        (folder / LOCK_NAME).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:
        return False
    return True


def claim_sweep_folder(folder: str | Path) -> bool:
    """A new multirun needs a sweep folder that holds no earlier multirun (``multirun.yaml``, whose
    job folders it would overwrite); locked like a run folder."""
    folder = Path(folder).absolute()
    if relaunched_rank() or (folder.exists() and _key(folder) in _held):
        return False
    record = folder / "multirun.yaml"
    if record.exists():
        raise RunFolderError(
            f"{folder} already holds a multirun ({record.name}); nothing was written. Choose another "
            "hydra.sweep.dir (continue a single job of it with resume=<job folder>)"
        )
    _lock(folder)
    return True


def retire_failure(folder: str | Path) -> Path | None:
    """A resumed run starts again: the failed attempt's ``failed.json`` is kept, renamed to
    ``failed-<its time>.json``, so the folder does not claim a failure the resumed run may fix."""
    from datetime import datetime

    failed = Path(folder) / "failed.json"
    if not failed.is_file():
        return None
    stamp = datetime.fromtimestamp(failed.stat().st_mtime).strftime("%Y-%m-%d_%H-%M-%S")
    target = failed.with_name(f"failed-{stamp}.json")
    n = 1
    while target.exists():
        n += 1
        target = failed.with_name(f"failed-{stamp}-{n}.json")
    failed.rename(target)
    return target
