"""Atomic writes: each writer writes ``.tmp-<pid>-<token>-<name>`` beside the target and renames it
over the target (see the package docstring); JSON without NaN, NPY/NPZ, torch checkpoints, figures."""

from __future__ import annotations

import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class WriteError(OSError):
    """A file could not be written; the message names it and the reason (e.g. no space left)."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(3)}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        if isinstance(e, WriteError):
            raise
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def json_safe(x: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, tuples to lists, NaN and +-inf to null."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def write_json(path: str | Path, obj: Any, indent: int = 1) -> Path:
    """``obj`` as JSON (see :func:`json_safe`; other objects, e.g. paths, written as strings)."""
    return write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=str))


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array))
    return Path(path)


def save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` (a checkpoint, or one rewritten with added entries): never a half-written file.
    Serialised in memory first: torch.save's own write errors lose errno (no space left on device...)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
    return Path(path)


def save_figure(path: str | Path, fig, dpi: float | None = None) -> Path:
    """A matplotlib figure as PNG (format from the suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi if dpi is not None else "figure", format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def update_checkpoint(path: str | Path, entries: dict[str, Any]) -> Path:
    """Add or replace top-level ``entries`` (plain Python values, so ``weights_only`` loading keeps
    working) in a torch checkpoint file, keeping everything else in it."""
    import torch

    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    ckpt.update(entries)
    return save_torch(path, ckpt)
