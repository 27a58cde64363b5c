"""Who may write into a run folder, decided before anything is written into it.

* A new run needs a folder that holds no run (none of :data:`RUN_MARKERS`); a folder that holds one
  is refused and left exactly as it was.
* ``resume=<folder>`` needs that folder's ``.hydra/config.yaml`` and a readable
  ``checkpoints/last.ckpt``.
* One process at a time: an exclusive ``flock`` on ``<folder>/.uaseg.lock``, taken before anything
  else is written and held until the run ends. The kernel drops it when the process dies (even by
  SIGKILL), so a killed run leaves no stale lock behind. A run that ends removes the file while it
  still holds the lock; a claimant that locked the file just before is then told so by the file's
  inode (:func:`_lock` checks that the path still names the file it locked).

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
#: folders this process created by claiming them
_created: set[str] = set()


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
    link = next(links_out_of(folder), None)
    if link is not None:
        raise RunFolderError(f"resume={folder}: {link} is a link to {link.resolve()}, outside the run folder, which the "
                             "resumed run would write through; nothing was written (replace the link by a copy)")
    return last


def links_out_of(folder: Path):
    """Symbolic links in ``folder`` (at any depth) that lead out of it: Hydra's log, checkpoints and
    logger files written there would land elsewhere."""
    root = folder.resolve()
    for here, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(here) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                yield path


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

    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunFolderError(
                    f"{folder} is in use by another run (process {holder}); nothing was written. Wait for it to "
                    "finish, or choose another hydra.run.dir"
                ) from None
            if _same_file(fd, folder / LOCK_NAME):
                break
            os.close(fd)  # the run that held it removed the file on release: lock the path's new file
        else:
            raise RunFolderError(f"{folder}: could not lock {LOCK_NAME} (other runs keep replacing it); try again")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as e:  # under a file, read-only, no space: one line, not a traceback from the callback
        raise RunFolderError(f"{folder}: cannot use this folder for a run ({e.strerror or e}); "
                             "choose another hydra.run.dir (or hydra.sweep.dir)") from None
    _held[_key(folder)] = fd
    if created:
        _created.add(_key(folder))


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def created_here(folder: str | Path) -> bool:
    """Whether this process created ``folder`` when it claimed it (it may then discard it)."""
    return _key(Path(folder).absolute()) in _created


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
    """Drop this process's lock of ``folder`` and remove its lock file (unlinked while still held,
    so a claimant either fails on the held lock or creates a new file)."""
    folder = Path(folder).absolute()
    fd = _held.pop(_key(folder), None) if folder.exists() else None
    _created.discard(_key(folder))
    if fd is not None:
        if _same_file(fd, folder / LOCK_NAME):
            (folder / LOCK_NAME).unlink(missing_ok=True)
        os.close(fd)  # closing the last descriptor drops the flock


#: what Hydra writes into a run folder before the task starts (its config record and the job log)
HYDRA_RECORDS = (".hydra", "train.log")


def discard_unused_folder(folder: str | Path, hydra_files: bool = False) -> bool:
    """Remove ``folder`` if it holds nothing but this process's lock file (a run refused before any
    work) and, with ``hydra_files``, Hydra's records of this very run (:data:`HYDRA_RECORDS`); only
    for a folder the run itself created, while it still holds the lock (released here, which removes
    the lock file). Returns whether it was removed."""
    import shutil

    folder = Path(folder)
    keep = {LOCK_NAME, *(HYDRA_RECORDS if hydra_files else ())}
    try:
        names = {p.name for p in folder.iterdir()}
        if names - keep:
            return False
        for name in names - {LOCK_NAME}:
            path = folder / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        release_run_folder(folder)
        folder.rmdir()  # fails, keeping the folder, if another run has just claimed it
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
