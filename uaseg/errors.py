"""The errors a user must fix, and how to find the one that says what broke.

A :class:`UserError` is shown as one line without a traceback (``train.py`` exits 1, ``predict.py``
exits 2; in a multirun only that job fails). Its message names the file, key or value and says how
to fix it.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input (config, files, options); the message says which and how."""


class ConfigError(UserError):
    """A configuration value the user must fix."""


class DatasetError(UserError):
    """A problem with the dataset files (missing, unreadable, inconsistent); the message names them."""


class PredictError(UserError):
    """A problem with the checkpoint, the inputs or the options of prediction."""


class RunFolderError(UserError):
    """A run folder that cannot be used: it already holds a run, another run is using it, or it is
    no run to resume. Raised before anything is written into it."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be read (truncated, corrupted, not a checkpoint), or a checkpoint
    or run folder that names a class uaseg does not configure (:mod:`uaseg.runs.trust`)."""


class NonFiniteLossError(FloatingPointError):
    """Training stopped at a non-finite loss; the message says where, on which cases, and which
    checkpoint is the last good one. Not the user's input, but theirs to act on: shown as one line."""


class TerminatedError(RuntimeError):
    """Training stopped by a signal (SIGTERM: a scheduler's preemption or time limit); the message says
    so and how to resume from the last checkpoint. Shown as one line."""


def describe(exc: BaseException) -> str:
    """``"<type>: <message>"`` on one line: library messages (nibabel's "... - could the file be
    damaged?") may span several, and a user error is one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of an explicit ``raise ... from`` chain: the one that says what broke."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def first_cause(exc: BaseException, kind: type[BaseException] = DatasetError) -> BaseException | None:
    """The first exception of type ``kind`` in ``exc``'s cause/context chain (MONAI wraps
    transform errors in ``RuntimeError('applying transform ...')``)."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
